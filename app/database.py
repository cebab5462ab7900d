"""Connection set-up and the unit of work.

SQLite is the embedded default and must never answer "database is locked":
connections run in WAL mode with a busy timeout, and a unit of work that reads
then writes opens its transaction with ``BEGIN IMMEDIATE`` so two writers queue
instead of deadlocking on a lock upgrade. ``secure_delete`` overwrites deleted
content, so an erased address does not linger in free pages.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from flask import current_app
from sqlalchemy import Connection, Dialect, Engine, Executable, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from .extensions import db

_IMMEDIATE = "immediate_transaction"


@event.listens_for(Engine, "do_connect")
def _private_sqlite_file(dialect, _record, cargs, cparams) -> None:  # type: ignore[no-untyped-def]
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


class Prepared:
    """A Core statement compiled once per dialect, run as the driver's own call.

    Every opt-out and every webhook delivery runs a handful of statements, and
    SQLAlchemy's execution layer costs more than the database for each of them
    (bench/README.md). A prepared statement keeps what that layer works out per
    call: the SQL, the order of its parameters, the column types' bind and result
    processors and the columns' Python defaults, so what is stored is what Core
    stores. Only plain parameters (no expanding ``IN``) are supported.
    """

    def __init__(self, statement: Executable) -> None:
        if isinstance(statement, Insert) and not statement._returning:
            statement = statement.inline()  # no implicit RETURNING of the new key
        self.statement = statement
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}

    def plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        found = self._plans.get((dialect.name, keys))
        if found is None:
            found = self._plans[(dialect.name, keys)] = _Plan(self.statement, dialect, keys)
        return found


class _Plan:
    def __init__(self, statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("a prepared statement cannot expand a parameter list (IN)")
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = list(compiled.positiontup or [])  # the parameters' order, for a positional driver
        binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the name in the SQL
        # Columns left out get their Python default (insert) or on-update value, made per call.
        self.defaults: dict[str, Callable[[], Any]] = {}
        for column, default in [
            *((c, c.default) for c in compiled.insert_prefetch),
            *((c, c.onupdate) for c in compiled.update_prefetch),
        ]:
            if default.is_callable:
                self.defaults[column.key] = lambda fn=default.arg: fn(None)
            elif default.is_scalar:
                self.defaults[column.key] = lambda value=default.arg: value
            else:
                raise TypeError(f"{column.key}: only Python defaults can be prepared")
        # Values written into the statement itself, such as state="done".
        given = {*keys, *self.defaults}
        self.fixed = {k: b.effective_value for k, b in binds.items() if k not in given and not b.required}
        self.bind = {k: p for k, b in binds.items() if (p := b.type.dialect_impl(dialect).bind_processor(dialect))}
        returned = list(statement.exported_columns) if hasattr(statement, "exported_columns") else []
        self.row = namedtuple("Row", [c.key for c in returned]) if returned else None  # type: ignore[misc]
        self.result = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in returned]

    def values(self, params: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        given = {**self.fixed, **params}
        for key, make in self.defaults.items():
            if key not in given:
                given[key] = make()
        for key, process in self.bind.items():
            if key in given:
                given[key] = process(given[key])
        return tuple(given[name] for name in self.names) if self.positional else given

    def rows(self, cursor: Any) -> list[Any]:
        make, processors = self.row, self.result
        return [
            make(*(value if fn is None else fn(value) for fn, value in zip(processors, raw, strict=True)))
            for raw in cursor.fetchall()
        ]


class UnitOfWork:
    """One transaction: state change, evidence and outbox jobs commit together.

    Work that must happen only once the transaction is durable (sending mail)
    is registered with ``after_commit`` and runs after the commit succeeded.
    A unit of work opened with ``orm=False`` runs on a pooled driver connection
    alone: no session and no Core connection, ``Prepared`` statements only (the
    opt-out paths, where those layers cost more than the database).
    """

    def __init__(
        self, dialect: Dialect, driver: Any, session: Session | None = None, conn: Connection | None = None
    ) -> None:
        self.dialect = dialect
        self._driver = driver  # the transaction's DB-API connection
        self._session = session
        self._conn = conn
        self._cursor: Any = None
        self._after_commit: list[Callable[[], None]] = []

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("this unit of work was opened without the ORM (orm=False)")
        return self._session

    @property
    def conn(self) -> Connection:
        """The transaction's Core connection (not in a unit of work opened with ``orm=False``)."""
        if self._conn is None:
            raise RuntimeError("this unit of work was opened without the ORM (orm=False)")
        return self._conn

    def flush(self) -> None:
        """Pending ORM changes first, so the order of writes stays the caller's."""
        if self._session is not None:
            self._session.flush()

    def run(self, statement: Prepared, params: dict[str, Any] | None = None) -> list[Any]:
        """Run a prepared statement with one parameter set; answers the rows it returns."""
        params = params or {}
        plan = statement.plan(self.dialect, tuple(params))
        with _as_sqlalchemy_errors(plan.sql, self.dialect):
            cursor = self._driver_cursor()
            cursor.execute(plan.sql, plan.values(params))
            return plan.rows(cursor) if plan.row is not None else []

    def send(self, statement: Prepared, params: dict[str, Any] | None = None) -> None:
        """Run a prepared statement whose answer nobody reads. In a unit of work opened with
        ``orm=False`` on PostgreSQL it goes out without waiting for the server (pipeline mode):
        the writes between two reads share one round trip, and an error shows at the next read."""
        self.send_many(statement, [params or {}])

    def send_many(self, statement: Prepared, rows: list[dict[str, Any]]) -> None:
        """``send`` once per parameter set (the same keys in each), in one driver call."""
        if not rows:
            return
        plan = statement.plan(self.dialect, tuple(rows[0]))
        with _as_sqlalchemy_errors(plan.sql, self.dialect):
            if len(rows) == 1:  # executemany's own set-up costs more than one statement
                self._driver_cursor().execute(plan.sql, plan.values(rows[0]))
            else:
                self._driver_cursor().executemany(plan.sql, [plan.values(row) for row in rows])

    def _driver_cursor(self) -> Any:
        if self._cursor is None:
            self._cursor = self._driver.cursor()
        return self._cursor

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after_commit.append(fn)


