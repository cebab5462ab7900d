"""On SQLite, writers queue for their turn on a lock file, in every thread and process.

SQLite's own wait for its write lock is a busy handler that polls and sleeps; the service's
units of work instead take a turn on ``<database>-writers`` first. Here SQLite's wait is
switched off (a busy timeout of 0: a writer that met the lock held would fail at once with
"database is locked"), so every write that succeeds while others are writing has waited in
the queue, not in SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from app.database import unit_of_work
from app.extensions import db
from app.models import ServiceMark, utcnow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    """SQLite only: PostgreSQL writers wait on row locks, in the server."""
    return sqlite_database_url


@pytest.fixture
def no_busy_wait(app):  # type: ignore[no-untyped-def]
    """Every connection of the app under test gives up at once on a locked database."""

    def give_up_at_once(dbapi_connection, _record, _proxy):  # type: ignore[no-untyped-def]
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    with app.app_context():
        engine = db.engine
    event.listen(engine, "checkout", give_up_at_once)
    yield
    event.remove(engine, "checkout", give_up_at_once)


def marks(app, prefix: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(func.count()).select_from(ServiceMark).where(ServiceMark.name.startswith(prefix))
        ).scalar_one()


def test_writers_in_many_threads_all_commit_though_sqlite_would_not_wait(app, no_busy_wait):
    errors: list[Exception] = []

    def write(thread: int) -> None:
        with app.app_context():
            for n in range(25):
                try:
                    with unit_of_work() as uow:
                        uow.session.add(ServiceMark(name=f"thread-{thread}-{n}", at=utcnow()))
                except Exception as exc:  # each failure is the finding
                    errors.append(exc)

    threads = [threading.Thread(target=write, args=(thread,)) for thread in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert marks(app, "thread-") == 6 * 25


HOLDER = """
import sys, time
from app import create_app
from app.database import unit_of_work
from app.models import ServiceMark, utcnow
app = create_app()
with app.app_context():
    with unit_of_work() as uow:
        uow.session.add(ServiceMark(name="held-by-another-process", at=utcnow()))
        uow.flush()
        print("holding", flush=True)
        time.sleep(1.0)
"""


def test_a_writer_waits_for_another_process_to_commit_and_then_writes(app, app_env, no_busy_wait):
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=REPO,
        env={**os.environ, **app_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with app.app_context(), unit_of_work() as uow:
            # Our turn came only once the other process had committed: its row is there.
            held = uow.session.get(ServiceMark, "held-by-another-process")
            assert held is not None
            uow.session.add(ServiceMark(name="written-after-it", at=utcnow()))
        assert holder.wait(timeout=30) == 0
    assert marks(app, "written-after-it") == 1
