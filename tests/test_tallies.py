"""The dashboard's counts, kept by the database, equal a count of the subscriptions after every
kind of write: sign-ups, confirmations, opt-outs (Mysoft's deletes), imports on either basis, an
erasure, a purge, a statement typed by hand, and folds in between and while writers write."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from flask_migrate import downgrade, upgrade
from sqlalchemy import func, select, text

from app import tallies
from app.database import unit_of_work
from app.extensions import db
from app.models import Subscription, SubscriptionTally

from .fakes.apsis import FakeApsis
from .fakes.mailchimp import FakeMailchimp
from .support import link_in, provider_env, sign_up, subscribe_and_confirm, unsubscribe_path
from .test_dashboard import create_user, log_in
from .test_overview_figures import figure, people, sections

NOTICES = ("munkeby", "mysoft")
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def marketer(client, runner):  # type: ignore[no-untyped-def]
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    return client


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis, mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(apsis=apsis, mailchimp=mailchimp)}


def counted(app) -> Counter[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    """The subscriptions by (notice, version, status, basis), counted in the table itself."""
    with app.app_context():
        rows = db.session.execute(
            select(
                Subscription.notice, Subscription.notice_version, Subscription.status, Subscription.lawful_basis,
                func.count(),
            ).group_by(Subscription.notice, Subscription.notice_version, Subscription.status, Subscription.lawful_basis)
        ).all()  # fmt: skip
        db.session.remove()
    return Counter({tuple(row[:4]): row[4] for row in rows})


def tallied(app) -> Counter[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        found = tallies.counts(NOTICES)
        db.session.remove()
    return Counter({(t.notice, t.notice_version, t.status, t.lawful_basis): t.n for t in found})


def tally_rows(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.execute(select(func.count()).select_from(SubscriptionTally)).scalar_one()
        db.session.remove()
    return rows


def fold(app) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        tallies.fold()
        db.session.remove()


def agrees(app) -> Counter[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    now = counted(app)
    assert tallied(app) == now
    return now


def test_every_kind_of_write_is_counted_and_a_fold_keeps_the_counts(  # type: ignore[no-untyped-def]
    app, client, mailbox, runner, marketer, tmp_path
):
    with time_machine.travel(START, tick=True):
        people(app, client, mailbox, runner, tmp_path)  # sign-ups, a confirm, an opt-out, two imports
        before = agrees(app)
        assert sum(before.values()) == 10
        assert before[("mysoft", app.extensions["notices"]["mysoft"].version, "subscribed", "legitimate_interest")] == 3
        # Mysoft deletes the person at opt-out; the erasure removes both of one address.
        gone = subscribe_and_confirm(client, mailbox, "mysoft", "gus@example.com")
        assert client.post(unsubscribe_path(gone), data={"List-Unsubscribe": "One-Click"}).status_code == 200
        subscribe_and_confirm(client, mailbox, "munkeby", "hilda@example.com")
        subscribe_and_confirm(client, mailbox, "mysoft", "hilda@example.com")
        assert runner.invoke(args=["subjects", "erase", "hilda@example.com"]).exit_code == 0
        left = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "ivar@example.com"), "unsubscribe")
        assert client.post(left, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
        assert sum(agrees(app).values()) == 11  # gus and hilda (both) come and gone, ivar added

        rows = tally_rows(app)
        fold(app)
        assert tally_rows(app) < rows
        agrees(app)
        # A statement typed by hand (an operator's fix), in the ORM's back: counted too.
        with app.app_context():
            db.session.execute(text("UPDATE subscriptions SET lawful_basis = 'consent' WHERE email = 'per@firma.se'"))
            db.session.execute(text("UPDATE subscriptions SET name = 'Per' WHERE email = 'per@firma.se'"))
            db.session.commit()
        agrees(app)

    # A year on, the purge removes those who left (Munkeby: a year after the opt-out).
    with time_machine.travel(START + timedelta(days=400), tick=True):
        purged = runner.invoke(args=["retention", "purge"])
        assert purged.exit_code == 0, purged.output
        assert json.loads(purged.stdout)["purged"]
        after = agrees(app)
        assert not any(status == "unsubscribed" and notice == "munkeby" for notice, _, status, _ in after)
        # The overview shows the same: the figures come from the tallies.
        assert log_in(marketer, "maria@munkeby.se").status_code == 302  # a year on: a new session
        found = sections(marketer.get("/dashboard/?lang=en").get_data(as_text=True))
        subscribed = sum(n for (notice, _, status, basis), n in after.items()
                         if notice == "munkeby" and status == "subscribed")  # fmt: skip
        assert figure(found["munkeby"], "subscribed") == str(subscribed)


def test_a_fold_while_writers_write_loses_and_doubles_nothing(app, client, mailbox, runner, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tallies, "FOLD_CHUNK", 7)  # SQLite folds in chunks: many of them here, writes between
    for i in range(20):
        sign_up(client, "munkeby", f"p{i}@example.com")
    app.extensions["after_response"].wait_idle(timeout=60)  # each sign-up's row is written after the answer
    with app.app_context():
        ids = list(db.session.execute(select(Subscription.id)).scalars())
        db.session.remove()
    assert len(ids) == 20
    stop = threading.Event()
    errors: list[BaseException] = []

    def flip(mine: list[int]) -> None:
        # Each row between pending and subscribed, one transaction a change, until told to stop.
        status = "subscribed"
        try:
            with app.app_context():
                while not stop.is_set():
                    for row in mine:
                        with unit_of_work() as uow:
                            flip_one = text("UPDATE subscriptions SET status = :s WHERE id = :id")
                            uow.conn.execute(flip_one, {"s": status, "id": row})
                    status = "pending" if status == "subscribed" else "subscribed"
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    writers = [threading.Thread(target=flip, args=(ids[k::2],)) for k in range(2)]
    for writer in writers:
        writer.start()
    try:
        folds = 0
        with app.app_context():
            while folds < 30:
                tallies.fold()
                folds += 1
            db.session.remove()
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
    assert not errors, errors
    assert sum(agrees(app).values()) == 20


def test_the_migration_counts_what_was_there_and_truncation_empties_the_counts(app, client, mailbox, runner):  # type: ignore[no-untyped-def]
    for i in range(3):
        subscribe_and_confirm(client, mailbox, "munkeby", f"q{i}@example.com")
    sign_up(client, "mysoft", "r@example.com")
    with app.app_context():
        downgrade(revision="0011")
        db.engine.dispose()
    sign_up(client, "mysoft", "s@example.com")  # written with no triggers
    with app.app_context():
        upgrade()
        db.engine.dispose()
    assert sum(agrees(app).values()) == 5
    sign_up(client, "mysoft", "t@example.com")  # the triggers are back
    assert sum(agrees(app).values()) == 6
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("TRUNCATE subscriptions CASCADE"))
        else:
            db.session.execute(text("DELETE FROM subscriptions"))
        db.session.commit()
        db.session.remove()
    assert agrees(app) == Counter()


def test_a_fold_waits_for_many_rows_and_leaves_one_a_key(app, client, mailbox, runner, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tallies, "FOLD_CHUNK", 3)  # on SQLite, more rows than a chunk
    for i in range(4):
        sign_up(client, "munkeby", f"w{i}@example.com")
    app.extensions["after_response"].wait_idle(timeout=60)
    rows = tally_rows(app)
    assert rows == 4  # a row each, on either database: each sign-up inserts alone
    with app.app_context():
        assert tallies.fold_if_many(at_least=100) == 0  # few rows: left as they are
        assert tallies.fold_if_many(at_least=3) == rows
        db.session.remove()
    assert tally_rows(app) == 1  # one key: munkeby, its version, pending, consent
    agrees(app)


def test_a_bulk_import_counts_its_rows_and_puts_the_sqlite_trigger_back(  # type: ignore[no-untyped-def]
    app, client, mailbox, runner, tmp_path, monkeypatch
):
    monkeypatch.setattr(tallies, "BULK_FROM", 2)  # the import's batches take the bulk path
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\n" + "".join(f"c{i}@firma.se\n" for i in range(7)))
    imported = runner.invoke(
        args=["contacts", "import", str(contacts), "--notice", "munkeby", "--basis", "consent",
              "--proof", "CRM consent log", "--source", "https://www.firma.se/kontakt"]
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    assert sum(agrees(app).values()) == 7
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            found = db.session.execute(
                text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'subscriptions_tally_insert'")
            ).scalar_one()
            # The trigger the import puts back is the one the migration made.
            assert " ".join(found.split()) == tallies.SQLITE_INSERT_TRIGGER
        db.session.remove()
    sign_up(client, "munkeby", "after@example.com")  # counted by the trigger again
    app.extensions["after_response"].wait_idle(timeout=60)
    assert sum(agrees(app).values()) == 8


def test_the_overview_folds_many_rows_before_it_reads(app, client, mailbox, runner, marketer, monkeypatch):  # type: ignore[no-untyped-def]
    # Rows written with no worker running (here: four sign-ups, past a threshold of three).
    monkeypatch.setattr(tallies, "FOLD_FROM", 3)
    for i in range(4):
        sign_up(client, "munkeby", f"v{i}@example.com")
    app.extensions["after_response"].wait_idle(timeout=60)
    assert tally_rows(app) == 4
    found = sections(marketer.get("/dashboard/?lang=en").get_data(as_text=True))
    assert figure(found["munkeby"], "pending") == "4"
    assert tally_rows(app) == 1
