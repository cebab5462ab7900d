"""The dashboard's counts of subscriptions, kept by the database as the rows change.

Triggers on ``subscriptions`` (migration 0012) append a row to ``subscription_tallies`` for
each change of what the counts tell apart: +1 under a row's (notice, notice version, status,
lawful basis) when it appears there, -1 when it leaves. A count is the sum of its key's rows,
so it is exact at every commit, whichever code or statement wrote the subscriptions; reading
it costs the number of tally rows, not of subscriptions.

``fold`` sums the rows back to one a key, in one transaction: the worker after each pass and
the overview before it reads, when there are more than ``FOLD_FROM`` (every opt-out adds two);
an import and a purge at their end.
Rows appended while a fold runs are kept as they are; a fold never loses or counts twice a
change (``tests/test_tallies.py`` folds while writers write).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text

from .database import UnitOfWork, is_sqlite, unit_of_work
from .extensions import db
from .fastpath import Prepared
from .models import SubscriptionTally

# More rows than this and the worker folds them. Reading 10,000 rows costs a few milliseconds.
FOLD_FROM = 10_000
_T = SubscriptionTally.__table__.c
_KEY = (_T.notice, _T.notice_version, _T.status, _T.lawful_basis)

# One statement on PostgreSQL: the rows it deletes are exactly those it sums, whatever commits
# meanwhile (a row committed after its snapshot is neither deleted nor summed, and stays). A
# second fold at the same time waits for this one's deleted rows, then skips them.
_FOLD_POSTGRESQL = text(
    """WITH folded AS (DELETE FROM subscription_tallies RETURNING notice, notice_version, status, lawful_basis, n),
    summed AS (
        INSERT INTO subscription_tallies (notice, notice_version, status, lawful_basis, n)
        SELECT notice, notice_version, status, lawful_basis, sum(n) FROM folded
        GROUP BY notice, notice_version, status, lawful_basis HAVING sum(n) <> 0
    )
    SELECT count(*) FROM folded"""
)
# On SQLite the unit of work holds the one write lock: nothing is appended between the two. It
# folds the oldest rows, at most ``FOLD_CHUNK`` a transaction, so a web write waits for one
# chunk, not for the whole (a purge of 100,000 subscriptions leaves as many rows here).
FOLD_CHUNK = 10_000
_CHUNK_END_SQLITE = text("SELECT id FROM subscription_tallies ORDER BY id LIMIT 1 OFFSET :skip")
_FOLD_SQLITE = (
    text(
        """INSERT INTO subscription_tallies (notice, notice_version, status, lawful_basis, n)
        SELECT notice, notice_version, status, lawful_basis, sum(n) FROM subscription_tallies WHERE id <= :last
        GROUP BY notice, notice_version, status, lawful_basis HAVING sum(n) <> 0"""
    ),
    text("DELETE FROM subscription_tallies WHERE id <= :last"),
)


# SQLite's insert trigger, as migration 0012 creates it (``tests/test_tallies.py`` compares the
# two). Its presence alone makes SQLite check a new row's unique key at twice the cost, so a
# bulk insert there takes it off for its own transaction: ``insert_many``.
SQLITE_INSERT_TRIGGER = (
    "CREATE TRIGGER subscriptions_tally_insert AFTER INSERT ON subscriptions BEGIN "
    "INSERT INTO subscription_tallies (notice, notice_version, status, lawful_basis, n) "
    "VALUES (NEW.notice, NEW.notice_version, NEW.status, NEW.lawful_basis, 1); END"
)
# Fewer rows than this go in with the trigger on.
BULK_FROM = 1_000


@dataclass(frozen=True)
class Tally:
    notice: str
    notice_version: str
    status: str
    lawful_basis: str
    n: int


def counts(notices: Collection[str]) -> list[Tally]:
    """The subscriptions of these notices by (notice, version, status, lawful basis), keys with none left out."""
    rows = db.session.execute(
        select(*_KEY, func.sum(_T.n))
        .where(_T.notice.in_(list(notices)))
        .group_by(*_KEY)
        .having(func.sum(_T.n) != 0)
    ).all()
    return [Tally(notice, version, status, basis, int(n)) for notice, version, status, basis, n in rows]


def fold() -> int:
    """Sum the tallies to one row a key; answers how many rows there were when it began."""
    if not is_sqlite():
        with unit_of_work() as uow:
            return int(uow.conn.execute(_FOLD_POSTGRESQL).scalar_one())
    summed, folded = _FOLD_SQLITE
    began_with = None
    while True:
        # The oldest chunk, summed; its sums are appended after the newest row, so a later chunk
        # takes them in again. A chunk that reaches the newest row leaves one row a key.
        with unit_of_work() as uow:
            if began_with is None:
                began_with = int(uow.conn.execute(select(func.count()).select_from(SubscriptionTally)).scalar_one())
            last = uow.conn.execute(_CHUNK_END_SQLITE, {"skip": FOLD_CHUNK - 1}).scalar()
            final = last is None
            if final:
                last = uow.conn.execute(select(func.max(_T.id))).scalar_one()
                if last is None:
                    return 0
            uow.conn.execute(summed, {"last": last})
            uow.conn.execute(folded, {"last": last})
        if final:
            return began_with


def fold_if_many(at_least: int | None = None) -> int:
    """Fold when there are more than ``at_least`` rows (``FOLD_FROM``): the worker asks after
    every pass, the overview before it reads."""
    with db.engine.connect() as conn:  # a read of its own: the caller's session is left as it is
        rows = conn.execute(select(func.count()).select_from(SubscriptionTally)).scalar_one()
    return fold() if rows > (FOLD_FROM if at_least is None else at_least) else 0


def insert_many(uow: UnitOfWork, statement: Prepared, rows: list[dict[str, Any]]) -> None:
    """New subscriptions in bulk (an import's batch), counted.

    PostgreSQL's trigger counts a statement's rows at once, so they just go in. On SQLite the
    insert trigger is dropped inside this transaction, the rows go in, their tallies are written
    as one row a key, and the trigger is created again before the commit. The transaction
    holds SQLite's one write lock, so no other write runs without the trigger, and a rollback
    puts it back with the rest: every committed state has it. The import's measured cost of the
    trigger on SQLite (bench/README.md, contact import) is what this saves.
    """
    if uow.dialect.name != "sqlite" or len(rows) < BULK_FROM:
        uow.send_many(statement, rows)
        return
    uow.flush()
    uow.conn.execute(text("DROP TRIGGER subscriptions_tally_insert"))
    uow.send_many(statement, rows)
    keys = Counter((row["notice"], row["notice_version"], row["status"], row["lawful_basis"]) for row in rows)
    uow.conn.execute(
        insert(SubscriptionTally),
        [
            {"notice": notice, "notice_version": version, "status": status, "lawful_basis": basis, "n": n}
            for (notice, version, status, basis), n in keys.items()
        ],
    )
    uow.conn.execute(text(SQLITE_INSERT_TRIGGER))
