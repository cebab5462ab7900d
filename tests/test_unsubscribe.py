"""Unsubscribe: one click (RFC 8058), scanner-safe, and each notice's own rule."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app import outbox
from app.extensions import db
from app.models import ConsentEvent, EventDetail, OutboxJob, Subscription, Suppression

from .support import subscribe_and_confirm, unsubscribe_path


def rows(app, model, *where) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def state(app, address: str, notice: str) -> str | None:
    with app.app_context():
        return db.session.execute(
            select(Subscription.status).where(Subscription.email == address, Subscription.notice == notice)
        ).scalar_one_or_none()


def one_click(client, path: str, multipart: bool = False):  # type: ignore[no-untyped-def]
    """What a mail client sends: a POST with no cookies and no CSRF token."""
    client._cookies.clear()
    body = {"List-Unsubscribe": "One-Click"}
    if multipart:
        return client.post(path, data=body, content_type="multipart/form-data")
    return client.post(path, data=body, content_type="application/x-www-form-urlencoded")


def test_unsubscribe_link_opened_by_a_scanner_changes_nothing(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    jobs_before = rows(app, OutboxJob)
    for _ in range(5):
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 200
        assert client.options(path).status_code == 200
    page = client.get(path).get_data(as_text=True)
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert state(app, "anna@example.com", "munkeby") == "subscribed"
    assert rows(app, OutboxJob) == jobs_before


def test_one_click_unsubscribe_needs_no_cookie_and_answers_200_without_redirect(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    response = one_click(client, path)
    assert response.status_code == 200 and "Location" not in response.headers
    assert "Set-Cookie" not in response.headers
    assert state(app, "anna@example.com", "munkeby") == "unsubscribed"


def test_one_click_accepts_a_multipart_body(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    assert one_click(client, path, multipart=True).status_code == 200
    assert state(app, "anna@example.com", "munkeby") == "unsubscribed"


def test_repeating_the_unsubscribe_records_one_opt_out(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    for _ in range(5):
        assert one_click(client, path).status_code == 200
    assert rows(app, ConsentEvent, ConsentEvent.type == "opted_out") == 1


def test_a_post_without_the_one_click_field_changes_nothing(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    for body in ({}, {"foo": "bar"}, {"List-Unsubscribe": "yes"}):
        assert client.post(path, data=body).status_code == 400
    assert state(app, "anna@example.com", "munkeby") == "subscribed"


def test_page_button_unsubscribes_and_is_recorded_as_page(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    response = client.post(path, data={"List-Unsubscribe": "One-Click", "via": "page"})
    assert response.status_code == 200 and "Du är avregistrerad" in response.get_data(as_text=True)
    with app.app_context():
        event = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "opted_out")).scalar_one()
        assert event.channel == "page"


def test_munkeby_keeps_name_and_address_as_unsubscribed(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg"))
    one_click(client, path)
    with app.app_context():
        sub = db.session.execute(select(Subscription)).scalar_one()
        assert (sub.status, sub.email, sub.name) == ("unsubscribed", "anna@example.com", "Anna Berg")
        assert sub.unsubscribed_at is not None


def test_mysoft_deletes_the_person_and_keeps_only_a_suppression_and_anonymous_evidence(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com"))
    assert one_click(client, path).status_code == 200
    assert rows(app, Subscription) == 0
    assert rows(app, EventDetail) == 0
    assert rows(app, Suppression, Suppression.notice == "mysoft") == 1
    with app.app_context():
        suppression = db.session.execute(select(Suppression)).scalar_one()
        assert "bo@example.com" not in suppression.email_hash and len(suppression.email_hash) == 64
        types = list(db.session.execute(select(ConsentEvent.type).order_by(ConsentEvent.seq)).scalars())
    assert types[-2:] == ["opted_out", "personal_data_deleted"]
    assert "consent_confirmed" in types  # the evidence survives, without the person


def test_unsubscribe_link_keeps_working_after_deletion(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com"))
    one_click(client, path)
    assert client.get(path).status_code == 200
    assert one_click(client, path).status_code == 200
    assert rows(app, ConsentEvent, ConsentEvent.type == "opted_out") == 1
    assert rows(app, Suppression) == 1


def test_suppressed_address_may_subscribe_again_by_confirming(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com"))
    one_click(client, path)
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    assert state(app, "bo@example.com", "mysoft") == "subscribed"
    assert rows(app, Suppression) == 0


def test_one_notice_rule_does_not_touch_the_other_controller(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "both@example.com")
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "mysoft", "both@example.com"))
    one_click(client, path)
    assert state(app, "both@example.com", "mysoft") is None
    assert state(app, "both@example.com", "munkeby") == "subscribed"


def test_tampered_unsubscribe_token_is_400_and_changes_nothing(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    bad = path[:-3] + ("x" if path[-3] != "x" else "y") + path[-2:]
    assert one_click(client, bad).status_code == 400
    assert state(app, "anna@example.com", "munkeby") == "subscribed"


def test_oversized_body_is_413_before_the_token_is_looked_at(app, client, mailbox):
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com"))
    big = {"List-Unsubscribe": "One-Click", "pad": "x" * (1024 * 1024)}
    assert client.post(path, data=big).status_code == 413
    assert client.post("/unsubscribe/not-a-token", data=big).status_code == 413
    assert state(app, "anna@example.com", "munkeby") == "subscribed"


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_mail_still_queued_for_someone_who_opts_out_is_never_sent(app, client, mailbox, runner, slug):
    welcome = subscribe_and_confirm(client, mailbox, slug, "leaving@example.com")
    with app.app_context():
        ref = db.session.execute(select(Subscription.ref)).scalar_one()
        job = outbox.enqueue(db.session, "mail", notice=slug, subscription_ref=ref, payload={"template": "welcome"})
        db.session.commit()  # e.g. a resend waiting for the mail server to come back
        job_id = job.id
    sent_before = len(mailbox.messages())
    assert one_click(client, unsubscribe_path(welcome)).status_code == 200
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    with app.app_context():
        mail_job = db.session.get(OutboxJob, job_id)
        assert (mail_job.state, mail_job.last_error, mail_job.payload) == ("done", "cancelled", {})
    # Nothing more went to them (under Mysoft's rule the folder copies of their mail go too).
    assert len(mailbox.messages()) == (sent_before if slug == "munkeby" else 0)
