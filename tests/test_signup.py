"""Sign-up: the form, what it asks, what it answers, and the confirmation mail."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, Subscription

from .support import csrf_token, link_in, sign_up, text_body, unsubscribe_path


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


def test_sign_up_without_csrf_token_is_refused(app, client, mailbox):
    response = client.post("/munkeby/subscribe", data={"email": "a@example.com", "consent": "y"})
    assert response.status_code == 400
    assert "Formuläret hade gått ut" in response.get_data(as_text=True)
    assert count(app, Subscription) == 0 and mailbox.messages() == []


def test_an_address_has_one_identity_however_its_domain_is_written(app):
    from app.addresses import normalise_email

    with app.app_context():
        assert normalise_email("Åsa@Exämple.SE") == normalise_email("åsa@xn--exmple-cua.se") == "åsa@xn--exmple-cua.se"
        assert normalise_email(" Anna@Example.COM ") == "anna@example.com"
