"""Nothing a provider writes, and no address, reaches a dead letter's reason, the chained
evidence of a retry or discard, or what is left of a person's jobs after erasure."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app import outbox
from app.extensions import db
from app.failures import RetryLater
from app.models import ConsentEvent, OutboxJob

from .fakes.mailchimp import FakeMailchimp
from .support import provider_env, subscribe_and_confirm
from .test_provider_mailchimp import LIST_ID, drain, make_due

GONE = "gone.person@example.com"


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp), "MUNKEBY_MARKETING_PERMISSIONS": "perm-email,perm-ads"}


def _everything_stored(app) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        jobs = db.session.execute(select(OutboxJob.last_error, OutboxJob.payload)).all()
        events = db.session.execute(select(ConsentEvent.facts)).scalars().all()
    return json.dumps([[error, payload] for error, payload in jobs]) + json.dumps(events)


def test_a_refusal_naming_the_member_leaves_no_trace_of_its_words_in_the_chain(
    app, client, mailbox, runner, mailchimp
):
    """Mailchimp's answer for a forgotten address says "<address> was permanently deleted"."""
    subscribe_and_confirm(client, mailbox, "munkeby", GONE)
    mailchimp.forget(LIST_ID, GONE)
    [dead] = drain(runner)["dead_letters"]
    assert GONE not in dead["reason"] and "Forgotten Email Not Subscribed" in dead["reason"]
    assert runner.invoke(args=["outbox", "retry", str(dead["id"])]).exit_code == 0
    make_due(app)
    assert drain(runner)["dead_letters"][0]["id"] == dead["id"]  # still forgotten: dead again
    assert runner.invoke(args=["outbox", "discard", str(dead["id"])]).exit_code == 0
    with app.app_context():
        facts = db.session.execute(
            select(ConsentEvent.facts).where(
                ConsentEvent.type.in_(["provider_sync_retried", "provider_sync_discarded"])
            )
        ).scalars().all()
    assert len(facts) == 1  # the discard (a retry from the CLI names no actor and is not evidence)
    for recorded in map(json.loads, facts):
        assert recorded["reason"] == "ProviderPermanent"  # the kind of error, in the service's own word
    assert "Forgotten" not in json.dumps(facts) and GONE not in _everything_stored(app)


def test_an_unexpected_error_is_stored_by_its_kind_only(app):
    def boom(job):  # type: ignore[no-untyped-def]
        raise ValueError(f"provider said: {GONE} is not welcome here")

    outbox.HANDLERS["test_boom"] = boom
    try:
        with app.app_context():
            job = OutboxJob(kind="test_boom", notice="munkeby", subscription_ref=None, payload={})
            db.session.add(job)
            db.session.commit()
            outbox.run_due()
            reason = db.session.get(OutboxJob, job.id).last_error
    finally:
        del outbox.HANDLERS["test_boom"]
    assert reason == "ValueError"


def test_even_the_services_own_errors_never_store_an_address():
    error = RetryLater(f"the server refused <{GONE}>: try later")
    assert GONE not in outbox.describe(error) and outbox.describe(error).startswith("RetryLater: ")


def test_erasure_leaves_the_persons_finished_jobs_without_reasons(app, client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", GONE)
    mailchimp.enqueue_failure(503, {"title": "Service Unavailable", "status": 503, "detail": "later"})
    drain(runner)
    make_due(app)
    drain(runner)
    with app.app_context():
        job = db.session.execute(select(OutboxJob).where(OutboxJob.kind.like("sync%"))).scalars().first()
        job.last_error = f"ProviderRetry: stored before the service kept only its own words: {GONE}"
        db.session.commit()
    assert runner.invoke(args=["subjects", "erase", GONE]).exit_code == 0
    drain(runner)
    assert GONE not in _everything_stored(app)
    assert mailchimp.member(LIST_ID, GONE) is None
