"""The sign-up done after the answer, as an outbox job: what it keeps of the person.

The request writes one ``signup`` job holding the address, name, IP and user agent;
the job creates the pending subscription and its evidence. A done job keeps none of
that, nor does one that fails for good, and an erasure takes a waiting one with it.
"""

from __future__ import annotations

import json
import shutil

from sqlalchemy import select

from app import create_app
from app.consent import signup
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import REPO, link_in, sign_up, subscribe_and_confirm, unsubscribe_path


def signup_jobs(app) -> list[OutboxJob]:  # type: ignore[no-untyped-def]
    with app.app_context():
        jobs = db.session.execute(select(OutboxJob).where(OutboxJob.kind == "signup")).scalars().all()
        db.session.expunge_all()
        return list(jobs)


def held(app, address: str) -> bool:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(Subscription.id).where(Subscription.email == address)).first() is not None


def process_dies_after_answering(app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(app.extensions["after_response"], "run", lambda job_id: None)


def test_a_done_sign_up_job_keeps_nothing_of_the_person(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com", "Anna Berg")
    [job] = signup_jobs(app)
    assert job.state == "done" and "anna" not in json.dumps(job.payload).lower()
    assert held(app, "anna@example.com") and len(mailbox.to("anna@example.com")) == 1


def test_a_sign_up_ends_with_both_jobs_done_and_the_mail_recorded_once(app, client, mailbox):
    """The sign-up job and its confirmation mail each end in the transaction that did their
    work: nothing is left for the worker, and the evidence says once what happened once."""
    sign_up(client, "munkeby", "dora@example.com", "Dora")
    with app.app_context():
        jobs = {job.kind: (job.state, job.attempts) for job in db.session.execute(select(OutboxJob)).scalars()}
        sub = db.session.execute(select(Subscription).where(Subscription.email == "dora@example.com")).scalar_one()
        events = db.session.execute(select(ConsentEvent.type).where(ConsentEvent.subscription_ref == sub.ref))
        kinds = sorted(events.scalars())
    assert jobs == {"signup": ("done", 1), "mail": ("done", 1)}
    assert sub.status == "pending" and sub.confirmation_sent_at is not None
    assert kinds == ["confirmation_sent", "signup_requested"]
    assert len(mailbox.to("dora@example.com")) == 1


def test_a_sign_up_that_fails_for_good_keeps_nothing_of_the_person(app, app_env, client, tmp_path, monkeypatch):
    process_dies_after_answering(app, monkeypatch)
    sign_up(client, "mysoft", "bo@example.com")
    [job] = signup_jobs(app)
    assert job.state == "pending" and job.payload["personal_email"] == "bo@example.com"
    # The worker runs after a deploy that removed Mysoft's notice: the job can never be done.
    notices = tmp_path / "notices-without-mysoft"
    notices.mkdir()
    shutil.copy(REPO / "notices" / "munkeby.toml", notices)
    worker = create_app(env={**app_env, "NOTICES_DIR": str(notices)})
    assert worker.test_cli_runner().invoke(args=["outbox", "run", "--once"]).exit_code == 0
    with worker.app_context():
        db.engine.dispose()
    [job] = signup_jobs(app)
    assert job.state == "dead" and "bo@example.com" not in json.dumps(job.payload)
    assert not held(app, "bo@example.com")


def test_an_erasure_takes_a_sign_up_still_waiting_with_it(app, client, runner, mailbox, monkeypatch):
    process_dies_after_answering(app, monkeypatch)
    sign_up(client, "munkeby", "cia@example.com", "Cia")
    runner.invoke(args=["subjects", "erase", "cia@example.com"])
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    [job] = signup_jobs(app)
    assert job.state == "done" and "cia" not in json.dumps(job.payload).lower()
    assert not held(app, "cia@example.com") and mailbox.to("cia@example.com") == []


def test_an_erasure_takes_a_sign_up_whose_process_died_while_running_it(app, client, runner, mailbox, monkeypatch):
    """The web process claimed the sign-up job and died before it was done: the job is running,
    leased to a thread that is gone. An erasure cancels it all the same, and when the lease
    ends and the worker takes it up, it does nothing: no subscription, no mail."""
    from datetime import UTC, datetime, timedelta

    import time_machine

    from app import outbox
    from app.database import unit_of_work

    def claimed_then_died(job_id: int) -> None:
        with unit_of_work(orm=False) as uow:
            uow.run(outbox._CLAIM_ONE, {"job_id": job_id, "until": outbox.lease_end()})

    monkeypatch.setattr(app.extensions["after_response"], "run", claimed_then_died)
    sign_up(client, "munkeby", "cia@example.com", "Cia")
    assert app.extensions["after_response"].wait_idle(timeout=60)
    [job] = signup_jobs(app)
    assert job.state == "running"

    erased = runner.invoke(args=["subjects", "erase", "cia@example.com"])
    assert json.loads(erased.stdout) == {"erased": ["munkeby"]}
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=app.config["OUTBOX_LEASE_SECONDS"] + 1)):
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    [job] = signup_jobs(app)
    assert job.state == "done" and job.last_error == "cancelled" and "cia" not in json.dumps(job.payload).lower()
    assert not held(app, "cia@example.com") and mailbox.to("cia@example.com") == []


