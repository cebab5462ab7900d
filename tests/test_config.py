"""Start-up: the embedded default needs nothing; production refuses missing secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import create_app
from app.config import ConfigError, load_settings

from .support import run_flask

REPO = Path(__file__).resolve().parent.parent


def test_development_default_generates_and_keeps_a_secret_key(tmp_path):
    env = {"INSTANCE_PATH": str(tmp_path)}
    first = load_settings(env)
    second = load_settings(env)
    assert first["SECRET_KEY"] == second["SECRET_KEY"] and len(first["SECRET_KEY"]) >= 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert first["SUPPRESSION_PEPPER"] != first["SECRET_KEY"]
    assert first["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'consent.sqlite3'}"


@pytest.mark.parametrize("missing", ["SECRET_KEY", "PUBLIC_URL", "SUPPRESSION_PEPPER"])
def test_production_refuses_to_start_without_its_secrets(tmp_path, missing):
    env = {
        "APP_ENV": "production",
        "INSTANCE_PATH": str(tmp_path),
        "SECRET_KEY": "k" * 40,
        "PUBLIC_URL": "https://news.example.org",
        "SUPPRESSION_PEPPER": "p" * 40,
    }
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(env)


def test_production_start_up_fails_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "PUBLIC_URL", "SUPPRESSION_PEPPER")}
    env.update(APP_ENV="production", INSTANCE_PATH=str(tmp_path))
    result = run_flask(env, "outbox", "status")
    assert result.returncode != 0
    assert "APP_ENV=production needs SECRET_KEY, PUBLIC_URL" in result.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("APP_ENV", "prod"),
        ("PUBLIC_URL", "news.example.org"),
        ("PUBLIC_URL", "https://news.example.org/" + "x" * 200),  # links must fit a header line
        ("PUBLIC_URL", "https://nyhetsbrev.exempel.se/för"),
        ("SMTP_PORT", "abc"),
        ("CONFIRMATIONS_PER_ADDRESS", "0"),
        ("DKIM_SELECTOR", "nl2026"),  # DKIM is all three settings or none
    ],
)
def test_malformed_settings_are_refused_by_name(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({"INSTANCE_PATH": str(tmp_path), name: value})


def test_links_use_public_url_not_the_request_host(app, client, mailbox):
    from .support import sign_up

    sign_up(client, "munkeby", "anna@example.com", Host="evil.example", **{"X-Forwarded-Host": "evil.example"})
    mail = mailbox.last("anna@example.com")
    assert "evil.example" not in mail.as_string()
    assert mail["List-Unsubscribe"].startswith("<https://news.example.org/unsubscribe/")


def test_every_page_carries_the_security_headers(client):
    for path in ("/", "/munkeby/subscribe", "/mysoft/privacy", "/confirm/bad", "/unsubscribe/bad", "/nowhere"):
        response = client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "http" not in csp
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_health_check_answers(client):
    answer = client.get("/healthz").get_json()
    assert answer["status"] == "ok"
    assert answer["ledger"] == {
        "pending_events": 0,
        "oldest_pending_seconds": None,
        "max_merge_delay_seconds": 60.0,
        "within_merge_delay": True,
    }


def test_app_builds_from_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app()
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert (tmp_path / "consent.sqlite3").exists()
    from app.extensions import db

    with app.app_context():
        db.engine.dispose()


def test_provider_settings_are_read_into_named_keys_and_nothing_else_of_the_environment(tmp_path):
    env = {
        "INSTANCE_PATH": str(tmp_path),
        "MAILCHIMP_API_KEY": "0123abcd-us21",
        "MAILCHIMP_API_URL": "http://127.0.0.1:8001/3.0",
        "APSIS_CLIENT_ID": "client",
        "APSIS_CLIENT_SECRET": "secret-value",
        "MUNKEBY_LIST_ID": "list-from-env",
        "MYSOFT_EMAIL_ATTRIBUTE": "attr-email",
        "MYSOFT_TOPIC": "",  # empty: the notice file's value stands
        "ACME_LIST_ID": "no-such-notice",
        "UNRELATED_SETTING": "x",
    }
    settings = load_settings(env)
    assert settings["MAILCHIMP_API_KEY"] == "0123abcd-us21"
    assert settings["MAILCHIMP_API_URL"] == "http://127.0.0.1:8001/3.0"
    assert (settings["APSIS_CLIENT_ID"], settings["APSIS_CLIENT_SECRET"]) == ("client", "secret-value")
    assert settings["APSIS_API_URL"] == "https://api.apsis.one"
    overrides = {"MUNKEBY_LIST_ID": "list-from-env", "MYSOFT_EMAIL_ATTRIBUTE": "attr-email"}
    assert settings["NOTICE_PROVIDER_IDS"] == overrides
    assert "ENV_SNAPSHOT" not in settings and "UNRELATED_SETTING" not in settings
    unset = load_settings({"INSTANCE_PATH": str(tmp_path)})
    assert unset["MAILCHIMP_API_KEY"] == unset["MAILCHIMP_API_URL"] == unset["APSIS_CLIENT_ID"] == ""


def test_the_notices_take_their_provider_ids_from_the_settings(app_env):
    app = create_app(env={**app_env, "MUNKEBY_LIST_ID": "list-from-env"})
    try:
        assert app.extensions["notices"]["munkeby"].provider["list_id"] == "list-from-env"
    finally:
        from app.extensions import db

        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.mark.parametrize(
    "env, name",
    [
        ({"MAILCHIMP_API_KEY": "hidden key-us1"}, "MAILCHIMP_API_KEY"),
        ({"MAILCHIMP_API_KEY": "hiddenkey-us 1"}, "MAILCHIMP_API_KEY"),
        ({"MAILCHIMP_API_KEY": "hiddenkey-"}, "MAILCHIMP_API_KEY"),
        ({"MAILCHIMP_API_URL": "hidden.example/3.0"}, "MAILCHIMP_API_URL"),
        ({"APSIS_API_URL": "ftp://hidden.example"}, "APSIS_API_URL"),
        ({"APSIS_CLIENT_ID": "hidden-id"}, "APSIS_CLIENT_ID and APSIS_CLIENT_SECRET"),
        ({"APSIS_CLIENT_SECRET": "hidden-secret"}, "APSIS_CLIENT_ID and APSIS_CLIENT_SECRET"),
        ({"APSIS_CLIENT_ID": "id", "APSIS_CLIENT_SECRET": "hidden\tsecret"}, "APSIS_CLIENT_SECRET"),
    ],
)
def test_malformed_provider_settings_are_refused_by_name_without_their_value(tmp_path, env, name):
    with pytest.raises(ConfigError, match=name) as refused:
        load_settings({"INSTANCE_PATH": str(tmp_path), **env})
    assert "hidden" not in str(refused.value)
