"""APSIS: opt-outs from a Marketing Automation flow's webhook node, and from the event report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, OutboxJob, ProviderCursor, Suppression

from .fakes.apsis import FakeApsis
from .support import notices_with_rule, provider_env, subscribe_and_confirm

SECRET = "apsis-hook-" + "c" * 24
HOOK = f"/webhooks/apsis/{SECRET}"
SECTION = "mysoft-section"


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis) -> dict[str, str]:
    return {**app_env, **provider_env(apsis=apsis), "APSIS_WEBHOOK_SECRET": SECRET}


def held(runner, address: str) -> bool:  # type: ignore[no-untyped-def]
    return runner.invoke(args=["subjects", "export", address]).exit_code == 0


def a_minute_passes(app) -> None:  # type: ignore[no-untyped-def]
    """The poller's last report call moves a minute into the past (as does the fake's clock)."""
    with app.app_context():
        for row in db.session.execute(select(ProviderCursor)).scalars():
            row.last_called_at -= timedelta(seconds=61)
        db.session.commit()


def delete_jobs(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        jobs = db.session.execute(select(OutboxJob).where(OutboxJob.kind == "sync_optout")).scalars()
        return sum(1 for job in jobs if job.payload.get("action") == "delete")


@pytest.mark.parametrize(
    "send",
    [
        lambda client, fields: client.post(HOOK, json=fields),
        lambda client, fields: client.post(HOOK, data=fields),
        lambda client, fields: client.post(HOOK, query_string=fields),
    ],
    ids=["json", "form", "query"],
)
def test_a_flow_opt_out_deletes_the_person_under_mysofts_rule(app, client, mailbox, runner, send):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    fields = {"type": "unsubscribe", "email": "Bo@Example.com"}
    answer = send(client, fields)
    assert answer.status_code == 200 and answer.json == {"status": "applied"}
    assert not held(runner, "bo@example.com")
    assert delete_jobs(app) == 1  # and deleted at APSIS by the worker
    # Without an id a repeat cannot be told from a new delivery; the state shows nothing is left to do.
    assert send(client, fields).json == {"status": "no_change"}
    with_id = {**fields, "id": "flow-run-1"}
    assert send(client, with_id).json == {"status": "no_change"}
    assert send(client, with_id).json == {"status": "duplicate"}
    assert delete_jobs(app) == 1


def test_abuse_from_a_flow_is_a_complaint(app, client, mailbox):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    assert client.post(HOOK, json={"event": "Email - Abuse", "email": "bo@example.com"}).status_code == 400
    assert client.post(HOOK, json={"event": "abuse", "email": "bo@example.com"}).json == {"status": "applied"}
    with app.app_context():
        [entry] = db.session.execute(select(Suppression)).scalars()
        assert entry.reason == "complaint"


def test_wrong_secret_bad_fields_and_get_change_nothing(app, client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    wrong = client.post("/webhooks/apsis/" + "d" * 30, json={"type": "unsubscribe", "email": "bo@example.com"})
    assert wrong.status_code == 404 and wrong.json["error"] == "not_found"  # a code, whatever the language
    for body in ({}, {"type": "unsubscribe"}, {"type": "party", "email": "bo@example.com"}, ["unsubscribe"]):
        answer = client.post(HOOK, json=body)
        assert answer.status_code == 400 and answer.json["message"], body
    answer = client.post(HOOK, data="{not json", content_type="application/json")
    assert answer.status_code == 400
    got = client.get(HOOK, query_string={"type": "unsubscribe", "email": "bo@example.com"})
    assert got.status_code == 405 and got.json["error"] == "method_not_allowed" and got.headers["Allow"]
    assert held(runner, "bo@example.com")


def test_an_unknown_address_is_acknowledged_suppressed_and_deleted_at_apsis(app, client):
    answer = client.post(HOOK, json={"type": "unsubscribe", "email": "stranger@example.com"})
    assert answer.status_code == 200 and answer.json == {"status": "unknown_address"}
    assert delete_jobs(app) == 1  # Mysoft's rule: delete at APSIS too


def test_poller_applies_report_rows_once_and_keeps_its_cursor(app, client, mailbox, runner, apsis):
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        subscribe_and_confirm(client, mailbox, "mysoft", address)
    apsis.report_interval = 0  # the real report allows one call a minute; tested below
    apsis.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, "2099-01-01T10:00:00Z")
    apsis.add_report_event("BOUNCED", "b@example.com", SECTION, "2099-01-01T10:01:00Z", bounce_type="soft")
    apsis.add_report_event("ABUSE", "c@example.com", "another-section", "2099-01-01T10:02:00Z")

    result = runner.invoke(args=["providers", "poll-apsis"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["events"] == 2 and summary["outcomes"] == {"applied": 1, "ignored": 1}
    assert not held(runner, "a@example.com")
    assert held(runner, "b@example.com") and held(runner, "c@example.com")  # soft bounce; other section

    apsis.add_report_event("ABUSE", "b@example.com", SECTION, "2099-01-01T10:03:00Z")
    a_minute_passes(app)
    result = runner.invoke(args=["providers", "poll-apsis"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["events"] == 1 and summary["outcomes"] == {"applied": 1}  # only what is new
    assert not held(runner, "b@example.com")

    # The cursor lost (e.g. restored from an old backup): rows read again have no new effect.
    with app.app_context():
        db.session.execute(ProviderCursor.__table__.update().values(cursor=None))
        db.session.commit()
    a_minute_passes(app)
    summary = json.loads(runner.invoke(args=["providers", "poll-apsis", "--since", "2099-01-01"]).stdout)
    assert summary["outcomes"] == {"duplicate": 2, "ignored": 1}
    with app.app_context():
        assert (
            db.session.execute(
                select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "opted_out")
            ).scalar_one()
            == 2
        )


def test_poller_keeps_to_one_report_call_a_minute(app, runner, apsis):
    first = runner.invoke(args=["providers", "poll-apsis"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(args=["providers", "poll-apsis"])
    assert second.exit_code == 0 and "one call a minute" in json.loads(second.stdout)["skipped"]
    assert apsis.report_calls == 1 and apsis.count_429 == 0


def test_poller_without_credentials_says_so(app, app_env, runner):
    app.config["ENV_SNAPSHOT"] = {k: v for k, v in app_env.items() if not k.startswith("APSIS_")}
    result = runner.invoke(args=["providers", "poll-apsis"])
    assert result.exit_code == 1 and "APSIS_CLIENT_ID" in result.stderr
    assert runner.invoke(args=["providers", "poll-apsis", "--notice", "munkeby"]).exit_code == 1


@pytest.mark.parametrize(
    "body",
    [
        {"type": "unsubscribe", "email": "bo@example.com", "occurred_at": "0001-01-01T00:00:00+01:00"},
        {"type": "unsubscribe", "email": "bo@example.com", "occurred_at": "yesterday"},
        {"type": "unsubscribe", "email": "bo@example.com", "id": "\ud800"},
        {"type": "unsubscribe", "email": "bo@example.com", "notice": ["mysoft"]},
        {"type": {"a": 1}, "email": "bo@example.com"},
    ],
)
def test_hostile_fields_get_a_clear_400(app, client, mailbox, runner, body):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    raw = json.dumps(body)  # keeps a lone surrogate as its escape, as a hostile sender would
    answer = client.post(HOOK, data=raw, content_type="application/json")
    assert answer.status_code == 400 and answer.json["message"]
    assert held(runner, "bo@example.com")


def test_absurdly_nested_json_gets_400(client):
    answer = client.post(HOOK, data="[" * 200_000, content_type="application/json")
    assert answer.status_code == 400


def test_a_second_real_opt_out_without_an_id_is_not_taken_for_a_repeat(app, client, mailbox, runner):
    for _ in range(2):
        subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
        answer = client.post(HOOK, json={"type": "unsubscribe", "email": "bo@example.com"})
        assert answer.json == {"status": "applied"}
        assert not held(runner, "bo@example.com")


def test_a_report_row_read_after_a_new_sign_up_does_not_undo_it(app, client, mailbox, runner, apsis):
    apsis.report_interval = 0
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    opted_out_at = datetime.now(UTC).isoformat()
    client.post(HOOK, json={"type": "unsubscribe", "email": "bo@example.com", "occurred_at": opted_out_at})
    assert not held(runner, "bo@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")  # signs up again, confirms
    apsis.add_report_event("UNSUBSCRIBED", "bo@example.com", SECTION, opted_out_at)
    result = runner.invoke(args=["providers", "poll-apsis", "--since", "2000-01-01"])
    assert json.loads(result.stdout)["outcomes"] == {"stale": 1}
    assert held(runner, "bo@example.com")


def test_a_report_row_with_an_impossible_time_is_still_applied(app, client, mailbox, runner, apsis):
    apsis.report_interval = 0
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    apsis.add_report_event("UNSUBSCRIBED", "bo@example.com", SECTION, "9999-12-31T23:59:59-01:00")
    result = runner.invoke(args=["providers", "poll-apsis", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    assert not held(runner, "bo@example.com")


class TestUnderAnUnsubscribeRule:
    @pytest.fixture
    def app_env(self, app_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
        return {**app_env, "NOTICES_DIR": str(notices_with_rule(tmp_path / "notices", "mysoft", "unsubscribe"))}

    @pytest.mark.parametrize(
        "kind, reason", [("unsubscribe", "provider_unsubscribe"), ("abuse", "complaint"), ("bounce", "bounce")]
    )
    def test_apsis_events_keep_the_person_as_unsubscribed(self, app, client, mailbox, runner, kind, reason):
        subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
        assert client.post(HOOK, json={"type": kind, "email": "bo@example.com"}).json == {"status": "applied"}
        exported = json.loads(runner.invoke(args=["subjects", "export", "bo@example.com"]).stdout)
        assert [s["status"] for s in exported["subscriptions"]] == ["unsubscribed"]
        with app.app_context():
            [entry] = db.session.execute(select(Suppression)).scalars()
            assert entry.reason == reason
            jobs = [job.kind for job in db.session.execute(select(OutboxJob)).scalars()]
            assert "sync_optout" not in jobs  # APSIS already holds the opt-out
