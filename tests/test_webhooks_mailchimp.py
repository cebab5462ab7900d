"""Mailchimp webhooks: deliveries shaped as Mailchimp sends them, flat form keys."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription, Suppression

from .support import notices_with_rule, subscribe_and_confirm, unsubscribe_path

SECRET = "mc-hook-" + "a" * 24
SIGNING = "mc-sign-" + "b" * 24
LIST_ID = "munkeby0001"
HOOK = f"/webhooks/mailchimp/{SECRET}"


@pytest.fixture(params=["unsubscribe", "delete"])
def rule(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app_env(app_env: dict[str, str], tmp_path: Path, rule: str) -> dict[str, str]:
    """Munkeby's notice as shipped, and a copy whose opt-out rule is "delete"."""
    folder = notices_with_rule(tmp_path / "notices", "munkeby", rule)
    return {**app_env, "NOTICES_DIR": str(folder), "MAILCHIMP_WEBHOOK_SECRET": SECRET}


def delivery(kind: str, email: str, **data: str) -> dict[str, str]:
    """A delivery's form fields, named as Mailchimp names them."""
    fields = {
        "type": kind,
        "fired_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 1)),
        "data[id]": "8a25ff1d98",
        "data[list_id]": LIST_ID,
        "data[email]": email,
        "data[email_type]": "html",
        "data[merges][EMAIL]": email,
        "data[merges][FNAME]": "Anna",
        "data[merges][LNAME]": "Berg",
        "data[ip_opt]": "10.20.10.30",
    }
    fields.update({f"data[{k}]": v for k, v in data.items()})
    return fields


def post(client, fields: dict[str, str], path: str = HOOK, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, data=urlencode(fields), content_type="application/x-www-form-urlencoded", headers=headers)