@contextmanager
def _as_sqlalchemy_errors(sql: str, dialect: Dialect) -> Iterator[None]:
    """The driver's errors as SQLAlchemy raises them (``IntegrityError`` and the rest), so
    callers handle a prepared statement's failure as they handle any other statement's."""
    try:
        yield
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc


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


@contextmanager
def _on_driver() -> Iterator[UnitOfWork]:
    # As above: no transaction of the request's session may hold a lock this one waits on.
    # (No session is made just to ask: the opt-out paths often have none.)
    if db.session.registry.has() and db.session().in_transaction():
        db.session.rollback()
    engine = db.engine
    dialect = engine.dialect
    driver = engine.raw_connection()  # from the pool, set up by its connect hook like any other
    try:
        with ExitStack() as stack, _as_sqlalchemy_errors("COMMIT", dialect):
            if dialect.name == "sqlite":
                driver.cursor().execute("BEGIN IMMEDIATE")  # the driver leaves BEGIN to us (see above)
            elif dialect.name == "postgresql":
                stack.enter_context(driver.driver_connection.pipeline())
            yield UnitOfWork(dialect, driver)
            driver.commit()
    except BaseException:
        driver.rollback()
        raise
    finally:
        driver.close()  # back to the pool


@contextmanager
def unit_of_work(orm: bool = True) -> Iterator[UnitOfWork]:
    """One transaction. ``orm=False`` opens it on a driver connection of its own: a
    millisecond cheaper, for the paths that write with ``Prepared`` statements only."""
    with _in_session() if orm else _on_driver() as uow:
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
