"""The subscriber's own page, and self-service export and erasure over HTTP."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import link_in, subscribe_and_confirm, text_body, unsubscribe_path


def manage_path(message) -> str:  # type: ignore[no-untyped-def]
    return link_in(message, "manage")


def data_path(message) -> str:  # type: ignore[no-untyped-def]
    return link_in(message, "manage/data")


def status_of(app, address: str, notice: str) -> str | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(Subscription.status).where(Subscription.email == address, Subscription.notice == notice)
        ).scalar_one_or_none()


def events(app, kind: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == kind)
        ).scalar_one()


def test_every_mail_and_the_unsubscribe_page_link_to_the_manage_page(client, mailbox):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "anna@firma.se", "Anna Berg")
    page = client.get(manage_path(welcome))
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "anna@firma.se" in body and "Anna Berg" in body and 'data-status="subscribed"' in body
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "same-origin"
    confirmation = mailbox.to("anna@firma.se")[0]
    assert "/manage/" in text_body(confirmation)
    unsubscribe_page = client.get(unsubscribe_path(welcome)).get_data(as_text=True)
    assert re.search(r'href="/manage/[A-Za-z0-9._~-]+"', unsubscribe_page)


def test_a_link_shows_and_acts_on_its_own_notice_only(app, client, mailbox):
    munkeby_welcome = subscribe_and_confirm(client, mailbox, "munkeby", "bo@firma.se", "Bo Ek")
    mysoft_welcome = subscribe_and_confirm(client, mailbox, "mysoft", "bo@firma.se")
    munkeby, mysoft = manage_path(munkeby_welcome), manage_path(mysoft_welcome)
    mysoft_page = client.get(mysoft + "?lang=en").get_data(as_text=True)
    assert "Mysoft AB" in mysoft_page and "Munkeby" not in mysoft_page and "Bo Ek" not in mysoft_page
    munkeby_page = client.get(munkeby + "?lang=en").get_data(as_text=True)
    assert "Munkeby Systems" in munkeby_page and "Bo Ek" in munkeby_page and "Mysoft" not in munkeby_page

    # The Munkeby link cannot act on Mysoft, whatever the form says (there, an opt-out deletes).
    for notice in ("mysoft", "all"):
        assert client.post(munkeby + "/unsubscribe", data={"notice": notice}).status_code == 400
    assert client.post(munkeby + "/name", data={"notice": "mysoft", "name": "X"}).status_code == 400
    assert status_of(app, "bo@firma.se", "mysoft") == "subscribed"
    # An unsubscribe link turned into a manage link stays on its notice too.
    turned = client.get(unsubscribe_path(munkeby_welcome)).get_data(as_text=True)
    manage_from_unsubscribe = re.search(r'href="(/manage/[A-Za-z0-9._~-]+)"', turned).group(1)
    assert "Mysoft" not in client.get(manage_from_unsubscribe + "?lang=en").get_data(as_text=True)

    # Withdrawal needs one POST: no login, no CSRF token, no mail round trip (Art. 7(3)).
    mails_before = len(mailbox.to("bo@firma.se"))
    answer = client.post(munkeby + "/unsubscribe", data={"notice": "munkeby"})
    assert answer.status_code == 303
    assert len(mailbox.to("bo@firma.se")) == mails_before
    assert status_of(app, "bo@firma.se", "munkeby") == "unsubscribed"
    assert status_of(app, "bo@firma.se", "mysoft") == "subscribed"
    assert "Du är avregistrerad." in client.get(answer.headers["Location"]).get_data(as_text=True)
    assert events(app, "opted_out") == 1


def test_a_link_mailed_to_the_address_shows_every_controller_separately(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "eva@firma.se", "Eva")
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "eva@firma.se")
    client.post(manage_path(welcome) + "/request", data={"kind": "export"})
    page = client.get(data_path(mailbox.last("eva@firma.se")) + "?lang=en").get_data(as_text=True)
    assert 'data-controller="munkeby"' in page and 'data-controller="mysoft"' in page
    assert "Munkeby Systems" in page and "Mysoft AB" in page
    document = json.loads(client.post(data_path(mailbox.last("eva@firma.se"))).get_data(as_text=True))
    assert sorted(s["controller"] for s in document["subscriptions"]) == ["Munkeby Systems", "Mysoft AB"]


def test_a_forwarded_link_cannot_use_up_the_persons_own_data_requests(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "ulf@firma.se", "Ulf")
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "ulf@firma.se")
    forwarded = manage_path(mailbox.to("ulf@firma.se")[1])  # the Munkeby welcome mail, forwarded
    before = len(mailbox.to("ulf@firma.se"))
    for _ in range(app.config["DATA_REQUESTS_PER_ADDRESS"] + 2):
        client.post(forwarded + "/request", data={"kind": "export"})
    assert len(mailbox.to("ulf@firma.se")) - before == app.config["DATA_REQUESTS_PER_ADDRESS"]
    client.post(manage_path(welcome) + "/request", data={"kind": "export"})  # the person's own other link
    assert len(mailbox.to("ulf@firma.se")) - before == app.config["DATA_REQUESTS_PER_ADDRESS"] + 1


def test_the_person_corrects_their_name_and_bad_names_change_nothing(app, client, mailbox):
    path = manage_path(subscribe_and_confirm(client, mailbox, "munkeby", "cia@firma.se", "Cia"))
    assert client.post(path + "/name", data={"notice": "munkeby", "name": "Cia Lund"}).status_code == 303
    assert client.post(path + "/name", data={"notice": "munkeby", "name": "x\r\nBcc: a@b.se"}).status_code == 400
    assert client.post(path + "/name", data={"notice": "mysoft", "name": "Cia"}).status_code == 400  # no name field
    with app.app_context():
        assert db.session.execute(select(Subscription.name)).scalar_one() == "Cia Lund"
    assert events(app, "rectified") == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_following_links_changes_nothing(app, client, mailbox, method):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "dan@firma.se", "Dan")
    path = manage_path(welcome)
    client.post(path + "/request", data={"kind": "erase"})
    link = data_path(mailbox.last("dan@firma.se"))
    with app.app_context():
        jobs = db.session.execute(select(func.count()).select_from(OutboxJob)).scalar_one()
    for target in (path, link):
        for _ in range(5):
            assert client.open(target, method=method).status_code in (200, 204)
    assert status_of(app, "dan@firma.se", "munkeby") == "subscribed"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(OutboxJob)).scalar_one() == jobs


def test_an_export_goes_through_a_mailed_link_that_works_once(app, client, mailbox):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "eva@firma.se", "Eva")
    path = manage_path(welcome)
    answer = client.post(path + "/request", data={"kind": "export"})
    assert answer.status_code == 303
    mail = mailbox.last("eva@firma.se")
    assert "List-Unsubscribe" not in mail  # a reply to the person's own request, not a list mail
    link = data_path(mail)
    assert "Download" in client.get(link + "?lang=en").get_data(as_text=True)

    download = client.post(link)
    assert download.status_code == 200 and download.mimetype == "application/json"
    assert "attachment" in download.headers["Content-Disposition"]
    document = json.loads(download.get_data(as_text=True))
    assert document["email"] == "eva@firma.se"
    [sub] = document["subscriptions"]
    assert sub["data"] == {"email": "eva@firma.se", "name": "Eva", "language": "sv"}
    assert sub["purpose"] == "newsletter" and sub["lawful_basis"] == "consent"
    assert sub["source"].startswith("sign-up form ")
    assert sub["recipients"][0]["name"].startswith("Mailchimp")
    assert "365" in json.dumps(sub["retention"])
    kinds = [e["type"] for e in document["events"]]
    assert kinds[:3] == ["signup_requested", "confirmation_sent", "consent_confirmed"]
    assert all(len(e["notice_version"]) == 64 for e in document["events"])

    again = client.post(link)
    assert again.status_code == 410 and "already been used" in client.post(link + "?lang=en").get_data(as_text=True)
    assert events(app, "subject_exported") == 1


@pytest.mark.parametrize("kind", ["export", "erase"])
def test_a_data_link_expires(app, client, mailbox, kind):
    path = manage_path(subscribe_and_confirm(client, mailbox, "munkeby", "fia@firma.se", "Fia"))
    client.post(path + "/request", data={"kind": kind})
    link = data_path(mailbox.last("fia@firma.se"))
    with _later(app, -1):
        assert client.get(link).status_code == 200  # still good a second before its end
    with _later(app, 1):
        expired = client.post(link + "?lang=en")
        assert expired.status_code == 410 and "This link has expired" in expired.get_data(as_text=True)
    assert status_of(app, "fia@firma.se", "munkeby") == "subscribed"
    assert events(app, "subject_exported") == 0 and events(app, "erasure_requested") == 0


def _later(app, seconds: int):  # type: ignore[no-untyped-def]
    """``seconds`` past (or, negative, before) the end of a data link's lifetime."""
    return time_machine.travel(datetime.now(UTC) + timedelta(seconds=app.config["DATA_LINK_MAX_AGE"] + seconds))


