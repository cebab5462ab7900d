"""`subjects export` prints everything held about a person as JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from app import create_app
from app.extensions import db

from .support import Mailbox, subscribe_and_confirm, unsubscribe_path


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


def test_evidence_records_the_client_ip_seen_through_the_trusted_proxy(app, app_env, runner):
    behind_proxy = create_app(env={**app_env, "TRUSTED_PROXY_COUNT": "1"})
    client = behind_proxy.test_client()
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.7"
    subscribe_and_confirm(client, Mailbox(Path(app.config["MAIL_DIR"])), "munkeby", "anna@example.com")
    data = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)
    ips = {e["details"]["ip"] for e in data["events"] if "details" in e}
    assert ips == {"198.51.100.7"}
    with behind_proxy.app_context():
        db.engine.dispose()


def test_forwarded_for_is_ignored_without_a_trusted_proxy(client, mailbox, runner):
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.7"
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    data = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)
    assert {e["details"]["ip"] for e in data["events"] if "details" in e} == {"127.0.0.1"}
