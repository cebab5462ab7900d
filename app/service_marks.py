"""Named moments in the service's own history, one row each in ``service_marks``.

The outbox worker's heartbeat, the last chain check's outcome and the first time Art. 14
evidence was recorded all live here, so readiness, metrics and reports read one table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from .extensions import db
from .models import ServiceMark, utcnow

WORKER_HEARTBEAT = "outbox_worker_heartbeat"  # each pass of `outbox run`, at most every 15 s
LEDGER_VERIFY_OK = "ledger_verify_ok"  # the last time `ledger verify` passed
LEDGER_VERIFY_FAILED = "ledger_verify_failed"  # the last time it failed


def touch(name: str, at: datetime | None = None) -> None:
    """Set mark ``name`` to ``at`` (now by default), in the caller's transaction.

    An upsert, so two workers beating at once neither fail nor lose a beat.
    """
    values = {"name": name, "at": at or utcnow()}
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ServiceMark).values(values)
    db.session.execute(statement.on_conflict_do_update(index_elements=["name"], set_={"at": values["at"]}))


def read(name: str) -> datetime | None:
    """When mark ``name`` was last set, or None if never."""
    return db.session.execute(select(ServiceMark.at).where(ServiceMark.name == name)).scalar_one_or_none()
