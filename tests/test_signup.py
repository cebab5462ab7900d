"""Sign-up: the form, what it asks, what it answers, and the confirmation mail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import create_app
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .browser.harness import launched_chromium
from .support import REPO, csrf_token, free_port, link_in, live_server, sign_up, text_body, unsubscribe_path


def count(app, model) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_form_is_swedish_by_default_and_english_when_preferred(client):
    sv = client.get("/munkeby/subscribe").get_data(as_text=True)
    assert '<html lang="sv">' in sv and "E-postadress" in sv and "Prenumerera" in sv
    en = client.get("/munkeby/subscribe", headers={"Accept-Language": "en-GB,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in en and "E-mail address" in en and "Subscribe" in en


def test_form_asks_only_what_the_notice_collects(client):
    munkeby = client.get("/munkeby/subscribe").get_data(as_text=True)
    mysoft = client.get("/mysoft/subscribe").get_data(as_text=True)
    assert 'name="email"' in munkeby and 'name="name"' in munkeby
    assert 'name="email"' in mysoft and 'name="name"' not in mysoft


def test_consent_box_is_not_ticked_and_notice_is_linked(client):
    page = client.get("/mysoft/subscribe").get_data(as_text=True)
    box = re.search(r"<input[^>]*name=\"consent\"[^>]*>", page).group(0)
    assert 'type="checkbox"' in box and "checked" not in box
    assert 'href="/mysoft/privacy' in page
    assert "APSIS" in page  # the notice summary is on the form
    assert client.get("/mysoft/privacy").status_code == 200


def test_sign_up_without_consent_is_refused_and_changes_nothing(app, client):
    data = {"csrf_token": csrf_token(client, "/munkeby/subscribe"), "email": "a@example.com"}
    response = client.post("/munkeby/subscribe", data=data)
    assert response.status_code == 400
    assert "kryssa i rutan" in response.get_data(as_text=True)
    assert count(app, Subscription) == 0 and count(app, ConsentEvent) == 0


def test_sign_up_sends_a_confirmation_mail_and_shows_check_your_inbox(client, mailbox):
    response = sign_up(client, "munkeby", "Anna.Berg@Example.COM", "Anna Berg")
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Titta i din inkorg" in page
    mail = mailbox.last("anna.berg@example.com")
    assert mail["Subject"] == "Bekräfta din prenumeration på Munkeby Systems nyhetsbrev"
    assert mail.get_body(("plain",)) is not None and mail.get_body(("html",)) is not None
    assert link_in(mail, "confirm").startswith("/confirm/")
    assert unsubscribe_path(mail).startswith("/unsubscribe/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in text_body(mail)


def test_english_visitor_gets_english_mail(client, mailbox):
    sign_up(client, "mysoft", "eve@example.com", **{"Accept-Language": "en"})
    assert mailbox.last("eve@example.com")["Subject"] == "Please confirm your subscription to Mysoft AB newsletter"


def test_answer_is_the_same_for_known_and_unknown_addresses(client, mailbox):
    first = sign_up(client, "munkeby", "known@example.com")
    link = link_in(mailbox.last("known@example.com"), "confirm")
    client.post(link)
    again = sign_up(client, "munkeby", "known@example.com")
    fresh = sign_up(client, "munkeby", "fresh@example.com")
    assert first.status_code == again.status_code == fresh.status_code == 303
    assert again.headers["Location"] == fresh.headers["Location"]
    assert client.get(again.headers["Location"]).data == client.get(fresh.headers["Location"]).data


def test_honeypot_answers_as_usual_but_sends_nothing(app, client, mailbox):
    data = {
        "csrf_token": csrf_token(client, "/munkeby/subscribe"),
        "email": "bot@example.com",
        "consent": "y",
        "website": "http://spam.example",
    }
    response = client.post("/munkeby/subscribe", data=data)
    assert response.status_code == 303
    assert mailbox.to("bot@example.com") == []
    assert count(app, Subscription) == 0


def test_bad_input_gets_a_clear_error_and_changes_nothing(app, client, mailbox):
    token = csrf_token(client, "/munkeby/subscribe")
    cases = [
        {"email": "not-an-address"},
        {"email": "a" * 250 + "@example.com"},
        {"email": "x@example.com\r\nBcc: victim@example.com"},
        {"email": "ok@example.com", "name": "Eve\r\nBcc: victim@example.com"},
        {"email": "ok@example.com", "name": "n" * 101},
        {"email": ""},
    ]
    for fields in cases:
        response = client.post("/munkeby/subscribe", data={"csrf_token": token, "consent": "y", **fields})
        assert response.status_code == 400, fields
        assert 'class="error"' in response.get_data(as_text=True)
    assert count(app, Subscription) == 0 and mailbox.messages() == []


def test_unknown_notice_is_404(client):
    assert client.get("/nobody/subscribe").status_code == 404
    assert client.post("/nobody/subscribe", data={"email": "a@example.com"}).status_code in (400, 404)
    assert client.get("/nobody/privacy").status_code == 404


def test_at_most_three_confirmation_mails_per_address_per_day(client, mailbox):
    for _ in range(5):
        assert sign_up(client, "munkeby", "bombed@example.com").status_code == 303
    assert len(mailbox.to("bombed@example.com")) == 3


def test_per_ip_rate_limit_answers_429_with_a_page(app, client):
    app.config["SUBSCRIBE_RATE_LIMIT"] = "3 per hour"
    statuses = [sign_up(client, "mysoft", f"p{i}@example.com").status_code for i in range(4)]
    assert statuses == [303, 303, 303, 429]
    page = client.post("/mysoft/subscribe", data={"email": "x@example.com"})
    assert page.status_code == 429 and "För många försök" in page.get_data(as_text=True)
    assert client.get("/mysoft/subscribe").status_code == 200  # GETs are not counted


def test_request_over_one_megabyte_is_413(client):
    response = client.post("/munkeby/subscribe", data={"email": "a@example.com", "name": "x" * (1024 * 1024 + 1)})
    assert response.status_code == 413


def test_sign_up_without_the_forms_token_is_refused(app, client, mailbox):
    response = client.post("/munkeby/subscribe", data={"email": "a@example.com", "consent": "y"})
    assert response.status_code == 400
    assert "Formuläret hade gått ut" in response.get_data(as_text=True)
    assert count(app, Subscription) == 0 and mailbox.messages() == []


def test_the_form_sets_no_cookie_and_its_token_is_the_forms_own(client):
    """The token sits in the form, not in a session: another browser may send the form it was given."""
    page = client.get("/munkeby/subscribe")
    assert page.headers.getlist("Set-Cookie") == []
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    elsewhere = client.application.test_client(use_cookies=False)
    data = {"csrf_token": token, "email": "a@example.com", "consent": "y"}
    assert elsewhere.post("/munkeby/subscribe", data=data).status_code == 303


EMAIL_REQUIRED = "Please enter your e-mail address."
EMAIL_INVALID = "That does not look like a valid e-mail address."
TICK = "You need to tick the box to subscribe."
NAME_REQUIRED = "This field is required."
NAME_INVALID = "Please check this value."


def errors_shown(page: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The error summary's entries (field, message) in order, and each field's own message."""
    summary = re.search(r'<div class="errors"[^>]*id="error-summary"[^>]*>(.*?)</div>', page, re.S)
    assert summary, "no error summary"
    listed = re.findall(r'<li><a href="#([\w-]+)">([^<]+)</a></li>', summary.group(1))
    beside = dict(re.findall(r'<p class="error" id="([\w-]+)-error">([^<]+)</p>', page))
    for field in beside:
        assert re.search(rf'<input[^>]*aria-describedby="{field}-error"[^>]*aria-invalid="true"', page), field
    return listed, beside


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"email": ""}, [("email", EMAIL_REQUIRED), ("consent", TICK)]),
        ({"email": "not-an-address"}, [("email", EMAIL_INVALID), ("consent", TICK)]),
        (
            {"email": "  ", "name": "Eve\r\nBcc: x@example.com"},
            [("email", EMAIL_REQUIRED), ("name", NAME_INVALID), ("consent", TICK)],
        ),
        ({"email": "a@example.com", "name": "n" * 101}, [("name", NAME_INVALID), ("consent", TICK)]),
        ({"email": "bad@", "consent": "y"}, [("email", EMAIL_INVALID)]),
    ],
    ids=["empty and unticked", "invalid and unticked", "empty, bad name, unticked", "long name, unticked", "only one"],
)
def test_every_error_is_shown_at_once_beside_its_field_and_in_the_summary(app, client, mailbox, fields, expected):
    data = {"csrf_token": csrf_token(client, "/munkeby/subscribe?lang=en"), **fields}
    answer = client.post("/munkeby/subscribe?lang=en", data=data)
    assert answer.status_code == 400
    listed, beside = errors_shown(answer.get_data(as_text=True))
    assert listed == expected  # in the order of the form
    assert beside == dict(expected)
    assert count(app, Subscription) == 0 and count(app, OutboxJob) == 0 and mailbox.messages() == []


