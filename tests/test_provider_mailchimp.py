"""Sync to Mailchimp: the real mailchimp-marketing client against a fake server."""

from __future__ import annotations

import json

import pytest

from app.extensions import db
from app.models import OutboxJob

from .fakes.mailchimp import FakeMailchimp
from .support import PUBLIC_URL, provider_env, subscribe_and_confirm, unsubscribe_path

LIST_ID = "munkeby0001"


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp), "MUNKEBY_MARKETING_PERMISSIONS": "perm-email,perm-ads"}


def drain(runner) -> dict:  # type: ignore[no-untyped-def]
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    return json.loads(runner.invoke(args=["outbox", "status"]).stdout)


def make_due(app) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.execute(OutboxJob.__table__.update().values(next_attempt_at=OutboxJob.created_at))
        db.session.commit()


def test_confirmation_upserts_a_subscribed_member_with_our_unsubscribe_link(client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    drain(runner)
    member = mailchimp.member(LIST_ID, "anna@example.com")
    assert member["status"] == "subscribed"
    assert member["merge_fields"]["FNAME"] == "Anna" and member["merge_fields"]["LNAME"] == "Berg"
    assert member["merge_fields"]["UNSUBURL"].startswith(PUBLIC_URL + "/unsubscribe/")
    assert member["ip_opt"] == "127.0.0.1" and member["timestamp_opt"]
    assert member["merge_fields"]["MANAGEURL"].startswith(PUBLIC_URL + "/manage/")
    assert {"UNSUBURL", "MANAGEURL"} <= set(mailchimp.merge_tags(LIST_ID))  # created because the audience lacked them
    enabled = {p["marketing_permission_id"]: p["enabled"] for p in member["marketing_permissions"]}
    assert enabled == {"perm-email": True, "perm-ads": True}  # the audience's GDPR permissions, on


def test_munkeby_opt_out_marks_the_member_unsubscribed(client, mailbox, runner, mailchimp):
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    drain(runner)
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    status = drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "unsubscribed"
    assert status["counts"]["pending"] == 0 and status["counts"]["dead"] == 0


def test_erasure_permanently_deletes_the_member(client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    drain(runner)
    assert runner.invoke(args=["subjects", "erase", "anna@example.com"]).exit_code == 0
    drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com") is None
    assert any(path.endswith("/actions/delete-permanent") for path in mailchimp.paths("POST"))


def test_bodiless_429_is_retried_not_taken_for_success(app, client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    mailchimp.enqueue_failure(429, headers={"Retry-After": "1"})
    status = drain(runner)
    assert status["counts"]["pending"] == 1
    assert mailchimp.member(LIST_ID, "anna@example.com") is None
    make_due(app)
    drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "subscribed"


def test_member_in_compliance_state_is_set_pending_and_recorded(client, mailbox, runner, mailchimp):
    mailchimp.add_member(LIST_ID, "anna@example.com", status="unsubscribed")
    mailchimp.compliance[LIST_ID].add(mailchimp.member(LIST_ID, "anna@example.com")["id"])
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "pending"
    export = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)
    assert "provider_confirmation_requested" in [e["type"] for e in export["events"]]


def test_a_permanent_error_becomes_a_dead_letter_and_can_be_retried(app, client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    mailchimp.enqueue_failure(400, {"title": "Invalid Resource", "status": 400, "detail": "bad language code"})
    status = drain(runner)
    [dead] = status["dead_letters"]
    assert "Invalid Resource" in dead["reason"]
    assert json.loads(runner.invoke(args=["outbox", "retry"]).stdout) == {"requeued": 1}
    drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "subscribed"


def test_link_fields_deleted_in_mailchimp_are_made_again_on_the_next_sign_up(client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    drain(runner)
    for tag in ("UNSUBURL", "MANAGEURL"):
        mailchimp.remove_merge_field(LIST_ID, tag)
    subscribe_and_confirm(client, mailbox, "munkeby", "berit@example.com")
    status = drain(runner)
    assert status["counts"]["dead"] == 0
    assert mailchimp.member(LIST_ID, "berit@example.com")["merge_fields"]["UNSUBURL"].startswith(
        PUBLIC_URL + "/unsubscribe/")
    assert {"UNSUBURL", "MANAGEURL"} <= set(mailchimp.merge_tags(LIST_ID))


def test_many_changes_go_through_the_batch_endpoint(app, client, mailbox, runner, mailchimp):
    app.config["SUBSCRIBE_RATE_LIMIT"] = "1000 per hour"  # all sign-ups come from one test client
    addresses = [f"reader{i}@example.com" for i in range(30)]
    mails = [subscribe_and_confirm(client, mailbox, "munkeby", address) for address in addresses]
    drain(runner)
    for mail in mails:
        client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    status = drain(runner)
    assert status["counts"]["pending"] == 0 and status["counts"]["dead"] == 0
    assert {mailchimp.member(LIST_ID, a)["status"] for a in addresses} == {"unsubscribed"}
    batch_calls = [p for p in mailchimp.paths("POST") if p.rstrip("/").endswith(f"/lists/{LIST_ID}")]
    single_calls = [p for p in mailchimp.paths("PUT") + mailchimp.paths("PATCH") if "/members/" in p]
    # This audience has GDPR marketing permissions, which the batch member schema cannot carry:
    # each sign-up is its own PUT (with the permissions), and the opt-outs go in one batch.
    assert len(batch_calls) == 1 and len(single_calls) == 30
    assert all(
        body.get("marketing_permissions")
        for method, path, body in mailchimp.requests
        if method == "PUT" and "/members/" in path
    )


def test_a_provider_that_does_not_answer_times_out_and_is_retried(app, client, mailbox, runner, mailchimp):
    app.config["PROVIDER_TIMEOUT_SECONDS"] = 1
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    mailchimp.latency = 5
    status = drain(runner)
    assert status["counts"]["pending"] == 1 and status["counts"]["dead"] == 0
    mailchimp.latency = 0
    make_due(app)
    drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "subscribed"


def test_retry_after_sets_the_next_attempt(app, client, mailbox, runner, mailchimp):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    mailchimp.enqueue_failure(429, headers={"Retry-After": "120"})
    drain(runner)
    with app.app_context():
        job = db.session.execute(db.select(OutboxJob).where(OutboxJob.kind == "sync_consent")).scalar_one()
        wait = (job.next_attempt_at - job.created_at).total_seconds()
    assert 115 <= wait <= 130, wait


def test_several_jobs_for_one_person_tell_the_provider_once(client, mailbox, runner, mailchimp):
    # Confirmed and unsubscribed before the worker ran: two jobs, one current state.
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    status = drain(runner)
    assert status["counts"]["done"] >= 2 and status["counts"]["pending"] == 0
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "unsubscribed"
    sent = [body for method, path, body in mailchimp.requests if method == "POST" and path.endswith(LIST_ID)]
    assert [len(body["members"]) for body in sent] == [1]


def test_link_fields_beyond_the_first_ten_are_found_not_made_again(app, client, mailbox, runner, mailchimp):
    """GET .../merge-fields answers 10 fields unless asked for more: ours may be on a later page."""
    mailchimp.add_merge_fields(LIST_ID, 12)
    mailchimp.add_merge_field(LIST_ID, "UNSUBURL", "Unsubscribe link", "url")
    mailchimp.add_merge_field(LIST_ID, "MANAGEURL", "Your data and settings link", "url")
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    status = drain(runner)  # a worker that has not seen this audience yet
    assert status["counts"]["dead"] == 0, status["dead_letters"]
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "subscribed"
    assert [p for p in mailchimp.paths("POST") if p.endswith("/merge-fields")] == []
    assert sorted(mailchimp.merge_tags(LIST_ID)).count("UNSUBURL") == 1


def test_a_permanently_deleted_address_is_an_explained_refusal_and_the_others_go_through(
    app, client, mailbox, runner, mailchimp
):
    """Mailchimp refuses a forgotten address even as pending; that is one job's outcome, not the claim's."""
    app.config["SUBSCRIBE_RATE_LIMIT"] = "1000 per hour"
    for address in ("anna@example.com", "gone@example.com", "cia@example.com"):
        subscribe_and_confirm(client, mailbox, "munkeby", address)
    mailchimp.forget(LIST_ID, "gone@example.com")
    status = drain(runner)
    assert mailchimp.member(LIST_ID, "anna@example.com")["status"] == "subscribed"
    assert mailchimp.member(LIST_ID, "cia@example.com")["status"] == "subscribed"
    [dead] = status["dead_letters"]
    assert "Forgotten Email Not Subscribed" in dead["reason"] and "own sign-up form" in dead["reason"]
    assert "gone@example.com" not in json.dumps(status)


def test_a_temporary_refusal_is_retried_not_given_up(app, client, mailbox, runner, mailchimp):
    """400 "Invalid Resource" also says "signed up to a lot of lists very recently": that passes."""
    subscribe_and_confirm(client, mailbox, "munkeby", "busy@example.com")
    mailchimp.refuse_signups("busy@example.com", times=1)
    status = drain(runner)
    assert status["counts"]["dead"] == 0 and status["counts"]["pending"] == 1
    make_due(app)
    drain(runner)
    assert mailchimp.member(LIST_ID, "busy@example.com")["status"] == "subscribed"


def test_a_refusal_naming_the_address_keeps_only_mailchimps_title(app, client, mailbox, runner, mailchimp):
    """Mailchimp's details name the member; a dead letter's reason is shown to staff and kept."""
    subscribe_and_confirm(client, mailbox, "munkeby", "named@example.com")
    detail = "named@example.com looks fake or invalid, please enter a real email address."
    mailchimp.enqueue_failure(400, {"title": "Invalid Resource", "status": 400, "detail": detail})
    [dead] = drain(runner)["dead_letters"]
    assert dead["reason"].endswith("Mailchimp 400 Invalid Resource: address refused as invalid")
    assert "named@example.com" not in json.dumps(drain(runner))
