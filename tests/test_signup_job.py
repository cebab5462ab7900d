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
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import REPO, sign_up


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