def notices_requiring_name(folder: Path) -> Path:
    """A copy of the shipped notice files in which Munkeby's form requires the name."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "notices").glob("*.toml"):
        text = source.read_text(encoding="utf-8")
        if source.stem == "munkeby":
            text, changed = re.subn(r'(?m)^required = \["email"\]', 'required = ["email", "name"]', text)
            assert changed == 1, "the notice's required fields are no longer written as this test expects"
        (folder / source.name).write_text(text, encoding="utf-8")
    return folder


def test_a_missing_required_name_is_shown_with_the_other_errors(app_env, tmp_path, mailbox):
    app = create_app(env={**app_env, "NOTICES_DIR": str(notices_requiring_name(tmp_path / "notices"))})
    try:
        client = app.test_client()
        form = client.get("/munkeby/subscribe?lang=en").get_data(as_text=True)
        assert re.search(r'<input[^>]*name="name"[^>]*required', form)
        data = {"csrf_token": csrf_token(client, "/munkeby/subscribe"), "email": "", "name": "   "}
        answer = client.post("/munkeby/subscribe?lang=en", data=data)
        assert answer.status_code == 400
        expected = [("email", EMAIL_REQUIRED), ("name", NAME_REQUIRED), ("consent", TICK)]
        assert errors_shown(answer.get_data(as_text=True)) == (expected, dict(expected))
        data.update(email="anna@example.com", name="Anna", consent="y")
        assert client.post("/munkeby/subscribe", data=data).status_code == 303
    finally:
        app.extensions["after_response"].wait_idle(timeout=60)
        with app.app_context():
            db.engine.dispose()


@pytest.mark.e2e
@pytest.mark.browser
def test_after_a_failed_sign_up_the_browser_focuses_the_error_summary(app_env):
    """Focus moves by the summary's ``autofocus`` (the CSP allows no inline script): checked in Chromium."""
    port = free_port()
    served = create_app(env={**app_env, "PUBLIC_URL": f"http://127.0.0.1:{port}"})
    try:
        with launched_chromium() as browser, live_server(served, port) as base:
            page = browser.new_page(locale="en-GB")  # type: ignore[attr-defined]
            page.goto(f"{base}/munkeby/subscribe")
            assert page.evaluate("document.activeElement === document.body")  # nothing to correct yet
            page.click("button[type=submit]")  # nothing filled in, the box unticked
            page.wait_for_selector("#error-summary")
            assert page.evaluate("document.activeElement.id") == "error-summary"
            assert page.locator("#error-summary li").all_inner_texts() == [EMAIL_REQUIRED, TICK]
            assert page.locator("p.error").all_inner_texts() == [EMAIL_REQUIRED, TICK]
            page.click("#error-summary a[href='#email']")  # each entry leads to its field
            page.close()
    finally:
        with served.app_context():
            db.engine.dispose()


def test_an_address_has_one_identity_however_its_domain_is_written(app):
    from app.addresses import normalise_email

    with app.app_context():
        assert normalise_email("Åsa@Exämple.SE") == normalise_email("åsa@xn--exmple-cua.se") == "åsa@xn--exmple-cua.se"
        assert normalise_email(" Anna@Example.COM ") == "anna@example.com"
