"""Subscriber mail through a real SMTP server, read as a mail client reads it.

An aiosmtpd server on 127.0.0.1 receives what the service sends; each message
is parsed with the stdlib email package. The server can be stopped and started
again on the same port, to show that mail waits in the outbox while it is down.
"""

from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage

import pytest
from sqlalchemy import delete, select, update

from app.extensions import db
from app.models import OutboxJob, Subscription, utcnow

from .support import PUBLIC_URL, SmtpSink, csrf_token, link_in, sign_up

MAIL_FROM = "nyhetsbrev@news.example.org"
SUBJECT_SV = "Bekräfta din prenumeration på Munkeby Systems nyhetsbrev"
UNSUBSCRIBE_HEADER = re.compile(r"<(" + re.escape(PUBLIC_URL) + r"/unsubscribe/[A-Za-z0-9._~-]+)>")


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink) -> dict[str, str]:
    return {**app_env, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "MAIL_FROM": MAIL_FROM}


def parts(message: EmailMessage) -> tuple[str, str]:
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None, "expected a text and an HTML part"
    return plain.get_content(), html.get_content()


def assert_one_click_unsubscribe(message: EmailMessage) -> str:
    """RFC 2369/8058 headers, and the same link visible in both parts."""
    match = UNSUBSCRIBE_HEADER.fullmatch(message["List-Unsubscribe"] or "")
    assert match, message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain, html = parts(message)
    url = match.group(1)
    assert url in plain and f'href="{url}"' in html
    return url


