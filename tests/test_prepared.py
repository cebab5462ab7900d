"""Statements prepared for the driver (the opt-out paths, ``app/fastpath.py``) store and read what Core
does: these tests guard the SQLAlchemy internals that module reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select, update

from app.database import unit_of_work
from app.extensions import db
from app.fastpath import COPY_FROM, Prepared
from app.models import OutboxJob, Subscription, utcnow

JOBS = OutboxJob.__table__
PREPARED_INSERT = Prepared(insert(JOBS))
PREPARED_SELECT = Prepared(select(JOBS).where(JOBS.c.subscription_ref == bindparam("ref")))
PREPARED_CANCEL = Prepared(
    update(JOBS).where(JOBS.c.subscription_ref == bindparam("ref")).values(state="done", payload={})
)


def _stored(ref: str) -> dict:
    row = db.session.execute(select(JOBS).where(JOBS.c.subscription_ref == ref)).mappings().one()
    return {k: v for k, v in row.items() if k != "id"}


@pytest.mark.parametrize("orm", [True, False])
def test_a_prepared_insert_stores_what_a_core_insert_stores(app, orm):
    job = {"kind": "mail", "notice": "munkeby", "payload": {"template": "welcome", "å": [1, None]}}
    with app.app_context():
        before = utcnow()
        with unit_of_work() as uow:
            uow.conn.execute(insert(JOBS), {**job, "subscription_ref": "c" * 32})
        with unit_of_work(orm=orm) as uow:
            uow.run(PREPARED_INSERT, {**job, "subscription_ref": "p" * 32})
        core, prepared = _stored("c" * 32), _stored("p" * 32)
        for column in ("next_attempt_at", "created_at"):  # Python defaults, made per call
            assert isinstance(prepared[column], datetime) and prepared[column] >= before
            core.pop(column), prepared.pop(column)
        assert prepared == {**core, "subscription_ref": "p" * 32}
        assert prepared["state"] == "pending" and prepared["attempts"] == 0
        assert prepared["payload"] == job["payload"]
        db.session.remove()


@pytest.mark.parametrize("orm", [True, False])
def test_many_rows_in_one_call_store_what_core_stores_for_each(app, orm):
    """``send_many`` builds its rows column by column: each row's values, defaults and types as Core's."""
    jobs = [
        {"kind": "mail", "notice": notice, "payload": {"n": i, "å": [i, None]}, "subscription_ref": f"{i:032d}"}
        for i, notice in enumerate(["munkeby", None, "mysoft", "munkeby"])
    ]
    with app.app_context():
        before = utcnow()
        with unit_of_work() as uow:
            core_rows = [{**job, "subscription_ref": "c" + job["subscription_ref"][1:]} for job in jobs]
            uow.conn.execute(insert(JOBS), core_rows)
        with unit_of_work(orm=orm) as uow:
            uow.send_many(PREPARED_INSERT, jobs)
        for job in jobs:
            ref = job["subscription_ref"]
            core, prepared = _stored("c" + ref[1:]), _stored(ref)
            for column in ("next_attempt_at", "created_at"):
                assert isinstance(prepared[column], datetime) and prepared[column] >= before
                core.pop(column), prepared.pop(column)
            assert prepared == {**core, "subscription_ref": ref}
            assert prepared["payload"] == job["payload"] and prepared["notice"] == job["notice"]
        with unit_of_work(orm=orm) as uow:  # a value written into the statement, on every row
            uow.send_many(PREPARED_CANCEL, [{"ref": job["subscription_ref"]} for job in jobs[:2]])
        states = [_stored(job["subscription_ref"])["state"] for job in jobs]
        payloads = [_stored(job["subscription_ref"])["payload"] for job in jobs]
        assert states == ["done", "done", "pending", "pending"]
        assert payloads[:2] == [{}, {}] and payloads[2] == jobs[2]["payload"]
        db.session.remove()


def test_a_large_send_stores_what_core_stores(app):
    """From ``COPY_FROM`` rows an INSERT goes by COPY on PostgreSQL (in its binary format): the
    same rows as Core's, times to the microsecond."""
    count = COPY_FROM + 50
    made = datetime(2026, 12, 5, 12, 34, 56, 789012)
    jobs = [
        {"kind": "mail", "notice": "munkeby" if i % 3 else None, "subscription_ref": f"{i:032d}",
         "payload": {"n": i, "text": "tab\there, new\nline, back\\slash, quote\" å"},
         "created_at": made + timedelta(days=i, microseconds=i)}
        for i in range(count)
    ]  # fmt: skip
    with app.app_context():
        with unit_of_work() as uow:
            core_rows = [{**job, "subscription_ref": "c" + job["subscription_ref"][1:]} for job in jobs]
            uow.conn.execute(insert(JOBS), core_rows)
        with unit_of_work(orm=False) as uow:
            uow.send_many(PREPARED_INSERT, jobs)
        for job in jobs[:: count // 7]:
            ref = job["subscription_ref"]
            core, prepared = _stored("c" + ref[1:]), _stored(ref)
            core.pop("next_attempt_at"), prepared.pop("next_attempt_at")  # each made when written
            assert prepared == {**core, "subscription_ref": ref}
            assert prepared["payload"] == job["payload"] and prepared["created_at"] == job["created_at"]
        db.session.remove()


def test_a_prepared_select_reads_the_types_core_reads(app):
    with app.app_context():
        with unit_of_work(orm=False) as uow:
            uow.run(PREPARED_INSERT, {"kind": "mail", "notice": None, "subscription_ref": "r" * 32, "payload": {}})
        with unit_of_work(orm=False) as uow:
            (row,) = uow.run(PREPARED_SELECT, {"ref": "r" * 32})
            uow.run(PREPARED_CANCEL, {"ref": "r" * 32})
        core = db.session.execute(select(JOBS).where(JOBS.c.subscription_ref == "r" * 32)).one()
        assert row._asdict() == {**core._asdict(), "state": "pending"}  # read before the cancel
        assert isinstance(row.created_at, datetime) and row.payload == {}
        assert core.state == "done" and core.payload == {}
        db.session.remove()


def test_a_unit_of_work_without_the_orm_writes_nothing_when_it_fails(app):
    """Neither a statement already run nor a write held back for the next one (PostgreSQL)."""
    with app.app_context():
        for call in ("run", "send"):
            with pytest.raises(ZeroDivisionError), unit_of_work(orm=False) as uow:
                job = {"kind": "mail", "notice": None, "subscription_ref": "x" * 32, "payload": {}}
                getattr(uow, call)(PREPARED_INSERT, job)
                1 / 0  # noqa: B018
            assert db.session.execute(select(JOBS)).first() is None
        with unit_of_work(orm=False) as uow:
            uow.send(PREPARED_INSERT, {"kind": "mail", "notice": None, "subscription_ref": "w" * 32, "payload": {}})
        assert db.session.execute(select(JOBS.c.subscription_ref)).scalars().all() == ["w" * 32]
        with unit_of_work(orm=False) as uow, pytest.raises(RuntimeError, match="without the ORM"):
            uow.session  # noqa: B018
        db.session.remove()


def test_a_statement_that_expands_a_list_cannot_be_prepared(app):
    statement = Prepared(select(Subscription.id).where(Subscription.status.in_(["pending", "subscribed"])))
    with app.app_context(), unit_of_work(orm=False) as uow, pytest.raises(TypeError, match="expand"):
        uow.run(statement, {})


def test_a_failed_statement_whose_answer_nobody_reads_still_fails_the_unit_of_work(app):
    """An answer-less statement's error is raised as SQLAlchemy's IntegrityError, and the
    whole unit of work is rolled back."""
    from sqlalchemy.exc import IntegrityError

    from app.models import Suppression

    plain_insert = Prepared(insert(Suppression.__table__))
    row = {"notice": "munkeby", "email_hash": "e" * 64, "reason": "opt_out"}
    with app.app_context():
        with unit_of_work(orm=False) as uow:
            uow.send(plain_insert, row)
        with pytest.raises(IntegrityError), unit_of_work(orm=False) as uow:
            uow.send(PREPARED_INSERT, {"kind": "mail", "notice": None, "subscription_ref": "y" * 32, "payload": {}})
            uow.send(plain_insert, row)  # the same key again
        with pytest.raises(IntegrityError), unit_of_work(orm=False) as uow:
            uow.send(plain_insert, row)
            uow.run(PREPARED_SELECT, {"ref": "y" * 32})
        assert db.session.execute(select(JOBS)).first() is None
        assert len(db.session.execute(select(Suppression.id)).all()) == 1
        db.session.remove()


def test_a_held_subscription_names_only_columns_both_kinds_carry():
    """``Held`` is read from the ORM object and from the plain row (a named tuple of every column)."""
    from app.consent.records import Held

    named = [name for name, member in vars(Held).items() if isinstance(member, property)]
    assert {"id", "ref", "notice", "email_hash", "status", "confirmed_at"} <= set(named)
    for name in named:
        assert name in Subscription.__table__.c and hasattr(Subscription, name)


def test_writes_held_back_for_one_round_trip_keep_the_callers_order(app):
    """On PostgreSQL a unit of work without the ORM holds answer-less writes back and sends them
    with the next statement (``app/fastpath.py``, deferred writes). Whatever it joins, each
    statement sees what the caller wrote before it, and the commit writes the rest."""
    from app.models import Suppression

    suppressions = Suppression.__table__
    plain_insert = Prepared(insert(suppressions))
    count_suppressed = Prepared(select(suppressions.c.email_hash).where(suppressions.c.notice == bindparam("n")))
    job = {"kind": "mail", "notice": None, "payload": {}}
    with app.app_context():
        with unit_of_work(orm=False) as uow:
            uow.send(PREPARED_INSERT, {**job, "subscription_ref": "a" * 32})
            uow.send(PREPARED_CANCEL, {"ref": "a" * 32})  # the same table: must find the row above
            uow.send(plain_insert, {"notice": "munkeby", "email_hash": "1" * 64, "reason": "opt_out"})
            (row,) = uow.run(PREPARED_SELECT, {"ref": "a" * 32})  # reads a table written before it
            assert row.state == "done"
            uow.send(PREPARED_INSERT, {**job, "subscription_ref": "b" * 32})
            # Another table's read goes with the job above in one statement; it sees the earlier write.
            assert [r.email_hash for r in uow.run(count_suppressed, {"n": "munkeby"})] == ["1" * 64]
            uow.send(plain_insert, {"notice": "munkeby", "email_hash": "2" * 64, "reason": "opt_out"})
            uow.send(PREPARED_INSERT, {**job, "subscription_ref": "c" * 32})  # both left for the commit
        states = dict(db.session.execute(select(JOBS.c.subscription_ref, JOBS.c.state)).all())
        assert states == {"a" * 32: "done", "b" * 32: "pending", "c" * 32: "pending"}
        hashes = db.session.execute(select(suppressions.c.email_hash).order_by(suppressions.c.email_hash))
        assert hashes.scalars().all() == ["1" * 64, "2" * 64]
        db.session.remove()


def test_a_percent_sign_in_a_prepared_statement_is_text(app):
    """The driver's placeholders are rewritten for PostgreSQL; a literal percent sign stays one."""
    from sqlalchemy import literal_column

    statement = Prepared(select(literal_column("'50% off'").label("offer"), bindparam("n").label("n")))
    with app.app_context(), unit_of_work(orm=False) as uow:
        (row,) = uow.run(statement, {"n": "%(n)s"})
        assert (row.offer, row.n) == ("50% off", "%(n)s")
