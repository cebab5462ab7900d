"""Mailed links: short link tokens now, and the links already sitting in inboxes.

Links used to carry the address's keyed hash in a serialized token. They are in
mail people still have, so they keep working: unsubscribe, manage and confirm.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from app import tokens
from app.addresses import email_hash
from app.extensions import db
from app.models import Subscription

from .support import link_in, sign_up, subscribe_and_confirm, text_body, unsubscribe_path

HOST_30 = "https://nyhetsbrev.munkeby-systemet.se"


def status(app, address: str, notice: str = "munkeby") -> str | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(Subscription.status).where(Subscription.email == address, Subscription.notice == notice)
        ).scalar_one_or_none()


def old_link(app, purpose: str, payload: dict) -> str:  # type: ignore[no-untyped-def, type-arg]
    """A link as the service mailed it before link tokens: a serialized token."""
    with app.app_context():
        return f"/{purpose}/" + tokens.make(purpose, payload)


def test_an_unsubscribe_link_mailed_in_the_old_form_still_unsubscribes_in_one_click(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "old@example.com")
    with app.app_context():
        ehash = email_hash("old@example.com")
    link = old_link(app, "unsubscribe", {"n": "munkeby", "h": ehash})
    assert "~" not in link and len(link) > 100  # the long JSON form
    assert client.get(link).status_code == 200
    assert status(app, "old@example.com") == "subscribed"  # opening it changes nothing
    answer = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert status(app, "old@example.com") == "unsubscribed"


def test_manage_and_confirm_links_mailed_in_the_old_form_still_work(app, client, mailbox):
    sign_up(client, "munkeby", "pending@example.com", "Per")
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.email == "pending@example.com")).scalar_one()
        payload = {"n": "munkeby", "h": sub.email_hash}
        nonce = sub.confirm_nonce
    manage = client.get(old_link(app, "manage", payload) + "?lang=en")
    assert manage.status_code == 200 and "pending@example.com" in manage.get_data(as_text=True)
    assert client.post(old_link(app, "confirm", {**payload, "r": nonce})).status_code == 200
    assert status(app, "pending@example.com") == "subscribed"


def test_new_links_are_short_and_name_the_subscription_not_the_address(app, client, mailbox):
    app.config["PUBLIC_URL"] = HOST_30  # a 30-character host, as the length target is stated
    sign_up(client, "munkeby", "short@example.com")
    mail = mailbox.last("short@example.com")
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.email == "short@example.com")).scalar_one()
    confirm, unsubscribe, manage = (HOST_30 + link_in_host(mail, kind) for kind in ("confirm", "unsubscribe", "manage"))
    assert max(len(confirm), len(unsubscribe), len(manage)) < 120, (confirm, unsubscribe, manage)
    for link in (confirm, unsubscribe, manage):
        assert sub.email_hash not in link and "short" not in link
        assert tokens.LINK_SEP in link


def link_in_host(message, kind: str) -> str:  # type: ignore[no-untyped-def]
    match = re.search(re.escape(HOST_30) + rf"(/{kind}/[A-Za-z0-9._~-]+)", text_body(message))
    assert match, f"no {kind} link"
    return match.group(1)


def test_a_link_for_one_notice_does_not_act_on_the_other(app, client, mailbox):
    munkeby = subscribe_and_confirm(client, mailbox, "munkeby", "both@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "both@example.com")
    path = unsubscribe_path(munkeby)
    slug, ref_part, mac = path.rsplit("/", 1)[1].split(tokens.LINK_SEP)
    assert slug == "munkeby"
    forged = f"/unsubscribe/mysoft{tokens.LINK_SEP}{ref_part}{tokens.LINK_SEP}{mac}"
    assert client.post(forged, data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert status(app, "both@example.com", "mysoft") == "subscribed"
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status(app, "both@example.com", "munkeby") == "unsubscribed"
    assert status(app, "both@example.com", "mysoft") == "subscribed"


def test_after_an_address_change_the_old_mails_manage_link_shows_nothing_of_the_new_address(app, client, mailbox):
    """Whoever reads the old mailbox (a former employer's, say) must not see where the person went."""
    from app import consent

    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "anna@oldjob.se", "Anna")
    subscribe_and_confirm(client, mailbox, "mysoft", "anna@private.se")
    manage = link_in(welcome, "manage")
    unsubscribe = unsubscribe_path(welcome)
    with app.app_context():
        ref = db.session.execute(select(Subscription.ref).where(Subscription.email == "anna@oldjob.se")).scalar_one()
        consent.rectify(ref, None, "anna@private.se", consent.Facts(channel="cli", actor="test"))
    for page in (client.get(manage + "?lang=en"), client.get(unsubscribe + "?lang=en")):
        assert page.status_code == 200
        assert "anna@private.se" not in page.get_data(as_text=True)
    nothing = client.get(manage + "?lang=en").get_data(as_text=True)
    assert "We hold no data about this address" in nothing
    assert client.post(manage + "/unsubscribe", data={"notice": "munkeby"}).status_code == 303
    assert status(app, "anna@private.se", "munkeby") == "subscribed"  # nothing done for the new address
    assert status(app, "anna@private.se", "mysoft") == "subscribed"


def test_an_old_unsubscribe_link_reaches_the_new_subscription_after_delete_and_sign_up_again(app, client, mailbox):
    """Mysoft deletes on opt-out; a person who signs up again and then uses an older mail's link is unsubscribed."""
    first = subscribe_and_confirm(client, mailbox, "mysoft", "again@example.com")
    old_link = unsubscribe_path(first)
    assert client.post(old_link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status(app, "again@example.com", "mysoft") is None  # deleted
    subscribe_and_confirm(client, mailbox, "mysoft", "again@example.com")
    assert status(app, "again@example.com", "mysoft") == "subscribed"
    assert client.post(old_link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status(app, "again@example.com", "mysoft") is None
