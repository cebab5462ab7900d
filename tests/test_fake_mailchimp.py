"""The Mailchimp fake, driven by the real mailchimp-marketing client over HTTP."""

from __future__ import annotations

import json
import threading

import mailchimp_marketing as MailchimpMarketing
import pytest
import requests
from mailchimp_marketing.api_client import ApiClientError

from tests.fakes.mailchimp import FakeMailchimp, subscriber_hash

LIST_ID = "abc123def4"


def make_client(fake: FakeMailchimp, api_key: str | None = None) -> MailchimpMarketing.Client:
    client = MailchimpMarketing.Client()
    client.set_config({"api_key": api_key or fake.api_key, "server": "us1", "timeout": 5})
    client.api_client.host = fake.url
    return client


@pytest.fixture
def fake():
    with FakeMailchimp() as server:
        server.add_list(LIST_ID, merge_fields=[{"tag": "FNAME", "name": "First Name", "type": "text"}])
        yield server


def problem(exc: ApiClientError) -> dict:
    return json.loads(exc.text)


def test_ping(fake: FakeMailchimp) -> None:
    assert make_client(fake).ping.get() == {"health_status": "Everything's Chimpy!"}
    method, path, _ = fake.requests[-1]
    assert (method, path) == ("GET", "/3.0/ping")
    assert fake.request_headers[-1]["Authorization"].startswith("Basic ")


def test_wrong_api_key_is_401_problem_json(fake: FakeMailchimp) -> None:
    with pytest.raises(ApiClientError) as info:
        make_client(fake, api_key="wrong-us1").ping.get()
    assert info.value.status_code == 401
    assert problem(info.value)["title"] == "API Key Invalid"


