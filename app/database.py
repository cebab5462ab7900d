"""Connection set-up and the unit of work.

``unit_of_work()`` is the one way to open a write transaction. ``UnitOfWork`` itself,
and the driver-level fast path that ``unit_of_work(orm=False)`` opens, are in
``app/fastpath.py`` (where to use that path, and where not, is written there);
``UnitOfWork`` is re-exported here so code that needs a transaction imports from
this module alone.

SQLite is the embedded default and must never answer "database is locked":
connections run in WAL mode with a busy timeout, and a unit of work that reads
then writes opens its transaction with ``BEGIN IMMEDIATE`` so two writers queue
instead of deadlocking on a lock upgrade. ``secure_delete`` overwrites deleted
content, so an erased address does not linger in free pages.

Units of work on SQLite also take their turn on a lock file next to the database
(``<database>-writers``, ``flock``) before they begin, so writers in every thread and
process queue in the kernel and the next one starts the moment the last commits.
Without it they wait in SQLite's busy handler, which polls: it sleeps 1, 2, 5, 10, 15,
20, 25 ms and so on between tries, so under load the write lock lies idle while the
next writer sleeps, and a waiter that keeps losing the race waits longest
(bench/README.md, SQLite writers). Writes outside a unit of work (a page's own
session commit) do not take a turn and still meet the busy handler; they are rare.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from flask import current_app
from sqlalchemy import Connection, CursorResult, Dialect, Engine, Result, event, exc, text
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.pool import Pool

from .extensions import db
from .fastpath import UnitOfWork, on_driver  # UnitOfWork: re-exported (see above)

_IMMEDIATE = "immediate_transaction"


@event.listens_for(Engine, "do_connect")
def _private_sqlite_file(dialect: Dialect, _record: object, cargs: list[Any], cparams: dict[str, Any]) -> None:
    """Create the SQLite database file readable by its owner only (0600) before SQLite opens it.

    SQLite makes a new database file with the process umask (often 0644), and gives its -wal
    and -shm files the database file's mode; the file holds every address, so it is made first.
    """
    if dialect.name != "sqlite" or cparams.get("uri") or not cargs:
        return  # a "file:" URI names its own options; leave it to whoever wrote it
    path = str(cargs[0])
    if path in ("", ":memory:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return


@event.listens_for(Engine, "connect")
def _configure_sqlite(dbapi_connection: object, _record: object) -> None:
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


# A pooled PostgreSQL connection unused for longer than this is asked a question before use.
PING_AFTER_IDLE_SECONDS = 2.0


@event.listens_for(Pool, "checkin")
def _idle_since(_dbapi_connection: object, record: Any) -> None:
    if record is not None:
        record.info["idle_since"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _alive(dbapi_connection: Any, record: Any, _proxy: object) -> None:
    """A PostgreSQL connection the server may have dropped while it was pooled is asked a
    question (``;``) before use, and replaced when it cannot answer: the pool's
    ``DisconnectionError``, after which it takes another connection.

    Only one that is suspect is asked: one that has data waiting although it sent no question
    (a server that ends a connection, at a restart or ``pg_terminate_backend``, says so
    first, then closes it: both make its socket readable), or one unused for longer than
    ``PING_AFTER_IDLE_SECONDS`` (a connection a firewall or a proxy dropped while idle says
    nothing). A connection used a moment ago, as under load every one is, starts its work
    at once: the question would be one round trip of the half dozen an opt-out takes.
    """
    if not hasattr(dbapi_connection, "pgconn"):
        return  # SQLite: a file, no server to lose
    since = record.info.get("idle_since")
    try:
        poll = select.poll()
        poll.register(dbapi_connection.fileno(), select.POLLIN)
        waiting = bool(poll.poll(0))
    except (OSError, ValueError):  # closed already
        waiting = True
    if not waiting and since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        mode = dbapi_connection.autocommit  # an engine may run its connections in autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute(";")
        dbapi_connection.autocommit = mode
    except Exception as error:
        raise exc.DisconnectionError(f"a pooled connection was dropped by the server: {error}") from error


@event.listens_for(Engine, "begin")
def _begin_sqlite(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


@contextmanager
def _in_session() -> Iterator[UnitOfWork]:
    session = db.session()
    if session.in_transaction():
        # A read earlier in the request left a transaction open; start afresh
        # so the write transaction begins with the right lock.
        session.rollback()
    conn = session.connection(execution_options={_IMMEDIATE: True})
    uow = UnitOfWork(conn.dialect, conn.connection, session, conn)
    try:
        yield uow
        session.commit()
    except BaseException:
        session.rollback()
        raise


class _TurnFile:
    """This thread's descriptor of a database's lock file (an ``flock`` is held per open file,
    so each thread opens its own, and a forked child opens its own again); closed when the
    thread ends or moves to another database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.depth = 0  # units of work this thread has open on it (one inside another: one turn)

    def __del__(self) -> None:
        os.close(self.fd)


_turns = threading.local()
# A turn longer than this is bulk work's, which leaves a gap after it for a waiting writer.
LONG_TURN_SECONDS = 0.02
TURN_GAP_SECONDS = 0.002


@contextmanager
def _writer_turn() -> Iterator[None]:
    """On a SQLite file, wait for this thread's turn to write (see the module's docstring)."""
    engine = db.engine
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = os.path.abspath(database) + "-writers"
    turn: _TurnFile | None = getattr(_turns, "file", None)
    if turn is None or turn.path != path or turn.pid != os.getpid():
        if turn is not None and turn.depth:
            yield  # a unit of work on another database is open in this thread: no turn to wait for
            return
        turn = _turns.file = _TurnFile(path)
    if turn.depth == 0:
        fcntl.flock(turn.fd, fcntl.LOCK_EX)  # waits without the GIL
        since = time.monotonic()
    turn.depth += 1
    try:
        yield
    finally:
        turn.depth -= 1
        if turn.depth == 0:
            fcntl.flock(turn.fd, fcntl.LOCK_UN)
            if time.monotonic() - since > LONG_TURN_SECONDS:
                # An unlock wakes the waiters but hands the lock to none of them: bulk work (a
                # purge's or an import's batches) would take it straight back for its next
                # batch, again and again, while a one-click waits. A pause lets one in.
                time.sleep(TURN_GAP_SECONDS)


@contextmanager
def unit_of_work(orm: bool = True) -> Iterator[UnitOfWork]:
    """One transaction. ``orm=False`` opens it on a driver connection of its own: a
    millisecond cheaper, for the opt-out and webhook path, which writes with ``Prepared``
    statements only (``app/fastpath.py``)."""
    with _writer_turn(), _in_session() if orm else on_driver() as uow:
        yield uow
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


MAX_ID = 2**31 - 1  # the largest value an INTEGER key holds on every backend
_ID_RE = re.compile(r"[0-9]{1,10}")


def id_param(raw: str | None) -> int | None:
    """A row id from outside (URL, query, cookie): ASCII digits within range, else None."""
    if raw is None or not _ID_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


# A session as the code is handed one: Flask-SQLAlchemy's request-scoped ``db.session``, or a
# unit of work's own.
AnySession = Session | scoped_session[Any]


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE run through a session touched (its result is a cursor's)."""
    return cast(CursorResult[Any], result).rowcount
