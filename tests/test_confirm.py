"""Confirmation links: only a POST confirms, links expire, repeats are harmless."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app import tokens
from app.extensions import db
from app.models import ConsentEvent, Subscription

from .support import link_in, sign_up


def status_of(app, address: str, notice: str = "munkeby") -> str | None:
    with app.app_context():
        return db.session.execute(
            select(Subscription.status).where(Subscription.email == address, Subscription.notice == notice)
        ).scalar_one_or_none()


def event_types(app) -> list[str]:
    with app.app_context():
        return list(db.session.execute(select(ConsentEvent.type).order_by(ConsentEvent.seq)).scalars())


def test_opening_the_link_shows_a_button_and_confirms_nothing(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com")
    link = link_in(mailbox.last("anna@example.com"), "confirm")
    for method in (client.get, client.head, client.options):
        assert method(link).status_code == 200
    page = client.get(link).get_data(as_text=True)
    assert '<form method="post"' in page and "Ja, bekräfta min prenumeration" in page
    assert status_of(app, "anna@example.com") == "pending"
    assert len(mailbox.to("anna@example.com")) == 1  # no welcome mail yet


def test_post_confirms_and_sends_a_welcome_mail(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com", "Anna")
    response = client.post(link_in(mailbox.last("anna@example.com"), "confirm"))
    assert response.status_code == 200 and "Prenumerationen är bekräftad" in response.get_data(as_text=True)
    assert status_of(app, "anna@example.com") == "subscribed"
    welcome = mailbox.last("anna@example.com")
    assert welcome["Subject"] == "Välkommen till Munkeby Systems nyhetsbrev"
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_confirming_twice_is_harmless(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com")
    link = link_in(mailbox.last("anna@example.com"), "confirm")
    client.post(link)
    again = client.post(link)
    assert again.status_code == 200 and "redan bekräftad" in again.get_data(as_text=True)
    assert event_types(app).count("consent_confirmed") == 1
    assert len(mailbox.to("anna@example.com")) == 2  # confirmation + one welcome


def test_confirmation_records_scanner_timing(app, client, mailbox):
    sign_up(client, "munkeby", "fast@example.com")
    # A link checker at the receiving mail server presses within seconds, from elsewhere.
    scanner = app.test_client()
    scanner.environ_base.update({"REMOTE_ADDR": "203.0.113.77", "HTTP_USER_AGENT": "LinkChecker/2.1"})
    scanner.post(link_in(mailbox.last("fast@example.com"), "confirm"))
    with app.app_context():
        event = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "consent_confirmed")).scalar_one()
        assert '"likely_scanner":true' in event.facts
        assert '"same_ip_as_signup":false' in event.facts
        assert '"seconds_since_sent":' in event.facts


def test_expired_link_offers_a_new_one(app, client, mailbox):
    sign_up(client, "munkeby", "late@example.com")
    link = link_in(mailbox.last("late@example.com"), "confirm")
    app.config["CONFIRM_MAX_AGE"] = 1
    time.sleep(2.1)
    page = client.get(link)
    assert page.status_code == 410 and "Skicka en ny bekräftelselänk" in page.get_data(as_text=True)
    assert client.post(link).status_code == 410
    assert status_of(app, "late@example.com") == "pending"
    assert client.post(link + "/resend").status_code == 200
    app.config["CONFIRM_MAX_AGE"] = 7 * 24 * 3600
    fresh = link_in(mailbox.last("late@example.com"), "confirm")
    assert fresh != link
    assert client.post(fresh).status_code == 200
    assert status_of(app, "late@example.com") == "subscribed"


@pytest.mark.parametrize(
    # The first changes one character of the signature, whatever it was.
    "mangle", [lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], lambda t: t[:20], lambda t: "x" * 2000]
)
def test_tampered_token_is_a_clear_400(app, client, mailbox, mangle):
    sign_up(client, "munkeby", "anna@example.com")
    token = link_in(mailbox.last("anna@example.com"), "confirm").split("/")[-1]
    for method in (client.get, client.post):
        response = method(f"/confirm/{mangle(token)}")
        assert response.status_code == 400 and "Länken fungerar inte" in response.get_data(as_text=True)
    assert status_of(app, "anna@example.com") == "pending"


def test_token_of_another_purpose_is_refused(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com")
    unsubscribe_token = mailbox.last("anna@example.com")["List-Unsubscribe"].strip("<>").split("/")[-1]
    assert client.post(f"/confirm/{unsubscribe_token}").status_code == 400
    assert status_of(app, "anna@example.com") == "pending"


def test_old_confirmation_link_does_not_resubscribe_after_opting_out(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com")
    link = link_in(mailbox.last("anna@example.com"), "confirm")
    client.post(link)
    unsubscribe = mailbox.last("anna@example.com")["List-Unsubscribe"].strip("<>").split("news.example.org")[1]
    client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert status_of(app, "anna@example.com") == "unsubscribed"
    stale = client.post(link)
    assert stale.status_code == 410
    assert status_of(app, "anna@example.com") == "unsubscribed"


def test_old_signing_key_keeps_working_while_listed_as_fallback(app, client, mailbox):
    sign_up(client, "munkeby", "anna@example.com")
    link = link_in(mailbox.last("anna@example.com"), "confirm")
    old = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"], app.config["SECRET_KEY_FALLBACKS"] = "a-new-key-" + "z" * 30, [old]
    assert client.get(link).status_code == 200
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert client.get(link).status_code == 400
    with app.test_request_context():
        assert tokens.read("confirm", tokens.make("confirm", {"n": "munkeby"})) == {"n": "munkeby"}