def test_set_list_member_upserts_then_get(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    email = "Anna@Example.org"
    h = subscriber_hash(email)
    body = {"email_address": email, "status_if_new": "pending", "merge_fields": {"FNAME": "Anna"},
            "ip_signup": "192.0.2.1", "timestamp_signup": "2024-05-01 10:00:00"}
    created = client.lists.set_list_member(LIST_ID, h, body)
    assert created["id"] == h
    assert created["status"] == "pending"
    assert created["timestamp_signup"] == "2024-05-01T10:00:00+00:00"

    updated = client.lists.set_list_member(LIST_ID, h, {**body, "status": "subscribed"})
    assert updated["status"] == "subscribed"
    fetched = client.lists.get_list_member(LIST_ID, h)
    assert fetched["email_address"] == email
    assert fetched["merge_fields"] == {"FNAME": "Anna"}
    assert fake.members[LIST_ID][h]["status"] == "subscribed"
    assert [m for m, _, _ in fake.requests] == ["PUT", "PUT", "GET"]


def test_unknown_list_is_404_problem_json(fake: FakeMailchimp) -> None:
    with pytest.raises(ApiClientError) as info:
        make_client(fake).lists.get_list_member("nope", subscriber_hash("a@example.org"))
    assert info.value.status_code == 404
    body = problem(info.value)
    assert body["title"] == "Resource Not Found"
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    raw = requests.get(f"{fake.url}/lists/nope/members/x", auth=("u", fake.api_key), timeout=5)
    assert raw.headers["Content-Type"].startswith("application/problem+json")


def test_delete_permanent_then_get_is_404_and_address_is_forgotten(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    email = "gone@example.org"
    h = subscriber_hash(email)
    client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status_if_new": "subscribed"})
    response = client.lists.delete_list_member_permanent(LIST_ID, h)
    # 204 with no body: the SDK hands back the requests.Response itself
    assert isinstance(response, requests.Response)
    assert response.status_code == 204

    with pytest.raises(ApiClientError) as info:
        client.lists.get_list_member(LIST_ID, h)
    assert info.value.status_code == 404
    with pytest.raises(ApiClientError) as info:
        client.lists.delete_list_member_permanent(LIST_ID, h)
    assert info.value.status_code == 404

    with pytest.raises(ApiClientError) as info:
        client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status_if_new": "subscribed"})
    assert info.value.status_code == 400
    assert problem(info.value)["title"] == "Forgotten Email Not Subscribed"
    again = client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status_if_new": "pending"})
    assert again["status"] == "pending"


def test_compliance_state_is_400_with_title(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    email = "left@example.org"
    h = subscriber_hash(email)
    client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status_if_new": "subscribed"})
    client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status": "unsubscribed"})

    with pytest.raises(ApiClientError) as info:
        client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status": "subscribed"})
    assert info.value.status_code == 400
    assert isinstance(info.value.text, str)  # problem+json is not 'application/json': text, not a dict
    assert problem(info.value)["title"] == "Member In Compliance State"
    assert str(info.value) == ""  # the SDK's exception carries nothing in args

    pending = client.lists.set_list_member(LIST_ID, h, {"email_address": email, "status": "pending"})
    assert pending["status"] == "pending"


def test_unknown_merge_field_is_invalid_resource(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    email = "m@example.org"
    body = {"email_address": email, "status_if_new": "subscribed", "merge_fields": {"UNSUBURL": "https://x"}}
    with pytest.raises(ApiClientError) as info:
        client.lists.set_list_member(LIST_ID, subscriber_hash(email), body)
    assert info.value.status_code == 400
    assert problem(info.value)["title"] == "Invalid Resource"

    created = client.lists.add_list_merge_field(LIST_ID, {"tag": "UNSUBURL", "name": "Unsubscribe URL", "type": "url"})
    assert (created["tag"], created["type"]) == ("UNSUBURL", "url")
    tags = [(f["tag"], f["name"], f["type"]) for f in client.lists.get_list_merge_fields(LIST_ID)["merge_fields"]]
    assert ("UNSUBURL", "Unsubscribe URL", "url") in tags
    member = client.lists.set_list_member(LIST_ID, subscriber_hash(email), body)
    assert member["merge_fields"]["UNSUBURL"] == "https://x"


def test_bodiless_429_is_returned_not_raised(fake: FakeMailchimp) -> None:
    fake.enqueue_failure(429)
    response = make_client(fake).ping.get()
    # Known trait of mailchimp-marketing 3.0.80: no Content-Type -> returns the Response, no exception
    assert isinstance(response, requests.Response)
    assert response.status_code == 429
    assert response.content == b""
    assert "Content-Type" not in response.headers
    assert make_client(fake).ping.get() == {"health_status": "Everything's Chimpy!"}


def test_injected_failure_with_body_raises(fake: FakeMailchimp) -> None:
    fake.enqueue_failure(503, {"title": "Service Unavailable", "status": 503}, {"Retry-After": "1"})
    with pytest.raises(ApiClientError) as info:
        make_client(fake).ping.get()
    assert info.value.status_code == 503
    assert problem(info.value)["title"] == "Service Unavailable"


def test_batch_list_members_counts_and_errors(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    fake.add_member(LIST_ID, "old@example.org", status="subscribed")
    result = client.lists.batch_list_members(LIST_ID, {
        "members": [
            {"email_address": "new@example.org", "status": "subscribed", "merge_fields": {"FNAME": "N"}},
            {"email_address": "old@example.org", "status": "subscribed", "merge_fields": {"FNAME": "O"}},
            {"email_address": "not-an-address", "status": "subscribed"},
        ],
        "update_existing": True,
    })
    assert (result["total_created"], result["total_updated"], result["error_count"]) == (1, 1, 1)
    assert [m["email_address"] for m in result["new_members"]] == ["new@example.org"]
    assert [m["email_address"] for m in result["updated_members"]] == ["old@example.org"]
    [error] = result["errors"]
    assert error["email_address"] == "not-an-address"
    assert error["error_code"] == "ERROR_GENERIC"
    assert "looks fake or invalid" in error["error"]
    assert fake.member(LIST_ID, "old@example.org")["merge_fields"]["FNAME"] == "O"


def test_batch_over_500_is_400(fake: FakeMailchimp) -> None:
    members = [{"email_address": f"p{i}@example.org", "status": "subscribed"} for i in range(501)]
    with pytest.raises(ApiClientError) as info:
        make_client(fake).lists.batch_list_members(LIST_ID, {"members": members, "update_existing": True})
    assert info.value.status_code == 400
    assert fake.members[LIST_ID] == {}


def test_latency_and_max_concurrent(fake: FakeMailchimp) -> None:
    fake.latency = 0.3
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(make_client(fake).ping.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert fake.max_concurrent >= 2


def test_client_timeout_against_latency_is_api_client_error(fake: FakeMailchimp) -> None:
    fake.latency = 2
    client = make_client(fake)
    client.api_client.timeout = 0.2
    with pytest.raises(ApiClientError) as info:
        client.ping.get()
    assert info.value.status_code is None
    assert isinstance(info.value.text, requests.exceptions.Timeout)


def test_set_config_resets_unspecified_keys(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    client.set_config({"timeout": 5})  # forgets api_key and server
    assert client.api_client.api_key == ""
    assert client.api_client.server == "invalid-server"
    client = MailchimpMarketing.Client({"api_key": "abc-us7"})
    assert client.api_client.server == "us7"  # derived from the key's suffix when no server is given