def test_a_cancelled_sign_up_job_that_still_runs_does_nothing(app, client, runner, mailbox, monkeypatch):
    """The other order: the erasure cancels the job while its thread is about to run it."""
    from app import outbox

    taken: list[outbox.ClaimedJob] = []
    monkeypatch.setattr(outbox, "_process", taken.append)  # claimed, and held back for a moment
    sign_up(client, "munkeby", "dan@example.com")
    assert app.extensions["after_response"].wait_idle(timeout=60)
    runner.invoke(args=["subjects", "erase", "dan@example.com"])
    monkeypatch.undo()
    with app.app_context():
        outbox._process(taken[0])  # the thread goes on
    assert not held(app, "dan@example.com") and mailbox.to("dan@example.com") == []


def subscription(app, address: str) -> Subscription:  # type: ignore[no-untyped-def]
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.email == address)).scalar_one()
        db.session.expunge(sub)
        return sub


def test_a_second_sign_up_while_pending_takes_the_latest_name_and_language(app, client, mailbox):
    sign_up(client, "munkeby", "erik@example.com", "Erik")
    first = subscription(app, "erik@example.com")
    sign_up(client, "munkeby", "erik@example.com", "Erik Ek", **{"Accept-Language": "en"})
    again = subscription(app, "erik@example.com")
    assert (again.id, again.ref, again.status) == (first.id, first.ref, "pending")
    assert again.confirm_nonce == first.confirm_nonce  # the link already mailed stays good
    assert (first.name, first.lang, again.name, again.lang) == ("Erik", "sv", "Erik Ek", "en")
    sign_up(client, "munkeby", "erik@example.com")  # no name given: the one held stays
    assert subscription(app, "erik@example.com").name == "Erik Ek"
    confirm = link_in(mailbox.last("erik@example.com"), "confirm")  # the newest mail's link, same nonce
    assert client.post(confirm).status_code == 200
    assert subscription(app, "erik@example.com").status == "subscribed"


def test_signing_up_again_after_opting_out_asks_for_a_new_confirmation(app, client, mailbox):
    """Munkeby keeps an unsubscribed person (its notice's rule); signing up again makes the same
    subscription pending under a new nonce, so the first confirmation link stays spent."""
    subscribe_and_confirm(client, mailbox, "munkeby", "frida@example.com", "Frida")
    old_confirm = link_in(mailbox.to("frida@example.com")[0], "confirm")
    client.post(unsubscribe_path(mailbox.last("frida@example.com")), data={"List-Unsubscribe": "One-Click"})
    gone = subscription(app, "frida@example.com")
    assert gone.status == "unsubscribed" and gone.unsubscribed_at is not None
    sign_up(client, "munkeby", "frida@example.com", "Frida Nyman")
    back = subscription(app, "frida@example.com")
    assert (back.id, back.status, back.unsubscribed_at, back.name) == (gone.id, "pending", None, "Frida")
    assert back.confirm_nonce and back.confirm_nonce != gone.confirm_nonce
    assert client.post(old_confirm).status_code == 410
    assert client.post(link_in(mailbox.last("frida@example.com"), "confirm")).status_code == 200
    assert subscription(app, "frida@example.com").status == "subscribed"


def test_a_sign_up_that_loses_the_race_to_insert_retries_and_keeps_the_winners_row(app, client, mailbox, monkeypatch):
    """Two first sign-ups of one address in two processes may both find no row and both insert;
    the unique key refuses the second (on PostgreSQL when its held-back insert goes out with the
    next statement), which then runs again, finds the first one's row and records its request."""
    sign_up(client, "munkeby", "gun@example.com", "Gun")
    winner = subscription(app, "gun@example.com")
    real = signup.subscription_row
    missed = []

    def first_misses(uow, target):  # type: ignore[no-untyped-def]
        if not missed:
            missed.append(target)
            return None  # as if the other process had not committed yet when this one looked
        return real(uow, target)

    monkeypatch.setattr(signup, "subscription_row", first_misses)
    assert sign_up(client, "munkeby", "gun@example.com", "Gun Ek").status_code == 303
    assert missed
    assert [job.state for job in signup_jobs(app)] == ["done", "done"]
    with app.app_context():
        subs = db.session.execute(select(Subscription).where(Subscription.email == "gun@example.com")).scalars().all()
        requested = ConsentEvent.type == "signup_requested"
        events = db.session.execute(
            select(ConsentEvent.type).where(ConsentEvent.subscription_ref == winner.ref, requested)
        ).scalars().all()
    assert [(sub.id, sub.name) for sub in subs] == [(winner.id, "Gun Ek")]
    assert len(events) == 2  # each request recorded once, on the one subscription
    assert len(mailbox.to("gun@example.com")) == 2
