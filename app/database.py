"""Connection set-up and the unit of work.

SQLite is the embedded default and must never answer "database is locked":
connections run in WAL mode with a busy timeout, and a unit of work that reads
then writes opens its transaction with ``BEGIN IMMEDIATE`` so two writers queue
instead of deadlocking on a lock upgrade. ``secure_delete`` overwrites deleted
content, so an erased address does not linger in free pages.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import current_app
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from .extensions import db

_IMMEDIATE = "immediate_transaction"


@event.listens_for(Engine, "connect")
def _configure_sqlite(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    # Take transaction control from the driver so BEGIN is ours to emit.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@event.listens_for(Engine, "begin")
def _begin_sqlite(conn) -> None:  # type: ignore[no-untyped-def]
    if conn.dialect.name != "sqlite":
        return
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


class UnitOfWork:
    """One transaction: state change, evidence and outbox jobs commit together.

    Work that must happen only once the transaction is durable (sending mail)
    is registered with ``after_commit`` and runs after the commit succeeded.
    """

    def __init__(self, session: Session, conn: Connection) -> None:
        self.session = session
        self.conn = conn  # the transaction's connection, for Core statements
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after_commit.append(fn)


@contextmanager
def unit_of_work() -> Iterator[UnitOfWork]:
    session = db.session()
    if session.in_transaction():
        # A read earlier in the request left a transaction open; start afresh
        # so the write transaction begins with the right lock.
        session.rollback()
    uow = UnitOfWork(session, session.connection(execution_options={_IMMEDIATE: True}))
    try:
        yield uow
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for fn in uow._after_commit:
        try:
            fn()
        except Exception:  # the durable state is committed; the outbox retries
            current_app.logger.exception("post-commit step failed; the outbox will retry it")


def wipe_free_space() -> None:
    """Make deleted rows unrecoverable from the SQLite files (WAL included).

    ``secure_delete`` zeroes freed cells in the main file; the WAL still holds
    older page images until a checkpoint copies them back and truncates it.
    A truncating checkpoint holds off writers while it runs, so a passive one
    copies the bulk first, alongside them; the truncating one has little left.
    """
    if not is_sqlite():
        return
    db.session.remove()
    with db.engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)")).one()
        busy, _log_frames, _copied = conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    if busy:
        current_app.logger.warning(
            "WAL checkpoint was blocked by a reader; deleted data stays in the WAL until the next one"
        )


def parameters(rows: list[dict]) -> list[dict] | dict:  # type: ignore[type-arg]
    """Rows for a Core insert: one row as one parameter set, not a list of one (a list
    takes the executemany path, which costs more than the insert on the hot paths)."""
    return rows if len(rows) > 1 else rows[0]


MAX_ID = 2**31 - 1  # the largest value an INTEGER key holds on every backend
_ID_RE = re.compile(r"[0-9]{1,10}")


def id_param(raw: str | None) -> int | None:
    """A row id from outside (URL, query, cookie): ASCII digits within range, else None."""
    if raw is None or not _ID_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= MAX_ID else None