def events(app, kind: str) -> list[ConsentEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(db.session.execute(select(ConsentEvent).where(ConsentEvent.type == kind)).scalars())


def subscription(app, email: str) -> Subscription | None:  # type: ignore[no-untyped-def]
    from app.addresses import email_hash

    with app.app_context():
        return db.session.execute(
            select(Subscription).where(Subscription.email_hash == email_hash(email))
        ).scalar_one_or_none()


def counts(app) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(evidence events, outbox jobs, suppressions): what a no-op must leave alone."""
    with app.app_context():
        return tuple(  # type: ignore[return-value]
            db.session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (ConsentEvent, OutboxJob, Suppression)
        )


def test_mailchimp_checks_the_url_with_a_get(client, rule):
    assert client.get(HOOK).status_code == 200
    assert client.get("/webhooks/mailchimp/wrong-secret-xxxxxxxxxxxx").status_code == 404


def test_a_wrong_secret_is_404_and_changes_nothing(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    before = counts(app)
    answer = post(
        client,
        delivery("unsubscribe", "anna@example.com", action="unsub", reason="manual"),
        "/webhooks/mailchimp/" + "a" * 32,
    )
    assert answer.status_code == 404 and answer.is_json
    assert counts(app) == before
    assert subscription(app, "anna@example.com").status == "subscribed"


def test_unsubscribe_applies_the_notice_rule_once(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    fields = delivery("unsubscribe", "anna@example.com", action="unsub", reason="manual", campaign_id="cb398d21d2")
    first = post(client, fields)
    assert first.status_code == 200 and first.json == {"status": "applied"}
    assert post(client, fields).json == {"status": "duplicate"}  # at-least-once delivery
    [opted_out] = events(app, "opted_out")
    facts = json.loads(opted_out.facts)
    assert opted_out.channel == "webhook" and facts["provider"] == "mailchimp" and facts["rule"] == rule
    sub = subscription(app, "anna@example.com")
    with app.app_context():
        jobs = [(j.kind, j.payload.get("action")) for j in db.session.execute(select(OutboxJob)).scalars()]
    if rule == "unsubscribe":
        assert sub.status == "unsubscribed"
        assert ("sync_optout", None) not in jobs  # Mailchimp already has them unsubscribed
    else:
        assert sub is None  # deleted here...
        assert ("sync_optout", "delete") in jobs  # ...and to be deleted at Mailchimp
    assert len(events(app, "opted_out")) == 1


def test_abuse_is_recorded_as_a_complaint_and_suppressed(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    post(client, delivery("unsubscribe", "anna@example.com", action="unsub", reason="abuse"))
    [opted_out] = events(app, "opted_out")
    assert json.loads(opted_out.facts)["reason"] == "complaint"
    with app.app_context():
        [entry] = db.session.execute(select(Suppression)).scalars()
        assert entry.reason == "complaint"


def test_cleaned_stops_mailing_and_suppresses(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    answer = post(client, delivery("cleaned", "anna@example.com", reason="hard", campaign_id="4fjk2ma9xd"))
    assert answer.json == {"status": "applied"}
    sub = subscription(app, "anna@example.com")
    assert (sub is None) if rule == "delete" else (sub.status == "unsubscribed")
    assert json.loads(events(app, "opted_out")[0].facts)["reason"] == "bounce"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Suppression)).scalar_one() == 1


def test_profile_change_rectifies_the_name(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    assert post(client, delivery("profile", "anna@example.com")).json == {"status": "no_change"}
    fields = delivery("profile", "anna@example.com")
    fields["data[merges][LNAME]"] = "Lind"
    assert post(client, fields).json == {"status": "applied"}
    assert subscription(app, "anna@example.com").name == "Anna Lind"
    assert json.loads(events(app, "rectified")[0].facts)["field"] == "name"


def test_address_change_moves_the_subscription_and_keeps_its_history(app, client, mailbox, runner, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    fields = delivery(
        "upemail",
        "anna@example.com",
        new_id="51aa6f2b7c",
        new_email="anna.berg@example.com",
        old_email="anna@example.com",
    )
    assert post(client, fields).json == {"status": "applied"}
    assert runner.invoke(args=["subjects", "export", "anna@example.com"]).exit_code == 1
    exported = json.loads(runner.invoke(args=["subjects", "export", "anna.berg@example.com"]).stdout)
    kinds = [e["type"] for e in exported["events"]]
    assert {"signup_requested", "consent_confirmed"} <= set(kinds) and kinds[-1] == "rectified"
    assert exported["events"][-1]["details"] == {"old_email": "anna@example.com", "new_email": "anna.berg@example.com"}


def test_a_sign_up_in_mailchimps_own_form_is_recorded_with_its_source(app, client, rule):
    answer = post(client, delivery("subscribe", "new.reader@example.com"))
    assert answer.json == {"status": "applied"}
    sub = subscription(app, "new.reader@example.com")
    assert sub.status == "subscribed" and "not double opt-in" in sub.source
    [recorded] = events(app, "provider_subscribed")
    assert json.loads(recorded.facts)["double_opt_in_by_us"] is False
    with app.app_context():  # our unsubscribe link goes to Mailchimp with the next sync
        assert [j.kind for j in db.session.execute(select(OutboxJob)).scalars()] == ["sync_consent"]


def test_echoes_of_our_own_writes_change_nothing(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    before = counts(app)
    # The sync's upsert comes back as "subscribe" and "profile" events.
    assert post(client, delivery("subscribe", "anna@example.com")).json == {"status": "no_change"}
    assert post(client, delivery("profile", "anna@example.com")).json == {"status": "no_change"}
    assert counts(app) == before


def test_events_from_before_our_latest_change_are_stale(app, client, mailbox, runner, rule):
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    late_subscribe = delivery("subscribe", "anna@example.com")
    late_subscribe["fired_at"] = "2020-01-01 00:00:00"
    assert post(client, late_subscribe).json == {"status": "stale"}  # kept out under either rule
    held = runner.invoke(args=["subjects", "export", "anna@example.com"]).exit_code == 0
    assert held == (rule == "unsubscribe")

    # An opt-out made before the person's latest confirmation here must not undo it...
    subscribe_and_confirm(client, mailbox, "munkeby", "bea@example.com")
    late_opt_out = delivery("unsubscribe", "bea@example.com", action="unsub", reason="manual")
    late_opt_out["fired_at"] = "2020-01-01 00:00:00"
    assert post(client, late_opt_out).json == {"status": "stale"}
    assert subscription(app, "bea@example.com").status == "subscribed"
    # ...while one made after it is applied, however late it arrives.
    assert post(client, delivery("unsubscribe", "bea@example.com", action="unsub")).json == {"status": "applied"}


def test_unknown_list_and_address_are_acknowledged(app, client, rule):
    other = delivery("unsubscribe", "anna@example.com", action="unsub", reason="manual")
    other["data[list_id]"] = "someotherlist"
    assert post(client, other).json == {"status": "unknown_list"}
    assert counts(app) == (0, 0, 0)
    answer = post(client, delivery("unsubscribe", "stranger@example.com", action="unsub", reason="manual"))
    assert answer.status_code == 200 and answer.json == {"status": "unknown_address"}
    with app.app_context():  # they opted out: they stay out, whatever comes later
        assert db.session.execute(select(func.count()).select_from(Suppression)).scalar_one() == 1


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"type": "unsubscribe", "data[list_id]": LIST_ID},
        {"type": "unsubscribe", "data[list_id]": LIST_ID, "data[email]": "not an address"},
        {"type": "upemail", "data[list_id]": LIST_ID, "data[old_email]": "a@example.com"},
        {"type": "profile", "data[list_id]": LIST_ID, "data[email]": "a@example.com", "data[merges][FNAME]": "A\r\nB"},
    ],
)
def test_malformed_deliveries_are_refused_clearly_and_change_nothing(app, client, fields, rule):
    answer = post(client, fields)
    assert answer.status_code == 400 and answer.json["error"] == "bad_request" and answer.json["detail"]
    assert answer.json["status"] == 400 and "message" not in answer.json  # the service's one error shape
    assert counts(app) == (0, 0, 0)


def test_campaign_events_are_acknowledged_and_ignored(app, client, rule):
    answer = post(
        client,
        {"type": "campaign", "fired_at": "2026-11-22 10:00:00", "data[id]": "5aa2102003", "data[list_id]": LIST_ID},
    )
    assert answer.json == {"status": "ignored"}


def test_a_huge_body_is_refused_before_anything_else(app, client, rule):
    answer = post(client, {"type": "unsubscribe", "data[email]": "a" * (1024 * 1024)})
    assert answer.status_code == 413


class TestSignature:
    @pytest.fixture
    def app_env(self, app_env: dict[str, str]) -> dict[str, str]:
        return {**app_env, "MAILCHIMP_WEBHOOK_SIGNING_SECRET": SIGNING}

    @staticmethod
    def signed(body: str, stamp: int, key: str = SIGNING) -> str:
        digest = hmac.new(key.encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
        return f"t={stamp},v1={digest}"

    def test_only_correctly_signed_fresh_deliveries_are_applied(self, app, client, mailbox, rule):
        subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
        body = urlencode(delivery("unsubscribe", "anna@example.com", action="unsub", reason="manual"))
        now = int(time.time())

        def send(**headers: str):  # type: ignore[no-untyped-def]
            return client.post(HOOK, data=body, content_type="application/x-www-form-urlencoded", headers=headers)

        refused = send()
        assert refused.status_code == 401
        problem = "missing or malformed X-Mailchimp-Signature"
        assert refused.json == {"error": "unauthorized", "detail": problem, "status": 401}
        assert send(**{"X-Mailchimp-Signature": self.signed(body, now, key="x" * 32)}).status_code == 401
        assert send(**{"X-Mailchimp-Signature": self.signed(body, now - 301)}).status_code == 401
        assert send(**{"X-Mailchimp-Signature": "t=abc,v1="}).status_code == 401
        assert subscription(app, "anna@example.com") is not None
        assert events(app, "opted_out") == []
        assert send(**{"X-Mailchimp-Signature": self.signed(body, now)}).json == {"status": "applied"}


def test_a_bad_name_never_blocks_an_opt_out_and_free_text_reasons_stay_out_of_the_ledger(app, client, mailbox, rule):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    fields = delivery("unsubscribe", "anna@example.com", action="unsub", reason="x" * 5000)
    fields["data[merges][FNAME]"] = "Anna\tBerg" * 50
    assert post(client, fields).json == {"status": "applied"}
    [opted_out] = events(app, "opted_out")
    assert json.loads(opted_out.facts)["provider_reason"] == "other"


def test_a_sign_up_without_fired_at_is_refused(app, client, rule):
    fields = delivery("subscribe", "new.reader@example.com")
    del fields["fired_at"]
    assert post(client, fields).status_code == 400
    assert counts(app) == (0, 0, 0)


def test_an_address_change_onto_an_opted_out_address_keeps_that_opt_out(app, client, mailbox, runner, rule):
    gone = subscribe_and_confirm(client, mailbox, "munkeby", "old.owner@example.com")
    client.post(unsubscribe_path(gone), data={"List-Unsubscribe": "One-Click"})
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    fields = delivery(
        "upemail", "anna@example.com", new_email="old.owner@example.com", old_email="anna@example.com", new_id="x1"
    )
    answer = post(client, fields).json
    sub = subscription(app, "old.owner@example.com")
    if rule == "delete":  # the old owner's data is gone: anna's record moves, and the opt-out applies to it
        assert answer == {"status": "applied"} and sub is None
    else:  # the old owner is still held, unsubscribed: Mailchimp is told that state again
        assert answer == {"status": "conflict"} and sub.status == "unsubscribed"
        with app.app_context():
            jobs = db.session.execute(select(OutboxJob).where(OutboxJob.subscription_ref == sub.ref)).scalars()
            assert "sync_optout" in [job.kind for job in jobs]


@pytest.mark.parametrize("header", ["t=\u00b2,v1=" + "a" * 64, "t=" + "9" * 400 + ",v1=" + "a" * 64, "t=1,v1=\u00e9"])
def test_garbage_signatures_are_refused_not_crashed_on(app, client, header, rule):
    app.config["MAILCHIMP_WEBHOOK_SIGNING_SECRET"] = SIGNING
    answer = client.post(
        HOOK,
        data=urlencode(delivery("unsubscribe", "anna@example.com")),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Mailchimp-Signature": header},
    )
    assert answer.status_code == 401


def test_an_admin_deleting_the_contact_in_mailchimp_is_recorded_not_taken_for_an_opt_out(app, client, mailbox, rule):
    """``data[action]=delete``: staff removed the contact; the person did not withdraw consent."""
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    answer = post(client, delivery("unsubscribe", "anna@example.com", action="delete", reason="manual"))
    assert answer.status_code == 200 and answer.json == {"status": "applied"}
    assert subscription(app, "anna@example.com").status == "subscribed"  # under either rule
    assert events(app, "opted_out") == []
    [deleted] = events(app, "provider_contact_deleted")
    assert deleted.channel == "webhook" and json.loads(deleted.facts)["provider"] == "mailchimp"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Suppression)).scalar_one() == 0
