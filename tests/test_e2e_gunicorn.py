"""The real service under gunicorn, driven over HTTP and SMTP as a person would.

Each test starts gunicorn (two workers) on a free loopback port, with mail going
to an aiosmtpd server in this process, and uses ``requests`` like a browser
(keeping the session cookie) or like a mail client doing RFC 8058 one-click
(no cookies, no token, no redirects followed). Every answer is checked for the
security headers. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from .support import Service, SmtpSink, free_port, serving

pytestmark = pytest.mark.e2e

TOKEN = r"[A-Za-z0-9._~-]+"


def check_security_headers(response: requests.Response, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    where = f"{response.request.method} {response.url}"
    assert "frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", ""), where
    assert response.headers.get("Referrer-Policy") == "same-origin", where


MAILCHIMP_HOOK_SECRET = "e2e-mailchimp-" + "m" * 20
APSIS_HOOK_SECRET = "e2e-apsis-" + "q" * 20


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink, web_port: int) -> dict[str, str]:
    return {
        **app_env,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "MAILCHIMP_WEBHOOK_SECRET": MAILCHIMP_HOOK_SECRET,
        "APSIS_WEBHOOK_SECRET": APSIS_HOOK_SECRET,
    }


@pytest.fixture
def service(app, app_env: dict[str, str], web_port: int, tmp_path: Path) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    # Depending on `app` migrates the database and empties it; gunicorn then
    # serves that same database with the same settings.
    with serving(app_env, web_port, tmp_path / "gunicorn.log") as server:
        yield server


def browser() -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(check_security_headers)
    return session


def link(service: Service, message: EmailMessage, kind: str) -> str:
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(re.escape(service.url) + rf"/{kind}/{TOKEN}", body)
    assert match, f"no {kind} link in the mail"
    return match.group(0)


def list_unsubscribe(service: Service, message: EmailMessage) -> str:
    match = re.fullmatch(rf"<({re.escape(service.url)}/unsubscribe/{TOKEN})>", message["List-Unsubscribe"] or "")
    assert match, message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return match.group(1)


def sign_up(service: Service, smtp: SmtpSink, slug: str, address: str, name: str | None = None) -> EmailMessage:
    """Fill in the Swedish form in a browser; returns the confirmation mail."""
    with browser() as session:
        with session.get(f"{service.url}/{slug}/subscribe") as form:
            assert form.status_code == 200 and '<html lang="sv">' in form.text
            token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        data = {"csrf_token": token, "email": address, "consent": "y"}
        if name is not None:
            data["name"] = name
        with session.post(f"{service.url}/{slug}/subscribe", data=data) as answer:
            assert answer.status_code == 200 and [r.status_code for r in answer.history] == [303]
            assert "Titta i din inkorg" in answer.text
    [mail] = smtp.wait_for(address, 1)
    return mail


def confirm(service: Service, smtp: SmtpSink, mail: EmailMessage) -> EmailMessage:
    """Open the confirm link, press the button; returns the welcome mail."""
    url, address = link(service, mail, "confirm"), mail["To"]
    with browser() as session:
        with session.get(url) as page:
            assert page.status_code == 200 and 'method="post"' in page.text
        assert len(smtp.messages(address)) == 1  # opening the link confirmed nothing: no welcome mail
        with session.post(url) as done:
            # "Thank you", not "already confirmed": it was this press that confirmed.
            assert done.status_code == 200 and "Tack! Nu får du" in done.text
    _, welcome = smtp.wait_for(address, 2)
    return welcome


def one_click(url: str, multipart: bool = False) -> requests.Response:
    """What a mail client sends: a bare POST, no cookies, no CSRF token, no redirects."""
    with browser() as session:
        if multipart:
            response = session.post(url, files={"List-Unsubscribe": (None, "One-Click")}, allow_redirects=False)
            assert response.request.headers["Content-Type"].startswith("multipart/form-data")
        else:
            response = session.post(
                url,
                data="List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                allow_redirects=False,
            )
        assert "Cookie" not in response.request.headers and "Set-Cookie" not in response.headers
        response.close()
        return response


def test_sign_up_confirm_and_one_click_unsubscribe_need_no_cookie(service, smtp):
    welcome = confirm(service, smtp, sign_up(service, smtp, "munkeby", "anna@example.com", "Anna Berg"))
    assert welcome["Subject"] == "Välkommen till Munkeby Systems nyhetsbrev"
    url = list_unsubscribe(service, welcome)
    for _ in range(2):  # a repeat is harmless and answers the same
        response = one_click(url)
        assert response.status_code == 200 and "Location" not in response.headers
    assert service.status_of("anna@example.com") == "unsubscribed"


def test_one_click_unsubscribe_accepts_a_multipart_body(service, smtp):
    welcome = confirm(service, smtp, sign_up(service, smtp, "munkeby", "bo@example.com", "Bo Ek"))
    response = one_click(list_unsubscribe(service, welcome), multipart=True)
    assert response.status_code == 200 and "Location" not in response.headers
    assert service.status_of("bo@example.com") == "unsubscribed"


def test_one_click_from_the_confirmation_mail_works_before_confirming(service, smtp):
    mail = sign_up(service, smtp, "munkeby", "cia@example.com")
    response = one_click(list_unsubscribe(service, mail))
    assert response.status_code == 200 and "Location" not in response.headers
    assert service.status_of("cia@example.com") == "unsubscribed"


def test_mysoft_one_click_deletes_the_person_and_the_link_keeps_working(service, smtp):
    welcome = confirm(service, smtp, sign_up(service, smtp, "mysoft", "dan@example.com"))
    url = list_unsubscribe(service, welcome)
    assert one_click(url).status_code == 200
    export = service.flask("subjects", "export", "dan@example.com")
    assert export.returncode != 0 and "dan@example.com" not in export.stdout
    with browser() as session:
        with session.get(url) as page:
            assert page.status_code == 200
    assert one_click(url).status_code == 200
    assert one_click(url, multipart=True).status_code == 200
    assert service.flask("subjects", "export", "dan@example.com").returncode != 0


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_a_stray_post_to_the_unsubscribe_link_changes_nothing(service, smtp, slug):
    welcome = confirm(service, smtp, sign_up(service, smtp, slug, "eva@example.com"))
    url = list_unsubscribe(service, welcome)
    with browser() as session:
        for body in ("foo=bar", "List-Unsubscribe=Yes", ""):
            with session.post(
                url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, allow_redirects=False
            ) as response:
                assert "Location" not in response.headers
                assert 'name="List-Unsubscribe" value="One-Click"' in response.text  # the button is offered
    assert service.status_of("eva@example.com") == "subscribed"


def test_healthz_and_public_pages_carry_the_security_headers(service):
    with browser() as session:
        for path in ("/healthz", "/", "/munkeby/subscribe", "/mysoft/privacy", "/static/style.css"):
            with session.get(service.url + path) as response:  # the hook checks the headers
                assert response.status_code == 200, path
        refused = (("/unsubscribe/not-a-token", 400), ("/confirm/not-a-token", 400), ("/nowhere/subscribe", 404))
        for path, status in refused:
            with session.get(service.url + path) as response:
                assert response.status_code == status, path


def test_a_body_over_one_megabyte_is_refused_with_413(service, smtp):
    with browser() as session:
        body = {"email": "big@example.com", "consent": "y", "name": "A" * (1100 * 1024)}
        with session.post(f"{service.url}/munkeby/subscribe", data=body, allow_redirects=False) as response:
            assert response.status_code == 413
    assert smtp.received == []
    assert service.status_of("big@example.com") is None


def test_provider_webhooks_over_http_apply_each_rule_once(service, smtp):
    confirm(service, smtp, sign_up(service, smtp, "munkeby", "fia@example.com", "Fia Holm"))
    confirm(service, smtp, sign_up(service, smtp, "mysoft", "gus@example.com"))
    mailchimp_hook = f"{service.url}/webhooks/mailchimp/{MAILCHIMP_HOOK_SECRET}"
    fields = {
        "type": "unsubscribe",
        "fired_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 1)),
        "data[action]": "unsub",
        "data[reason]": "manual",
        "data[id]": "8a25ff1d98",
        "data[list_id]": "munkeby0001",
        "data[email]": "fia@example.com",
        "data[email_type]": "html",
        "data[merges][EMAIL]": "fia@example.com",
        "data[merges][FNAME]": "Fia",
        "data[merges][LNAME]": "Holm",
        "data[ip_opt]": "10.20.10.30",
        "data[campaign_id]": "cb398d21d2",
    }
    with browser() as session:
        with session.get(mailchimp_hook) as check:
            assert check.status_code == 200
        for expected in ("applied", "duplicate"):
            with session.post(mailchimp_hook, data=fields) as answer:
                assert answer.status_code == 200 and answer.json() == {"status": expected}
        apsis_hook = f"{service.url}/webhooks/apsis/{APSIS_HOOK_SECRET}"
        with session.post(apsis_hook, json={"type": "unsubscribe", "email": "gus@example.com"}) as answer:
            assert answer.json() == {"status": "applied"}
        with session.post(f"{service.url}/webhooks/apsis/wrong-secret-0000000000", json={}) as answer:
            assert answer.status_code == 404
    assert service.status_of("fia@example.com") == "unsubscribed"  # Munkeby keeps them, unsubscribed
    assert service.status_of("gus@example.com") is None  # Mysoft deletes them
