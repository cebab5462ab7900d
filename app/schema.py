"""Bring the database to the current schema and record notice versions.

The embedded default creates its database on first run. Several processes may
start at once (gunicorn workers), so the upgrade runs under a lock: a file
lock next to a SQLite database, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import upgrade
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import NoticeVersion

log = logging.getLogger(__name__)
MIGRATION_LOCK_ID = 7_305_118_240


@contextmanager
def _migration_lock() -> Iterator[None]:
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                conn.commit()
        return
    lock_path = Path(current_app.config["INSTANCE_PATH"]) / ".migrate.lock"
    with os.fdopen(os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:  # like every file there
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _heads() -> tuple[set[str], set[str]]:
    config = current_app.extensions["migrate"].migrate.get_config()
    wanted = set(ScriptDirectory.from_config(config).get_heads())
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current, wanted


def upgrade_if_needed() -> None:
    current, wanted = _heads()
    if current == wanted:
        return
    with _migration_lock():
        current, wanted = _heads()
        if current != wanted:
            log.info("upgrading the database schema to %s", ", ".join(sorted(wanted)))
            upgrade()
    db.engine.dispose()


def record_notice_versions() -> None:
    """Keep every version of every notice ever shown, for the evidence."""
    if not inspect(db.engine).has_table(NoticeVersion.__tablename__):
        log.warning("database schema missing; run `flask --app wsgi db upgrade`")
        return
    known = {tuple(row) for row in db.session.execute(select(NoticeVersion.notice, NoticeVersion.version))}
    for notice in current_app.extensions["notices"].values():
        if (notice.slug, notice.version) in known:
            continue
        try:
            db.session.add(NoticeVersion(notice=notice.slug, version=notice.version, content=dict(notice.shown)))
            db.session.commit()
            log.info("recorded notice %s version %s", notice.slug, notice.version[:12])
        except IntegrityError:  # another process recorded it first
            db.session.rollback()
    db.session.remove()
