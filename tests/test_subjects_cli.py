"""`subjects export` prints everything held about a person as JSON."""

from __future__ import annotations

import json
from datetime import datetime

from .support import subscribe_and_confirm, unsubscribe_path


def test_export_prints_subscriptions_and_evidence(app, client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "Anna@Example.com", "Anna Berg")
    result = runner.invoke(args=["subjects", "export", "anna@example.com"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["email"] == "anna@example.com"
    [sub] = data["subscriptions"]
    assert sub["notice"] == "munkeby" and sub["status"] == "subscribed" and sub["name"] == "Anna Berg"
    assert sub["notice_version"] == app.extensions["notices"]["munkeby"].version
    assert sub["source"].startswith("sign-up form https://news.example.org/munkeby/subscribe")
    types = [e["type"] for e in data["events"]]
    assert types == ["signup_requested", "confirmation_sent", "consent_confirmed"]
    for event in data["events"]:
        datetime.fromisoformat(event["at"])
        assert event["notice_version"] and event["channel"]
    assert data["events"][0]["details"]["email"] == "anna@example.com"


def test_export_shows_unsubscribed_status(client, mailbox, runner):
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    data = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)
    assert data["subscriptions"][0]["status"] == "unsubscribed"
    assert data["events"][-1]["type"] == "opted_out"


def test_export_of_an_unknown_or_deleted_address_fails_clearly(client, mailbox, runner):
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    for address in ("bo@example.com", "never@example.com"):
        result = runner.invoke(args=["subjects", "export", address])
        assert result.exit_code == 1 and "nothing is held" in result.stderr and result.stdout == ""


def test_export_rejects_a_malformed_address(runner):
    result = runner.invoke(args=["subjects", "export", "not an address"])
    assert result.exit_code == 2 and "not a valid e-mail address" in result.stderr
