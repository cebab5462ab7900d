"""One serializer of evidence events: the API, the dashboard's timeline and the export agree."""

from __future__ import annotations

import json
from datetime import datetime

from app.events import event_time, serialize_event
from app.models import ConsentEvent, EventDetail

from .support import subscribe_and_confirm
from .test_api import make_token
from .test_dashboard import create_user, log_in

COMMON = {"seq", "type", "at", "notice", "notice_version", "channel", "facts"}


def an_event() -> ConsentEvent:
    return ConsentEvent(
        seq=7,
        at=datetime(2026, 1, 2, 9, 0, 0),
        type="consent_confirmed",
        notice="munkeby",
        notice_version="a" * 64,
        subscription_ref="f" * 32,
        channel="form",
        facts='{"human":true}',
    )


def test_the_common_fields_and_each_option():
    event = an_event()
    plain = serialize_event(event)
    assert plain == {
        "seq": 7,
        "type": "consent_confirmed",
        "at": "2026-01-02T09:00:00.000000Z",
        "notice": "munkeby",
        "notice_version": "a" * 64,
        "channel": "form",
        "facts": {"human": True},
    }
    assert serialize_event(event, with_ref=True) == {**plain, "subscription_ref": "f" * 32}
    detail = EventDetail(event_id=7, subscription_ref="f" * 32, salt="s", details='{"ip":"127.0.0.1"}')
    assert serialize_event(event, detail) == {**plain, "details": {"ip": "127.0.0.1"}}
    assert serialize_event(event, notice="mysoft")["notice"] == "mysoft"
    assert event_time(datetime(2026, 1, 2, 9, 0, 0, 5)) == "2026-01-02T09:00:00.000005Z"


def test_the_api_the_export_and_the_timeline_show_the_same_events(app, client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna")
    api = client.get("/api/v1/events?email=anna@example.com", headers=make_token(runner, "read")).json["events"]
    exported = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)["events"]
    assert api and len(api) == len(exported)
    for from_api, in_export in zip(api, exported, strict=True):
        assert set(in_export) - {"details"} == COMMON  # the export's shape, unchanged
        assert set(from_api) - {"details"} == COMMON | {"subscription_ref"}  # the API's, unchanged
        assert {k: v for k, v in from_api.items() if k != "subscription_ref"} == in_export
    assert any("details" in event for event in exported)

    create_user(runner, "maria@munkeby.se", "viewer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    ref = api[0]["subscription_ref"]
    page = client.get(f"/dashboard/subscribers/{ref}").get_data(as_text=True)
    for event in exported:
        shown = event["at"][:19].replace("T", " ")
        assert f'<time datetime="{event["at"]}">{shown} UTC</time>' in page
        assert f"#{event['seq']}" in page and f'data-event="{event["type"]}"' in page