def test_erasure_through_the_mailed_link_erases_everything_and_says_so(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "gun@firma.se", "Gun")
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "gun@firma.se")
    path = manage_path(welcome)
    client.post(path + "/request", data={"kind": "erase"})
    link = data_path(mailbox.last("gun@firma.se"))
    page = client.post(link + "?lang=en")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Your data has been erased" in body and "Munkeby Systems" in body and "Mysoft AB" in body
    assert status_of(app, "gun@firma.se", "munkeby") is None and status_of(app, "gun@firma.se", "mysoft") is None
    [last] = mailbox.to("gun@firma.se")  # the earlier mail was removed with the data
    assert "erased" in last["Subject"] or "raderade" in last["Subject"] or "raderats" in last["Subject"]
    with app.app_context():
        mail_jobs = db.session.execute(select(OutboxJob.payload).where(OutboxJob.kind == "mail")).scalars()
        assert not any("gun@firma.se" in json.dumps(p) for p in mail_jobs)  # the last mail's address is wiped

    reused = client.post(link)
    assert reused.status_code == 410
    assert "We hold no data about this address" in client.get(path + "?lang=en").get_data(as_text=True)


def test_requests_for_links_are_limited_per_address_and_say_nothing_more(app, client, mailbox):
    path = manage_path(subscribe_and_confirm(client, mailbox, "munkeby", "hans@firma.se", "Hans"))
    before = len(mailbox.to("hans@firma.se"))
    for _ in range(app.config["DATA_REQUESTS_PER_ADDRESS"] + 2):
        assert client.post(path + "/request", data={"kind": "export"}).status_code == 303
    assert len(mailbox.to("hans@firma.se")) - before == app.config["DATA_REQUESTS_PER_ADDRESS"]