def outbox_status(app) -> dict:  # type: ignore[no-untyped-def]
    result = app.test_cli_runner().invoke(args=["outbox", "status"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_outbox_once(app) -> int:  # type: ignore[no-untyped-def]
    result = app.test_cli_runner().invoke(args=["outbox", "run", "--once"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["processed"]


def test_confirmation_mail_reads_right_in_a_mail_client(client, smtp):
    assert sign_up(client, "munkeby", "Anna.Berg@Example.COM", "Anna Berg").status_code == 303
    [message] = smtp.messages()
    assert message["From"] == f"Munkeby Systems <{MAIL_FROM}>"
    assert message["To"] == "anna.berg@example.com"
    assert message["Subject"] == SUBJECT_SV
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    plain, html = parts(message)
    assert "Munkeby Systems nyhetsbrev" in plain and '<html lang="sv">' in html
    assert link_in(message, "confirm").startswith("/confirm/")
    assert_one_click_unsubscribe(message)


def test_smtp_envelope_goes_to_the_subscriber_only(client, smtp):
    sign_up(client, "munkeby", "anna@example.com", "Anna Berg")
    [(mail_from, rcpt_tos, _)] = smtp.received
    assert mail_from == MAIL_FROM and rcpt_tos == ["anna@example.com"]


def test_welcome_mail_after_confirming_carries_one_click_unsubscribe(client, smtp):
    sign_up(client, "munkeby", "anna@example.com", "Anna Berg")
    confirm = link_in(smtp.messages("anna@example.com")[-1], "confirm")
    assert client.get(confirm).status_code == 200
    assert len(smtp.messages("anna@example.com")) == 1  # opening the link sends nothing
    assert client.post(confirm).status_code == 200
    confirmation, welcome = smtp.messages("anna@example.com")
    assert welcome["Subject"] == "Välkommen till Munkeby Systems nyhetsbrev"
    assert welcome["From"] == f"Munkeby Systems <{MAIL_FROM}>"
    assert welcome.get_content_type() == "multipart/alternative"
    url = assert_one_click_unsubscribe(welcome)
    assert url.split("/unsubscribe/")[0] == PUBLIC_URL
    assert_one_click_unsubscribe(confirmation)


def test_links_use_the_public_url_whatever_the_host_header(client, smtp):
    sign_up(client, "munkeby", "anna@example.com", Host="evil.example.net")
    [message] = smtp.messages()
    plain, html = parts(message)
    assert "evil.example.net" not in plain + html + message["List-Unsubscribe"]
    assert_one_click_unsubscribe(message)


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "Anna\r\nBcc: victim@example.net"),
        ("name", "Anna\nSubject: you won"),
        ("email", "anna@example.com\r\nBcc: victim@example.net"),
    ],
)
def test_header_injection_is_refused_and_nothing_is_sent(app, client, smtp, field, value):
    data = {"csrf_token": csrf_token(client, "/munkeby/subscribe"), "email": "anna@example.com", "consent": "y"}
    data[field] = value
    response = client.post("/munkeby/subscribe", data=data)
    assert response.status_code == 400
    assert smtp.received == []
    with app.app_context():
        assert db.session.execute(select(Subscription)).first() is None


def test_mail_waits_in_the_outbox_while_the_smtp_server_is_down(app, client, smtp):
    smtp.stop()
    assert sign_up(client, "munkeby", "anna@example.com", "Anna Berg").status_code == 303
    status = outbox_status(app)
    assert status["counts"]["pending"] == 1 and status["dead_letters"] == []
    with app.app_context():
        [job] = db.session.execute(select(OutboxJob).where(OutboxJob.kind == "mail")).scalars().all()
        assert job.state == "pending" and "SMTP unavailable" in (job.last_error or "")

    smtp.start()  # the server is back, on the same port
    deadline = time.monotonic() + 10  # first retries come within a few seconds
    while not smtp.received and time.monotonic() < deadline:
        run_outbox_once(app)
        time.sleep(0.25)
    [message] = smtp.messages("anna@example.com")
    assert message["Subject"] == SUBJECT_SV
    assert_one_click_unsubscribe(message)

    assert run_outbox_once(app) == 0
    assert len(smtp.received) == 1  # delivered exactly once
    status = outbox_status(app)
    assert status["counts"]["pending"] == 0 and status["counts"]["done"] == 2  # the sign-up and its mail


def test_mail_retried_from_the_outbox_still_lets_the_person_confirm(app, client, smtp):
    smtp.stop()
    sign_up(client, "munkeby", "anna@example.com", "Anna Berg")
    smtp.start()
    with app.app_context():  # make the retry due now rather than waiting for the backoff
        db.session.execute(OutboxJob.__table__.update().values(next_attempt_at=utcnow()))
        db.session.commit()
    assert run_outbox_once(app) == 1
    confirm = link_in(smtp.messages("anna@example.com")[-1], "confirm")
    assert client.post(confirm).status_code == 200
    assert [m["Subject"] for m in smtp.messages("anna@example.com")][-1] == "Välkommen till Munkeby Systems nyhetsbrev"


@pytest.mark.parametrize("meanwhile", ["still pending", "confirmed", "deleted"])
def test_a_waiting_confirmation_goes_out_only_while_the_subscription_still_waits_for_it(app, client, smtp, meanwhile):
    smtp.stop()
    assert sign_up(client, "munkeby", "anna@example.com", "Anna Berg").status_code == 303
    with app.app_context():
        chosen = Subscription.__table__.c.email == "anna@example.com"
        if meanwhile == "confirmed":  # confirmed through the first mail's twin, say
            db.session.execute(update(Subscription).where(chosen).values(status="subscribed", confirmed_at=utcnow()))
        elif meanwhile == "deleted":  # gone before the mail server came back
            db.session.execute(delete(Subscription).where(chosen))
        db.session.commit()
    smtp.start()
    deadline = time.monotonic() + 10
    while outbox_status(app)["counts"]["pending"] and time.monotonic() < deadline:
        run_outbox_once(app)
        time.sleep(0.25)
    assert outbox_status(app)["counts"]["pending"] == 0
    if meanwhile == "still pending":
        [message] = smtp.messages("anna@example.com")
        assert message["Subject"] == SUBJECT_SV and "/confirm/" in parts(message)[0]
    else:
        assert smtp.received == []
