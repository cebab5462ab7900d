"""The likely-scanner label on a confirmation: speed alone never earns it.

A person who signs up and confirms from the same network a few seconds later is a person; a
confirmation pressed within the window from another IP address than the sign-up's is what a
mail scanner looks like, whatever user agent it sends (browsers now send reduced, shared
user-agent strings, so a scanner running one matches most people's). The label and its
basis are read as recorded.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.consent.signup import likely_scanner
from app.extensions import db
from app.models import ConsentEvent

from .support import link_in, sign_up

BROWSER = {"REMOTE_ADDR": "192.0.2.10", "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
GATEWAY = {"REMOTE_ADDR": "203.0.113.77", "HTTP_USER_AGENT": "LinkChecker/2.1 (mail security)"}


def confirmed_facts(app) -> dict:  # type: ignore[no-untyped-def]
    with app.app_context():
        event = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "consent_confirmed")).scalar_one()
        return json.loads(event.facts)


def signed_up(app, mailbox, address: str) -> str:  # type: ignore[no-untyped-def]
    browser = app.test_client()
    browser.environ_base.update(BROWSER)
    assert sign_up(browser, "munkeby", address).status_code == 303
    return link_in(mailbox.last(address), "confirm")


def test_a_person_confirming_at_once_from_the_same_browser_is_not_a_scanner(app, mailbox):
    link = signed_up(app, mailbox, "quick@example.com")
    same_browser = app.test_client()
    same_browser.environ_base.update(BROWSER)
    assert same_browser.post(link).status_code == 200
    facts = confirmed_facts(app)
    assert facts["seconds_since_sent"] < app.config["SCANNER_WINDOW_SECONDS"]  # as fast as a scanner
    assert facts["likely_scanner"] is False
    assert facts["same_ip_as_signup"] is True and facts["same_browser_as_signup"] is True


def test_a_quick_press_from_another_network_is_labelled_even_with_the_same_browser_string(app, mailbox):
    link = signed_up(app, mailbox, "mobile@example.com")
    scanner_with_a_common_agent = app.test_client()
    scanner_with_a_common_agent.environ_base.update({**BROWSER, "REMOTE_ADDR": "198.51.100.4"})
    assert scanner_with_a_common_agent.post(link).status_code == 200
    facts = confirmed_facts(app)
    assert facts["likely_scanner"] is True
    assert facts["same_ip_as_signup"] is False and facts["same_browser_as_signup"] is True


def test_the_same_network_with_another_browser_is_not_a_scanner(app, mailbox):
    link = signed_up(app, mailbox, "office@example.com")
    colleague_app = app.test_client()  # e.g. the mail app on the same office network
    colleague_app.environ_base.update({**GATEWAY, "REMOTE_ADDR": BROWSER["REMOTE_ADDR"]})
    assert colleague_app.post(link).status_code == 200
    assert confirmed_facts(app)["likely_scanner"] is False


def test_a_quick_press_from_another_network_and_agent_is_labelled_a_likely_scanner(app, mailbox):
    link = signed_up(app, mailbox, "scanned@example.com")
    gateway = app.test_client()
    gateway.environ_base.update(GATEWAY)
    assert gateway.post(link).status_code == 200
    facts = confirmed_facts(app)
    assert facts["likely_scanner"] is True
    assert facts["same_ip_as_signup"] is False and facts["same_browser_as_signup"] is False


def test_the_same_difference_after_the_window_is_not_labelled(app, mailbox):
    link = signed_up(app, mailbox, "later@example.com")
    app.config["SCANNER_WINDOW_SECONDS"] = 0  # as if the press came after the window
    gateway = app.test_client()
    gateway.environ_base.update(GATEWAY)
    assert gateway.post(link).status_code == 200
    assert confirmed_facts(app)["likely_scanner"] is False


@pytest.mark.parametrize(
    ("seconds", "same_ip", "labelled"),
    [
        (6.0, True, False),  # six seconds, the sign-up's network: a person
        (6.0, None, False),  # nothing to compare (e.g. a sign-up through the API): no signal
        (6.0, False, True),  # six seconds, someone else's network
        (60.0, False, False),  # outside the window
        (None, False, False),  # no record of the mail being sent
    ],
)
def test_the_rule(seconds, same_ip, labelled):  # type: ignore[no-untyped-def]
    assert likely_scanner(seconds, 10, same_ip) is labelled


def test_the_dashboard_shows_the_signal_in_words(app, mailbox, client, runner):  # type: ignore[no-untyped-def]
    from .test_dashboard import create_user, log_in, subscription_ref

    link = signed_up(app, mailbox, "quick@example.com")
    same_browser = app.test_client()
    same_browser.environ_base.update(BROWSER)
    assert same_browser.post(link).status_code == 200
    create_user(runner, "maria@munkeby.se", "viewer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    page = client.get(f"/dashboard/subscribers/{subscription_ref(app, 'quick@example.com')}?lang=en")
    shown = page.get_data(as_text=True)
    assert "likely a mail scanner:</dt><dd>no</dd>" in shown
    assert "same IP address as the sign-up:</dt><dd>yes</dd>" in shown
    assert "same browser (user agent) as the sign-up:</dt><dd>yes</dd>" in shown


def test_a_label_recorded_by_speed_alone_says_so(app, client, runner):  # type: ignore[no-untyped-def]
    """Confirmations recorded before the rule looked at the network were labelled by speed alone."""
    from app.dashboard import words

    with app.test_request_context("/?lang=en"):
        old = dict(words.fact_lines({"seconds_since_sent": 4.2, "likely_scanner": True}))
        new = dict(words.fact_lines({"likely_scanner": True, "same_ip_as_signup": False}))
    assert old["likely a mail scanner"] == "yes (by speed alone, an earlier rule)"
    assert new["likely a mail scanner"] == "yes"