def test_bad_links_get_a_clear_page_and_change_nothing(client):
    assert client.get("/manage/not-a-token").status_code == 400
    for action in ("unsubscribe", "name", "request"):
        assert client.post(f"/manage/not-a-token/{action}", data={"notice": "all", "kind": "erase"}).status_code == 400
    assert client.get("/manage/data/not-a-token").status_code == 400
    assert client.post("/manage/data/not-a-token").status_code == 400


def test_a_manage_token_is_not_an_unsubscribe_or_data_token(client, mailbox):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "ida@firma.se", "Ida")
    manage_token = manage_path(welcome).rsplit("/", 1)[1]
    unsubscribe_token = unsubscribe_path(welcome).rsplit("/", 1)[1]
    assert client.post(f"/unsubscribe/{manage_token}", data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert client.get(f"/manage/{unsubscribe_token}").status_code == 400
    assert client.post(f"/manage/data/{manage_token}").status_code == 400


def test_bad_form_values_are_refused(app, client, mailbox):
    path = manage_path(subscribe_and_confirm(client, mailbox, "munkeby", "jan@firma.se", "Jan"))
    assert client.post(path + "/unsubscribe", data={"notice": "nope"}).status_code == 400
    assert client.post(path + "/request", data={"kind": "delete-everything"}).status_code == 400
    assert status_of(app, "jan@firma.se", "munkeby") == "subscribed"


def test_an_imported_contact_sees_where_their_address_came_from_and_the_facts_held(app, client, mailbox, runner):
    csv_text = "email;Senast\nlead@firma.se;2026-10-01\n"
    result = runner.invoke(
        args=[
            "contacts", "import", "-", "--notice", "mysoft", "--basis", "legitimate_interest",
            "--source", "https://www.firma.se/kontakt", "--source-date", "2026-11-01",
            "--email-column", "email", "--last-contact-column", "Senast",
        ],
        input=csv_text,
    )
    assert result.exit_code == 0, result.output
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0  # the Art. 14 mail
    page = client.get(manage_path(mailbox.last("lead@firma.se")) + "?lang=en").get_data(as_text=True)
    assert "https://www.firma.se/kontakt" in page and "legitimate interest" in page
    # Dates in the page's language, the way a reader writes them, not as stored.
    assert 'data-relationship="prospect"' in page and "Oct 1, 2026" in page and "2026-10-01" not in page
    swedish = client.get(manage_path(mailbox.last("lead@firma.se")) + "?lang=sv").get_data(as_text=True)
    assert "1 okt. 2026" in swedish and "prospekt" in swedish and "berättigat intresse" in swedish
