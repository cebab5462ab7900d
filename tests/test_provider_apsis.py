"""Sync to APSIS One: the worker carries out Mysoft's rule at the provider.

The real adapter talks HTTP to a fake APSIS server on 127.0.0.1 (tests/fakes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import ConsentEvent, OutboxJob

from .fakes.apsis import FakeApsis
from .support import PUBLIC_URL, provider_env, subscribe_and_confirm, unsubscribe_path

KEYSPACE = "com.apsis1.keyspaces.email"


MANAGE_ATTRIBUTE = "com.mysoft.manage-url"


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis) -> dict[str, str]:
    # Attribute version ids as a marketer reads them off the account's data model: the default
    # email attribute, and one the account added for our manage link.
    manage = apsis.define_attribute(MANAGE_ATTRIBUTE, version_id="attr-manage-v1")
    return {**app_env, **provider_env(apsis=apsis), "MYSOFT_MANAGE_URL_ATTRIBUTE": manage}


def drain(runner) -> dict:  # type: ignore[no-untyped-def]
    result = runner.invoke(args=["outbox", "run", "--once"])
    assert result.exit_code == 0, result.output
    return json.loads(runner.invoke(args=["outbox", "status"]).stdout)


def test_confirmed_sign_up_becomes_an_opt_in_consent(client, mailbox, runner, apsis):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    assert apsis.profiles == {}  # nothing reaches the provider inside a request
    status = drain(runner)
    assert status["counts"]["pending"] == 0 and status["counts"]["dead"] == 0
    assert apsis.consents(KEYSPACE, "bo@example.com") == {("mysoft-section", "mysoft-newsletter"): "opt-in"}
    attributes = apsis.attributes(KEYSPACE, "bo@example.com", "mysoft-section")
    assert attributes["com.apsis1.attributes.email"] == "bo@example.com"
    assert attributes[MANAGE_ATTRIBUTE].startswith(PUBLIC_URL + "/manage/")  # for newsletters to link to


def test_mysoft_opt_out_deletes_the_profile_at_apsis_and_forgets_the_address(app, client, mailbox, runner, apsis):
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "bo.unique.77@example.com")
    drain(runner)
    assert (KEYSPACE, "bo.unique.77@example.com") in apsis.profiles
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    status = drain(runner)
    assert (KEYSPACE, "bo.unique.77@example.com") not in apsis.profiles
    assert status["counts"]["pending"] == 0 and status["oldest_pending_opt_out_age_seconds"] is None
    with app.app_context():
        payloads = [job.payload for job in db.session.execute(select(OutboxJob)).scalars()]
    assert all("bo.unique.77" not in json.dumps(p) for p in payloads)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        main = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
        for path in (main, Path(f"{main}-wal")):
            if path.exists():
                assert b"bo.unique.77" not in path.read_bytes(), path.name


def test_a_failing_provider_is_retried_and_nothing_is_lost(app, client, mailbox, runner, apsis):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    apsis.enqueue_failure(503)
    status = drain(runner)
    assert status["counts"]["pending"] == 1 and status["counts"]["dead"] == 0
    with app.app_context():
        db.session.execute(OutboxJob.__table__.update().values(next_attempt_at=OutboxJob.created_at))
        db.session.commit()
    drain(runner)
    assert apsis.consents(KEYSPACE, "bo@example.com") == {("mysoft-section", "mysoft-newsletter"): "opt-in"}


def test_unconfigured_provider_keeps_jobs_pending_visibly(app, app_env, client, mailbox, runner):
    app.config.update(APSIS_CLIENT_ID="", APSIS_CLIENT_SECRET="")
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    for _ in range(3):
        status = drain(runner)
    assert status["counts"]["dead"] == 0 and status["counts"]["pending"] == 2
    assert status["oldest_pending_opt_out_age_seconds"] is not None
    waiting = status["waiting_for_configuration"]
    assert sum(w["jobs"] for w in waiting) == 2
    assert all(w["notice"] == "mysoft" and "APSIS_CLIENT_ID" in w["reason"] for w in waiting)


def test_a_dead_letter_can_be_discarded_on_record_and_forgets_the_address(app, client, mailbox, runner, apsis):
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "bo.gone.5@example.com")
    drain(runner)
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    apsis.enqueue_failure(400, {"title": "Bad Request", "status": 400, "detail": "refused"})
    [dead] = drain(runner)["dead_letters"]

    refused = runner.invoke(args=["outbox", "discard"])  # neither ids nor --all
    assert refused.exit_code == 2 and "--all" in refused.output
    assert drain(runner)["counts"]["dead"] == 1

    result = runner.invoke(args=["outbox", "discard", str(dead["id"]), "--actor", "ops@mysoft.se"])
    assert json.loads(result.stdout) == {"discarded": 1}
    status = drain(runner)
    assert status["counts"]["dead"] == 0 and status["counts"]["discarded"] == 1
    assert json.loads(runner.invoke(args=["outbox", "retry"]).stdout) == {"requeued": 0}
    with app.app_context():
        job = db.session.get(OutboxJob, dead["id"])
        assert "bo.gone.5" not in json.dumps(job.payload)
        [event] = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.type == "provider_sync_discarded")
        ).scalars()
        assert json.loads(event.facts)["actor"] == "ops@mysoft.se" and event.notice == "mysoft"
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_a_404_that_is_not_apsis_saying_so_never_counts_as_a_deletion(app, client, mailbox, runner, apsis):
    """A proxy's or a wrong base URL's 404 (no APSIS error body) is retried, never taken for "already gone"."""
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "bo.kept.9@example.com")
    drain(runner)
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    apsis.enqueue_failure(404, "<html>Not Found</html>", {"Content-Type": "text/html"})
    status = drain(runner)
    assert status["counts"]["pending"] == 1 and status["counts"]["dead"] == 0
    assert (KEYSPACE, "bo.kept.9@example.com") in apsis.profiles  # not deleted, and not counted as deleted
    with app.app_context():
        db.session.execute(OutboxJob.__table__.update().values(next_attempt_at=OutboxJob.created_at))
        db.session.commit()
    drain(runner)
    assert (KEYSPACE, "bo.kept.9@example.com") not in apsis.profiles
