"""APSIS: opt-outs from a Marketing Automation flow's webhook node (the event export: test_apsis_poller.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import OutboxJob, Suppression

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
        assert answer.status_code == 400 and answer.json["detail"], body
        assert set(answer.json) == {"error", "detail", "status"} and answer.json["status"] == 400
    answer = client.post(HOOK, data="{not json", content_type="application/json")
    assert answer.status_code == 400
    got = client.get(HOOK, query_string={"type": "unsubscribe", "email": "bo@example.com"})
    assert got.status_code == 405 and got.json["error"] == "method_not_allowed" and got.headers["Allow"]
    assert held(runner, "bo@example.com")


def test_an_unknown_address_is_acknowledged_suppressed_and_deleted_at_apsis(app, client):
    answer = client.post(HOOK, json={"type": "unsubscribe", "email": "stranger@example.com"})
    assert answer.status_code == 200 and answer.json == {"status": "unknown_address"}
    assert delete_jobs(app) == 1  # Mysoft's rule: delete at APSIS too


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
    assert answer.status_code == 400 and answer.json["error"] == "bad_request" and answer.json["detail"]
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
