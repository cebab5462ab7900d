"""The driver-level fast path: statements compiled once and run as the DB-API driver's own call.

**What it is for.** The hottest write paths only: the one-click unsubscribe
(``consent.opt_out.unsubscribe``), a provider's event (``consent.provider_events``: an
unsubscribe, complaint or bounce from a webhook or a report) and the sign-up job every
sign-up runs after its answer (``consent.signup``), where SQLAlchemy's execution layer
costs more than the database (``bench/README.md``). It covers the statements those paths
run and the writes they need elsewhere: the subscription row, its
update and delete, the suppression and the delivery record (``consent/records.py``,
``consent/provider_events.py``), the evidence (``ledger.append``) and the outbox jobs
(``outbox.enqueue_many``, ``cancel_pending``, ``forget_finished``, and
``provider_sync.enqueue_*`` through them). Those shared helpers are called from colder
paths too (confirmation, erasure, import, purge), inside an ORM unit of work, and run the same
statements there. The contact import also writes its subscriptions through it, thousands of
rows a call (``send_many`` builds them column by column). One read goes through it: the
subscriber mail's row of the subscription it is for, which every sign-up's confirmation
reads (``read``, outside any unit of work). Nothing else uses it: every other
read and write is plain SQLAlchemy (``uow.session.execute(statement, params)`` or ORM
objects), and a new ``Prepared`` statement belongs here only with a benchmark that shows it
pays.

**Two kinds of unit of work.** ``database.unit_of_work()`` opens a session whose
connection's DB-API connection is also the one ``run`` and ``send`` use: one
transaction. ``unit_of_work(orm=False)`` (``on_driver`` here) takes a pooled DB-API
connection and nothing else: no session and no Core connection (``uow.session`` and
``uow.conn`` raise ``RuntimeError``), ``Prepared`` statements only. It first rolls back
a transaction the request's session left open, so it waits on no lock of its own
process; on SQLite it begins with ``BEGIN IMMEDIATE`` like the ORM unit of work; it
commits when the block ends and rolls back on any exception.

**Flush order when ORM objects and prepared statements are mixed** (an ORM unit of
work). A prepared statement goes to the driver at once, under the session: the session
neither sees it nor flushes before it. Objects added or changed through the session
are written at its next flush: an explicit ``uow.flush()``, a query through the session
(autoflush), or the commit, which therefore writes whatever is still pending *after*
every prepared statement already run. So a prepared statement that must come after an
ORM change (or see it) needs ``uow.flush()`` first; ``ledger.append`` and
``outbox.cancel_pending`` start with one. The other way round, a loaded ORM object does
not see a prepared write: ``records.write_columns`` sets the written values on the object
as already committed, so the flush neither writes them again nor overwrites them, and
``records.delete_personal_data`` deletes an ORM object through the session (the plain
row by a prepared DELETE). In a unit of work without the ORM, ``flush()`` does nothing.

**What it stores** is what a Core execution of the same statement stores: parameters
go through the column types' bind processors (JSON is encoded, and so on) and answered
rows through their result processors; a column left out of an INSERT gets its Python
``default`` and one left out of an UPDATE its Python ``onupdate`` (a scalar, or a
callable called without an execution context), made per call, or its SQL-expression
default, which is written into the statement's text as Core writes it; values written
into the statement (``.values(state="done")``) are sent as given; server defaults are
the table's own. ``tests/test_prepared.py`` compares the rows with Core's.

**What it does not do.** No ORM: no identity map, no mapper or session events, no
``@validates``, no cascades, no autoflush. No Core events either (``before_execute``,
``before_cursor_execute``, the engine's echo log): the call is the driver's own. No
expanding ``IN``, and no default of a kind other than those above (a ``TypeError`` when
the statement is first planned). An INSERT does not answer the new row's key unless it
says ``.returning(...)``; rows come back as named tuples of the returned columns; no
rowcount. A driver error is raised as SQLAlchemy's (``IntegrityError`` and the rest), so
callers handle it as any other statement's.

**Deferred writes (PostgreSQL, ``orm=False``).** Each statement sent to PostgreSQL costs a
round trip and, in psycopg's Python, more than the server's own work for these one-row
statements. So a unit of work without the ORM holds a ``send`` back and sends it with the
next statement, as a data-modifying ``WITH`` query in front of it: PostgreSQL runs each such
query exactly once and to completion, whether or not the statement reads it. An opt-out thus
takes four statements instead of eight (``bench/README.md``). The order of effects stays the
caller's: a statement that names a table a held write names (written, read or joined) sends
the held writes first, on their own, because the queries of one statement all see the data as
it was before the statement; two writes to one table are never joined. The commit sends what
is left; a failure drops it with the rest of the transaction. What changes is where an error
shows: a held write's failure is raised by the statement it went with, or by the commit, as
SQLAlchemy's exception for the joined text, and still rolls the unit of work back. SQLite runs
in the process, has no round trip to save, and runs every statement at once; so does an ORM
unit of work, whose session would not see a held write. (psycopg's pipeline mode, which
sends without waiting but keeps one statement each, was measured against none and did not
move the figure, ``bench/README.md``.)

On PostgreSQL a plan's placeholders are written positionally (``%s``), so that joining
statements is joining their texts and their values.

**Where ``UnitOfWork`` lives.** Here: its ``run`` and ``send`` are the fast path, and
the SQLAlchemy internals it reads (``Insert._returning``, a compiled statement's
``positiontup``, ``bind_names``, ``insert_prefetch`` and ``update_prefetch``, a bind
parameter's ``effective_value`` and ``required``, ``DBAPIError.instance``) stay in one
module, guarded by ``tests/test_prepared.py``. ``app.database`` imports from this module
(never the other way round) and re-exports ``UnitOfWork``, so code that only needs a
transaction imports ``UnitOfWork`` and ``unit_of_work`` from ``app.database`` as before.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import re
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import ClauseElement, Connection, Dialect, Executable, Table
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault
from sqlalchemy.sql.util import find_tables

from .extensions import db

# From this many rows, ``send_many`` of an INSERT uses COPY on PostgreSQL: several times the
# rows a second of a multi-row INSERT (bench/README.md, contact import).
COPY_FROM = 200


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
        # An INSERT that answers nothing: on PostgreSQL, many rows at once go by COPY.
        self.copy_into: Table | None = None
        if isinstance(statement, Insert) and not statement._returning:
            statement = statement.inline()  # no implicit RETURNING of the new key
            if isinstance(statement.table, Table) and statement._values is None:
                self.copy_into = statement.table
        self.statement = statement
        assert isinstance(statement, ClauseElement)  # every Executable built here is one
        # Every table the statement names (written, read, joined): what deferring it must respect.
        self.tables = frozenset(
            t.name
            for t in find_tables(
                statement, include_aliases=True, include_joins=True, include_selects=True, include_crud=True
            )
            if isinstance(t, Table)
        )
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}

    def plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        found = self._plans.get((dialect.name, keys))
        if found is None:
            found = self._plans[(dialect.name, keys)] = _Plan(self.statement, dialect, keys)
        return found


def _same(value: Any) -> Any:
    return value


def _each_once(process: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    """``process`` of each value, run once per distinct object: a batch's rows share their
    timestamps and often their JSON, and SQLite's datetime processor, say, costs far more
    than a look-up. Keyed by identity, which is safe while ``values`` holds every object
    (a processor is a function of its value); equal values held twice are processed twice."""
    done: dict[int, Any] = {}
    out = []
    for value in values:
        key = id(value)
        if key in done:
            out.append(done[key])
        else:
            out.append(processed := process(value))
            done[key] = processed
    return out


_NAMED = re.compile(r"%%|%\((\w+)\)s")


def _as_positional(sql: str, known: set[str]) -> tuple[str, list[str]]:
    """``%(name)s`` placeholders (psycopg's named style, as SQLAlchemy writes them) as ``%s``,
    with the names in their order: positional statements can be joined into one by
    concatenating their texts and their values (``UnitOfWork``'s deferred writes)."""
    names: list[str] = []

    def positional(found: re.Match[str]) -> str:
        if found.group(1) is None:
            return "%%"  # a literal percent sign stays escaped
        names.append(found.group(1))
        return "%s"

    text = _NAMED.sub(positional, sql)
    if "%(" in text or not set(names) <= known:
        raise TypeError(f"unexpected placeholders in {sql!r}")
    return text, names


class _Plan:
    def __init__(self, statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> None:
        assert isinstance(statement, ClauseElement)  # every Executable built here is one
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys)))
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("a prepared statement cannot expand a parameter list (IN)")
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = list(compiled.positiontup or [])  # the parameters' order, for a positional driver
        binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the name in the SQL
        if not self.positional and dialect.paramstyle == "pyformat":
            self.sql, self.names = _as_positional(self.sql, set(binds))
            self.positional = True
        # Columns left out get their Python default (insert) or on-update value, made per call.
        self.defaults: dict[str, Callable[[], Any]] = {}
        for column, default in [
            *((c, c.default) for c in compiled.insert_prefetch),
            *((c, c.onupdate) for c in compiled.update_prefetch),
        ]:
            if isinstance(default, CallableColumnDefault):
                # SQLAlchemy wraps a default taking no arguments to take the execution context: none here.
                self.defaults[column.key] = functools.partial(cast(Callable[[Any], Any], default.arg), None)
            elif isinstance(default, ScalarElementColumnDefault):
                self.defaults[column.key] = functools.partial(_same, default.arg)
            else:
                raise TypeError(f"{column.key}: only Python defaults can be prepared")
        # Values written into the statement itself, such as state="done".
        given = {*keys, *self.defaults}
        self.fixed = {k: b.effective_value for k, b in binds.items() if k not in given and not b.required}
        self.bind = {k: p for k, b in binds.items() if (p := b.type.dialect_impl(dialect).bind_processor(dialect))}
        returned = list(statement.exported_columns) if hasattr(statement, "exported_columns") else []
        self.row: Callable[..., Any] | None = namedtuple("Row", [c.key for c in returned]) if returned else None
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

    def values_many(self, params: list[dict[str, Any]]) -> list[Any]:
        """``values`` of each parameter set (all with this plan's keys), built column by column:
        an import or a purge sends thousands of rows in one call, and per column the lookups
        and the bind processor run as one ``map`` instead of a dict merge per row."""
        columns = self._columns(params)
        if self.positional:
            return list(zip(*(columns[name] for name in self.names), strict=True))
        names = list(columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]

    def _columns(self, params: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """Each bound value's column of values, as the driver takes them (see ``values_many``)."""
        count = len(params)
        columns: dict[str, list[Any]] = {key: [value] * count for key, value in self.fixed.items()}
        for key in params[0]:
            columns[key] = list(map(operator.itemgetter(key), params))
        for key, make in self.defaults.items():
            if key not in columns:
                columns[key] = [make() for _ in range(count)]
        for key, process in self.bind.items():
            if key in columns:
                columns[key] = _each_once(process, columns[key])
        return columns

    def rows(self, cursor: Any) -> list[Any]:
        make, processors = self.row, self.result
        if make is None:
            return []
        return [
            make(*(value if fn is None else fn(value) for fn, value in zip(processors, raw, strict=True)))
            for raw in cursor.fetchall()
        ]


class UnitOfWork:
    """One transaction: state change, evidence and outbox jobs commit together.

    Work that must happen only once the transaction is durable (sending mail)
    is registered with ``after_commit`` and runs after the commit succeeded.
    ``run`` and ``send`` execute ``Prepared`` statements on the transaction's
    DB-API connection (see the module's docstring for when, and for the order
    against the session's flush). A unit of work opened with ``orm=False`` has
    that connection alone: no session and no Core connection.
    """

    def __init__(
        self,
        dialect: Dialect,
        driver: Any,
        session: Session | None = None,
        conn: Connection | None = None,
        defer: bool = False,
    ) -> None:
        self.dialect = dialect
        self._driver = driver  # the transaction's DB-API connection
        self._session = session
        self._conn = conn
        self._cursor: Any = None
        self._after_commit: list[Callable[[], object]] = []
        # Deferred writes (see "Deferred writes" in the module's docstring): SQL and values of
        # each, and every table they name.
        self._defer = defer
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []
        self._deferred_tables: frozenset[str] = frozenset()

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
        """Run a prepared statement with one parameter set; answers the rows it returns.

        Deferred writes go with it, in the same statement, unless they name one of its tables
        (then they go first, on their own)."""
        params = params or {}
        plan = statement.plan(self.dialect, tuple(params))
        sql, values = plan.sql, plan.values(params)
        if self._deferred:
            apart = statement.tables & self._deferred_tables or sql.startswith("WITH RECURSIVE")
            if isinstance(values, tuple) and not apart:
                sql, values = self._joined(sql, values)
            else:
                self.write_deferred()
        with _as_sqlalchemy_errors(sql, self.dialect):
            cursor = self._driver_cursor()
            cursor.execute(sql, values)
            return plan.rows(cursor)

    def send(self, statement: Prepared, params: dict[str, Any] | None = None) -> None:
        """Run a prepared statement whose answer nobody reads (any rows it returns are left unread).

        In a unit of work that defers writes, it is held until the next statement or the commit."""
        params = params or {}
        plan = statement.plan(self.dialect, tuple(params))
        if not self._defer or plan.sql.startswith("WITH"):  # a WITH query's own WITH cannot write
            self.write_deferred()
            self._send_now(statement, [params])
            return
        values = plan.values(params)
        assert isinstance(values, tuple)  # PostgreSQL's plans are positional (see _Plan)
        if statement.tables & self._deferred_tables:
            self.write_deferred()  # two writes naming one table keep their order: one statement each
        self._deferred.append((plan.sql, values))
        self._deferred_tables |= statement.tables

    def write_deferred(self) -> None:
        """Run the deferred writes now, as one statement (the last one, with the others before it)."""
        if not self._deferred:
            return
        sql, values = self._deferred.pop()
        sql, values = self._joined(sql, values)
        with _as_sqlalchemy_errors(sql, self.dialect):
            self._driver_cursor().execute(sql, values)

    def _joined(self, sql: str, values: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        """``sql`` with the deferred writes before it as data-modifying WITH queries, which
        PostgreSQL runs exactly once and to completion whether or not the statement reads them;
        the deferred writes are then done."""
        deferred = self._deferred
        self._deferred, self._deferred_tables = [], frozenset()
        if not deferred:
            return sql, values
        key = (*(text for text, _ in deferred), sql)
        joined = _JOINED.get(key)
        if joined is None:
            writes = ", ".join(f"deferred_{i} AS ({text})" for i, (text, _) in enumerate(deferred))
            joined = f"WITH {writes}, {sql[5:]}" if sql.startswith("WITH ") else f"WITH {writes} {sql}"
            if len(_JOINED) < _JOINED_KEPT:
                _JOINED[key] = joined
        return joined, (*itertools.chain.from_iterable(v for _, v in deferred), *values)

    def send_many(self, statement: Prepared, rows: list[dict[str, Any]]) -> None:
        """``send`` once per parameter set (the same keys in each), in one driver call."""
        if len(rows) == 1 and self._defer:
            self.send(statement, rows[0])
        elif rows:
            self.write_deferred()
            self._send_now(statement, rows)

    def _send_now(self, statement: Prepared, rows: list[dict[str, Any]]) -> None:
        plan = statement.plan(self.dialect, tuple(rows[0]))
        with _as_sqlalchemy_errors(plan.sql, self.dialect):
            if len(rows) == 1:  # executemany's own set-up costs more than one statement
                self._driver_cursor().execute(plan.sql, plan.values(rows[0]))
            elif len(rows) >= COPY_FROM and self.dialect.name == "postgresql" and statement.copy_into is not None:
                self._copy(statement.copy_into, plan._columns(rows))
            else:
                self._driver_cursor().executemany(plan.sql, plan.values_many(rows))

    def _copy(self, table: Table, columns: dict[str, list[Any]]) -> None:
        """Rows into ``table`` through PostgreSQL's COPY (the values as ``values_many`` makes them,
        keyed by column key; COPY names the columns themselves)."""
        from psycopg.types.json import Json, Jsonb  # only PostgreSQL copies; SQLite needs no psycopg

        preparer = self.dialect.identifier_preparer
        names = ", ".join(preparer.quote(table.c[key].name) for key in columns)

        def as_text(value: Any) -> Any:
            return (value.dumps or json.dumps)(value.obj) if isinstance(value, (Json, Jsonb)) else value

        for key, values in columns.items():
            if values and isinstance(values[0], (Json, Jsonb)):
                # psycopg would encode each row's wrapper (SQLAlchemy's bind value) again, though a
                # batch's rows share one; each is encoded here once per object, and sent as text.
                columns[key] = _each_once(as_text, values)
        types = _binary_types(table, tuple(columns))
        binary = " (FORMAT BINARY)" if types is not None else ""
        with self._driver_cursor().copy(f"COPY {preparer.format_table(table)} ({names}) FROM STDIN{binary}") as copy:
            if types is not None:
                copy.set_types(types)
            for row in zip(*columns.values(), strict=True):
                copy.write_row(row)

    def _driver_cursor(self) -> Any:
        if self._deferred:
            raise RuntimeError("deferred writes must go first")  # a new use of the cursor forgot them
        if self._cursor is None:
            self._cursor = self._driver.cursor()
        return self._cursor

    def after_commit(self, fn: Callable[[], object]) -> None:
        self._after_commit.append(fn)


def _binary_types(table: Table, keys: tuple[str, ...]) -> list[str] | None:
    """The type psycopg dumps each column's values as for a COPY in PostgreSQL's binary format,
    or None where a column's type has no entry here (that COPY goes as text).

    Binary rows cost the driver and the server less than text: no timestamp is written out and
    parsed back (bench/README.md, contact import). Only the value's encoding is chosen here: the
    server reads each field with its column's own binary input. A JSON column's value arrives
    already encoded (``_copy``) and goes as text, which is its binary form too; JSONB's binary form
    starts with a version byte, so it keeps the text COPY.
    """
    if (table, keys) not in _BINARY_TYPES:
        names = [_binary_name(table.c[key].type) for key in keys]
        _BINARY_TYPES[(table, keys)] = None if None in names else cast(list[str], names)
    return _BINARY_TYPES[(table, keys)]


def _binary_name(kind: Any) -> str | None:
    if isinstance(kind, postgresql.JSONB):
        return None
    if isinstance(kind, (sqltypes.String, sqltypes.JSON)):
        return "text"
    if isinstance(kind, sqltypes.DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, sqltypes.Boolean):
        return "bool"
    if isinstance(kind, sqltypes.BigInteger):
        return "int8"
    if isinstance(kind, sqltypes.SmallInteger):
        return "int2"
    if isinstance(kind, sqltypes.Integer):
        return "int4"
    return None


_BINARY_TYPES: dict[tuple[Table, tuple[str, ...]], list[str] | None] = {}


# Joined statements' texts by the texts joined: a path joins the same few each time, and the
# driver then prepares the joined text like any other it runs often. Bounded, in case a caller
# ever builds statements per call.
_JOINED: dict[tuple[str, ...], str] = {}
_JOINED_KEPT = 500


@contextmanager
def _as_sqlalchemy_errors(sql: str, dialect: Dialect) -> Iterator[None]:
    """The driver's errors as SQLAlchemy raises them (``IntegrityError`` and the rest), so
    callers handle a prepared statement's failure as they handle any other statement's."""
    try:
        yield
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc


def read(statement: Prepared, params: dict[str, Any] | None = None) -> list[Any]:
    """The rows of one prepared read, on a pooled DB-API connection of its own, outside any unit
    of work: no write lock is taken (no ``BEGIN IMMEDIATE``, no writer's turn) and the read's
    transaction ends before this returns, so the caller may go on to slow work (a mail server)
    holding no snapshot."""
    params = params or {}
    engine = db.engine
    plan = statement.plan(engine.dialect, tuple(params))
    driver = engine.raw_connection()
    try:
        with _as_sqlalchemy_errors(plan.sql, engine.dialect):
            cursor = driver.cursor()
            cursor.execute(plan.sql, plan.values(params))
            rows = plan.rows(cursor)
            driver.rollback()  # SQLite's connections run without a transaction here; PostgreSQL's one ends
        return rows
    finally:
        driver.close()  # back to the pool


@contextmanager
def on_driver() -> Iterator[UnitOfWork]:
    """The transaction of ``unit_of_work(orm=False)``, on a pooled DB-API connection of its own."""
    # No transaction of the request's session may hold a lock this one waits on.
    # (No session is made just to ask: the opt-out paths often have none.)
    if db.session.registry.has() and db.session().in_transaction():
        db.session.rollback()
    engine = db.engine
    dialect = engine.dialect
    driver = engine.raw_connection()  # from the pool, set up by its connect hook like any other
    try:
        with _as_sqlalchemy_errors("COMMIT", dialect):
            if dialect.name == "sqlite":
                # The connect hook leaves BEGIN to us (app/database.py).
                driver.cursor().execute("BEGIN IMMEDIATE")
            uow = UnitOfWork(dialect, driver, defer=dialect.name == "postgresql")
            yield uow
            uow.write_deferred()
            driver.commit()
    except BaseException:
        driver.rollback()
        raise
    finally:
        driver.close()  # back to the pool
