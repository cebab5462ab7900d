"""The Mailchimp fake against Mailchimp's documentation, driven by the official client.

Every call goes through ``mailchimp_marketing.Client`` (3.0.80), so what the fake judges is the
request the client really builds, and what the test sees is what the client makes of the answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import mailchimp_marketing as MailchimpMarketing
import pytest
import requests
from mailchimp_marketing.api_client import ApiClientError

from tests.fakes.mailchimp import (
    BATCH_LIMIT,
    WEBHOOK_TIME_FORMAT,
    FakeMailchimp,
    subscriber_hash,
    webhook_fields,
)

LIST_ID = "abc123def4"
PERMISSION = "perm-email"


def make_client(fake: FakeMailchimp, api_key: str | None = None, timeout: float = 5) -> MailchimpMarketing.Client:
    client = MailchimpMarketing.Client()
    client.set_config({"api_key": api_key or fake.api_key, "server": "us1", "timeout": timeout})
    client.api_client.host = fake.url
    return client


@pytest.fixture
def fake() -> Iterator[FakeMailchimp]:
    with FakeMailchimp() as server:
        server.add_list(LIST_ID, marketing_permissions=[PERMISSION])
        yield server


@pytest.fixture
def client(fake: FakeMailchimp) -> MailchimpMarketing.Client:
    return make_client(fake)


def problem(exc: ApiClientError) -> dict[str, Any]:
    assert isinstance(exc.text, str)  # problem+json is not 'application/json' to the client: the raw text
    return json.loads(exc.text)


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiClientError) as info:
        call(*args, **kwargs)
    return info.value.status_code, problem(info.value)


def put(client: MailchimpMarketing.Client, email: str, **body: Any) -> dict[str, Any]:
    return client.lists.set_list_member(LIST_ID, subscriber_hash(email), {"email_address": email, **body})


# -- transport, authentication, errors ------------------------------------------------------


def test_ping_with_basic_auth(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    assert client.ping.get() == {"health_status": "Everything's Chimpy!"}
    assert fake.requests[-1][:2] == ("GET", "/3.0/ping")
    assert fake.request_headers[-1]["Authorization"].startswith("Basic ")


def test_wrong_api_key_is_401(fake: FakeMailchimp) -> None:
    status, body = refused(make_client(fake, api_key="wrong-us1").ping.get)
    assert (status, body["title"]) == (401, "API Key Invalid")


@pytest.mark.parametrize("path", ["/lists/nope/members/x", f"/lists/{LIST_ID}/nothing", f"/lists/{LIST_ID}/members/"])
def test_wrong_paths_are_404_problem_documents(client: MailchimpMarketing.Client, path: str) -> None:
    status, body = refused(client.api_client.call_api, path, "GET")
    assert status == 404
    assert body["title"] == "Resource Not Found" and body["status"] == 404
    assert set(body) >= {"type", "title", "status", "detail", "instance"}


def test_wrong_methods_are_405_with_allow(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    path = f"/lists/{LIST_ID}/members/{subscriber_hash('a@example.org')}/actions/delete-permanent"
    status, body = refused(client.api_client.call_api, path, "GET")
    assert (status, body["title"]) == (405, "Method Not Allowed")
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    status, _ = refused(client.api_client.call_api, f"/lists/{LIST_ID}/merge-fields", "PUT", None, None, None, {})
    assert status == 405
    raw = requests.get(f"{fake.url}{path}", auth=("anyone", fake.api_key), timeout=5)
    assert raw.headers["Allow"] == "POST"
    assert raw.headers["Content-Type"].startswith("application/problem+json")


def test_unknown_list_is_404(client: MailchimpMarketing.Client) -> None:
    status, body = refused(client.lists.get_list_member, "nope", subscriber_hash("a@example.org"))
    assert (status, body["title"]) == (404, "Resource Not Found")


# -- merge fields -----------------------------------------------------------------------------


def test_merge_fields_page_10_by_default(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    assert fake.merge_tags(LIST_ID) == ["FNAME", "LNAME", "ADDRESS", "PHONE"]  # the documented defaults
    fake.add_merge_fields(LIST_ID, 8)
    first = client.lists.get_list_merge_fields(LIST_ID)
    assert fake.request_queries[-1] == {}  # the client sends no count: the default applies
    assert len(first["merge_fields"]) == 10 and first["total_items"] == 12
    assert [f["tag"] for f in first["merge_fields"]][-1] == "EXTRA6"
    second = client.lists.get_list_merge_fields(LIST_ID, offset=10)
    assert [f["tag"] for f in second["merge_fields"]] == ["EXTRA7", "EXTRA8"]
    everything = client.lists.get_list_merge_fields(LIST_ID, count=1000)
    assert len(everything["merge_fields"]) == 12
    only_tags = client.lists.get_list_merge_fields(LIST_ID, count=2, fields=["merge_fields.tag", "total_items"])
    assert only_tags == {"merge_fields": [{"tag": "FNAME"}, {"tag": "LNAME"}], "total_items": 12}


def test_merge_fields_count_over_1000(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    with pytest.raises(ValueError):  # the client itself refuses before sending
        client.lists.get_list_merge_fields(LIST_ID, count=1001)
    status, body = refused(client.api_client.call_api, f"/lists/{LIST_ID}/merge-fields", "GET", None,
                           [("count", 1001)])
    assert (status, body["errors"][0]["field"]) == (400, "count")


def test_add_merge_field_with_an_existing_tag_is_400(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    body = {"tag": "UNSUBURL", "name": "Unsubscribe link", "type": "url", "public": False}
    created = client.lists.add_list_merge_field(LIST_ID, body)
    assert (created["tag"], created["type"], created["list_id"]) == ("UNSUBURL", "url", LIST_ID)
    status, answer = refused(client.lists.add_list_merge_field, LIST_ID, body)
    assert (status, answer["title"]) == (400, "Invalid Resource")
    fake.remove_merge_field(LIST_ID, "UNSUBURL")
    assert "UNSUBURL" not in fake.merge_tags(LIST_ID)
    assert client.lists.add_list_merge_field(LIST_ID, body)["tag"] == "UNSUBURL"
    status, answer = refused(client.lists.add_list_merge_field, LIST_ID, {"tag": "X", "type": "url"})
    assert status == 400 and answer["errors"] == [{"field": "name", "message": "This value should not be blank."}]


def test_unknown_and_ill_typed_merge_values_are_refused(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    status, body = refused(put, client, "m@example.org", status_if_new="subscribed", merge_fields={"UNSUBURL": "x"})
    assert (status, body["title"], body["errors"][0]["field"]) == (400, "Invalid Resource", "UNSUBURL")
    fake.add_merge_field(LIST_ID, "UNSUBURL", type="url")
    status, body = refused(put, client, "m@example.org", status_if_new="subscribed", merge_fields={"UNSUBURL": "x"})
    assert status == 400
    member = put(client, "m@example.org", status_if_new="subscribed", merge_fields={"UNSUBURL": "https://u.example"})
    assert member["merge_fields"]["UNSUBURL"] == "https://u.example"


def test_required_merge_field_and_skip_merge_validation(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    fake.add_merge_field(LIST_ID, "CITY", required=True)
    status, body = refused(put, client, "r@example.org", status_if_new="subscribed")
    assert (status, body["errors"][0]["field"]) == (400, "CITY")
    member = client.lists.set_list_member(LIST_ID, subscriber_hash("r@example.org"),
                                          {"email_address": "r@example.org", "status_if_new": "subscribed"},
                                          skip_merge_validation=True)
    assert member["status"] == "subscribed"


# -- the member upsert --------------------------------------------------------------------------


def test_put_takes_every_documented_field(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    email = "Anna@Example.org"
    body = {"status_if_new": "subscribed", "status": "subscribed", "merge_fields": {"FNAME": "Anna", "LNAME": "Berg"},
            "language": "sv", "ip_signup": "192.0.2.1", "timestamp_signup": "2024-05-01T10:00:00+02:00",
            "ip_opt": "192.0.2.2", "timestamp_opt": "2024-05-01T10:05:00Z",
            "marketing_permissions": [{"marketing_permission_id": PERMISSION, "enabled": True}]}
    created = put(client, email, **body)
    assert created["id"] == subscriber_hash(email) and created["status"] == "subscribed"
    assert created["timestamp_signup"] == "2024-05-01T08:00:00+00:00"
    assert created["timestamp_opt"] == "2024-05-01T10:05:00+00:00"
    assert created["marketing_permissions"] == [{"marketing_permission_id": PERMISSION, "text": PERMISSION,
                                                  "enabled": True}]
    assert created["full_name"] == "Anna Berg" and created["language"] == "sv"
    fetched = client.lists.get_list_member(LIST_ID, subscriber_hash(email))
    assert fetched["email_address"] == email and fetched["merge_fields"]["FNAME"] == "Anna"
    assert client.lists.get_list_member(LIST_ID, email)["id"] == created["id"]  # the address is accepted too
    assert fake.member(LIST_ID, email)["ip_opt"] == "192.0.2.2"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"marketing_permissions": [{"marketing_permission_id": "unknown", "enabled": True}]}, "marketing_permissions"),
        ({"marketing_permissions": [{"marketing_permission_id": PERMISSION, "enabled": "yes"}]},
         "marketing_permissions"),
        ({"consent": True}, "consent"),
        ({"status": "archived"}, "status"),
        ({"timestamp_opt": "2024-05-01 10:00:00"}, "timestamp_opt"),
        ({"ip_opt": "not-an-ip"}, "ip_opt"),
    ],
)
def test_put_refuses_what_the_schema_does_not_have(fake: FakeMailchimp, client: MailchimpMarketing.Client,
                                                    extra: dict[str, Any], field: str) -> None:
    status, body = refused(put, client, "x@example.org", status_if_new="subscribed", **extra)
    assert (status, body["title"]) == (400, "Invalid Resource")
    assert field in [e["field"] for e in body["errors"]]
    assert fake.member(LIST_ID, "x@example.org") is None


def test_put_hash_must_be_the_address(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    body = {"email_address": "one@example.org", "status_if_new": "subscribed"}
    status, answer = refused(client.lists.set_list_member, LIST_ID, subscriber_hash("two@example.org"), body)
    assert (status, answer["errors"][0]["field"]) == (400, "email_address")
    status, answer = refused(client.lists.set_list_member, LIST_ID, subscriber_hash("one@example.org"),
                             {"email_address": "one@example.org"})
    assert (status, answer["errors"][0]["field"]) == (400, "status_if_new")


def test_patch_updates_and_knows_no_transactional(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    h = subscriber_hash("p@example.org")
    status, _ = refused(client.lists.update_list_member, LIST_ID, h, {"status": "unsubscribed"})
    assert status == 404
    put(client, "p@example.org", status_if_new="subscribed")
    assert client.lists.update_list_member(LIST_ID, h, {"status": "unsubscribed"})["status"] == "unsubscribed"
    status, _ = refused(client.lists.update_list_member, LIST_ID, h, {"status": "transactional"})
    assert status == 400


# -- compliance state and permanent deletion ----------------------------------------------------


@pytest.mark.parametrize("left", ["unsubscribed", "cleaned"])
def test_compliance_state_refuses_subscribed_but_takes_pending(fake: FakeMailchimp,
                                                               client: MailchimpMarketing.Client, left: str) -> None:
    email = "left@example.org"
    put(client, email, status_if_new="subscribed")
    put(client, email, status_if_new="subscribed", status=left)
    status, body = refused(put, client, email, status_if_new="subscribed", status="subscribed")
    assert (status, body["title"]) == (400, "Member In Compliance State")
    assert put(client, email, status_if_new="pending", status="pending")["status"] == "pending"
    status, body = refused(put, client, email, status_if_new="subscribed", status="subscribed")
    assert body["title"] == "Member In Compliance State"  # still, until the person confirms Mailchimp's mail
    fake.confirm(LIST_ID, email)
    assert put(client, email, status_if_new="subscribed", status="subscribed")["status"] == "subscribed"


def test_delete_permanent_then_the_address_is_refused_even_as_pending(fake: FakeMailchimp,
                                                                      client: MailchimpMarketing.Client) -> None:
    email = "gone@example.org"
    h = subscriber_hash(email)
    put(client, email, status_if_new="subscribed")
    response = client.lists.delete_list_member_permanent(LIST_ID, h)
    assert isinstance(response, requests.Response) and response.status_code == 204  # no body: handed back as is
    assert fake.requests[-1][2] is None  # the client sends the JSON body "null"
    status, _ = refused(client.lists.get_list_member, LIST_ID, h)
    assert status == 404
    status, _ = refused(client.lists.delete_list_member_permanent, LIST_ID, h)
    assert status == 404
    for wanted in ("subscribed", "pending"):
        status, body = refused(put, client, email, status_if_new=wanted, status=wanted)
        assert (status, body["title"]) == (400, "Forgotten Email Not Subscribed")
    answer = client.lists.batch_list_members(LIST_ID, {"members": [{"email_address": email, "status": "pending"}],
                                                       "update_existing": True})
    assert answer["error_count"] == 1 and "permanently deleted" in answer["errors"][0]["error"]
    assert fake.member(LIST_ID, email) is None


def test_delete_permanent_is_404_when_absent(client: MailchimpMarketing.Client) -> None:
    status, body = refused(client.lists.delete_list_member_permanent, LIST_ID, subscriber_hash("never@example.org"))
    assert (status, body["title"]) == (404, "Resource Not Found")


def test_temporary_signup_refusal_is_injectable(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    fake.refuse_signups("busy@example.org", times=2)
    status, body = refused(put, client, "busy@example.org", status_if_new="subscribed")
    assert (status, body["title"]) == (400, "Invalid Resource")
    assert "signed up to a lot of lists very recently" in body["detail"]
    answer = client.lists.batch_list_members(LIST_ID, {"members": [
        {"email_address": "busy@example.org", "status": "subscribed"},
        {"email_address": "calm@example.org", "status": "subscribed"},
    ]})
    assert answer["total_created"] == 1 and "very recently" in answer["errors"][0]["error"]
    assert put(client, "busy@example.org", status_if_new="subscribed")["status"] == "subscribed"


# -- batch subscribe or unsubscribe ---------------------------------------------------------------


def test_batch_answers_per_member(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    fake.add_member(LIST_ID, "old@example.org")
    fake.add_member(LIST_ID, "out@example.org", status="unsubscribed")
    answer = client.lists.batch_list_members(LIST_ID, {"members": [
        {"email_address": "new@example.org", "status": "subscribed", "merge_fields": {"FNAME": "N"}},
        {"email_address": "old@example.org", "status": "unsubscribed"},
        {"email_address": "not-an-address", "status": "subscribed"},
        {"email_address": "out@example.org", "status": "subscribed"},
        {"email_address": "odd@example.org", "status": "subscribed", "merge_fields": {"NOPE": "x"}},
    ], "update_existing": True})
    assert (answer["total_created"], answer["total_updated"], answer["error_count"]) == (1, 1, 3)
    assert [m["email_address"] for m in answer["new_members"]] == ["new@example.org"]
    assert [m["email_address"] for m in answer["updated_members"]] == ["old@example.org"]
    errors = {e["email_address"]: e for e in answer["errors"]}
    for error in errors.values():
        assert set(error) == {"email_address", "error", "error_code", "field", "field_message"}
        assert error["error_code"] == "ERROR_GENERIC"
    assert "looks fake or invalid" in errors["not-an-address"]["error"]
    assert "compliance" in errors["out@example.org"]["error"]
    assert errors["odd@example.org"]["field"] == "NOPE" and errors["odd@example.org"]["field_message"]
    assert fake.member(LIST_ID, "old@example.org")["status"] == "unsubscribed"


def test_batch_without_update_existing_refuses_members_that_exist(fake: FakeMailchimp,
                                                                  client: MailchimpMarketing.Client) -> None:
    fake.add_member(LIST_ID, "old@example.org")
    answer = client.lists.batch_list_members(LIST_ID, {"members": [
        {"email_address": "old@example.org", "status": "unsubscribed"},
        {"email_address": "new@example.org", "status": "subscribed"},
    ]})
    [error] = answer["errors"]
    assert (error["email_address"], error["error_code"]) == ("old@example.org", "ERROR_CONTACT_EXISTS")
    assert answer["total_created"] == 1
    assert fake.member(LIST_ID, "old@example.org")["status"] == "subscribed"


def test_batch_member_with_marketing_permissions_is_refused(fake: FakeMailchimp,
                                                            client: MailchimpMarketing.Client) -> None:
    permissions = [{"marketing_permission_id": PERMISSION, "enabled": True}]
    answer = client.lists.batch_list_members(LIST_ID, {"members": [
        {"email_address": "gdpr@example.org", "status": "subscribed", "marketing_permissions": permissions},
        {"email_address": "plain@example.org", "status": "subscribed"},
    ], "update_existing": True})
    [error] = answer["errors"]
    assert (error["email_address"], error["field"]) == ("gdpr@example.org", "marketing_permissions")
    assert fake.member(LIST_ID, "gdpr@example.org") is None
    assert fake.member(LIST_ID, "plain@example.org")["status"] == "subscribed"

    fake.batch_schema_errors = "request"  # the other reading: the whole call is refused
    status, body = refused(client.lists.batch_list_members, LIST_ID, {"members": [
        {"email_address": "gdpr@example.org", "status": "subscribed", "marketing_permissions": permissions},
        {"email_address": "other@example.org", "status": "subscribed"},
    ]})
    assert (status, body["title"]) == (400, "Invalid Resource")
    assert fake.member(LIST_ID, "other@example.org") is None


def test_batch_limits_and_body(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    members = [{"email_address": f"p{i}@example.org", "status": "subscribed"} for i in range(BATCH_LIMIT + 1)]
    status, _ = refused(client.lists.batch_list_members, LIST_ID, {"members": members, "update_existing": True})
    assert status == 400 and fake.members[LIST_ID] == {}
    answer = client.lists.batch_list_members(LIST_ID, {"members": members[:BATCH_LIMIT]})
    assert answer["total_created"] == BATCH_LIMIT
    status, body = refused(client.lists.batch_list_members, LIST_ID, {"members": [], "replace": True})
    assert (status, body["errors"][0]["field"]) == (400, "replace")
    status, body = refused(client.lists.batch_list_members, LIST_ID, {"update_existing": True})
    assert (status, body["errors"][0]["field"]) == (400, "members")


def test_batch_duplicates(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    twice = {"members": [{"email_address": "d@example.org", "status": "subscribed"},
                         {"email_address": "D@example.org", "status": "unsubscribed"}]}
    answer = client.lists.batch_list_members(LIST_ID, twice)
    assert answer["total_created"] == 1 and answer["error_count"] == 1
    answer = client.lists.batch_list_members(LIST_ID, twice, skip_duplicate_check=True)
    assert answer["error_count"] == 1  # the first is now an existing member and update_existing is off


# -- limits and faults --------------------------------------------------------------------------


def _ping_all(fake: FakeMailchimp, n: int) -> list[Any]:
    results: list[Any] = []
    clients = [make_client(fake) for _ in range(n)]
    start = threading.Barrier(n)

    def ping(client: MailchimpMarketing.Client) -> None:
        start.wait()
        try:
            results.append(client.ping.get())
        except ApiClientError as exc:
            results.append(exc)

    threads = [threading.Thread(target=ping, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_more_than_10_simultaneous_connections_get_429(fake: FakeMailchimp) -> None:
    fake.latency = 1.0
    results = _ping_all(fake, 13)
    ok = [r for r in results if isinstance(r, dict)]
    limited = [r for r in results if isinstance(r, ApiClientError)]
    assert len(ok) == 10 and len(limited) == 3 and fake.count_429 == 3
    assert all(r.status_code == 429 and problem(r)["title"] == "Too Many Requests" for r in limited)
    assert fake.max_concurrent > 10  # refused callers were connected too, briefly


def test_429_without_body_is_returned_not_raised(fake: FakeMailchimp) -> None:
    fake.latency = 1.0
    fake.bodiless_429 = True
    results = _ping_all(fake, 11)
    [limited] = [r for r in results if isinstance(r, requests.Response)]
    assert limited.status_code == 429 and limited.content == b"" and "Content-Type" not in limited.headers
    fake.latency = 0
    fake.enqueue_failure(429, headers={"Retry-After": "1"})
    response = make_client(fake).ping.get()
    assert isinstance(response, requests.Response) and response.status_code == 429
    assert make_client(fake).ping.get() == {"health_status": "Everything's Chimpy!"}


def test_injected_failure_with_body_raises(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    fake.enqueue_failure(503, {"title": "Service Unavailable", "status": 503}, {"Retry-After": "1"},
                         method="GET", path_contains="/ping")
    status, body = refused(client.ping.get)
    assert (status, body["title"]) == (503, "Service Unavailable")


def test_outage_answers_503(fake: FakeMailchimp, client: MailchimpMarketing.Client) -> None:
    fake.outage_until = time.monotonic() + 60
    status, _ = refused(client.ping.get)
    assert status == 503 and fake.outage_answers == 1
    fake.outage_until = 0
    assert client.ping.get()["health_status"]


def test_client_timeout_against_latency(fake: FakeMailchimp) -> None:
    fake.latency = 2
    with pytest.raises(ApiClientError) as info:
        make_client(fake, timeout=0.2).ping.get()
    assert info.value.status_code is None
    assert isinstance(info.value.text, requests.exceptions.Timeout)


def test_set_config_resets_unspecified_keys(fake: FakeMailchimp) -> None:
    client = make_client(fake)
    client.set_config({"timeout": 5})  # forgets api_key and server
    assert client.api_client.api_key == "" and client.api_client.server == "invalid-server"
    assert MailchimpMarketing.Client({"api_key": "abc-us7"}).api_client.server == "us7"


# -- webhooks -------------------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint on 127.0.0.1 keeping what it receives."""

    def __init__(self, get_status: int = 200) -> None:
        self.gets: list[str] = []
        self.posts: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                receiver.gets.append(self.headers.get("User-Agent", ""))
                self.send_response(get_status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.posts.append((self.headers["Content-Type"], dict(parse_qsl(raw))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_add_webhook_validates_the_url_with_a_get(fake: FakeMailchimp, client: MailchimpMarketing.Client,
                                                  receiver: Receiver) -> None:
    body = {"url": receiver.url, "events": {"unsubscribe": True, "cleaned": True},
            "sources": {"user": True, "admin": True}}
    hook = client.lists.create_list_webhook(LIST_ID, body)
    assert receiver.gets and hook["url"] == receiver.url
    assert hook["events"] == {"subscribe": False, "unsubscribe": True, "profile": False, "cleaned": True,
                              "upemail": False, "campaign": False}
    assert client.lists.get_list_webhooks(LIST_ID)["total_items"] == 1
    status, answer = refused(client.lists.create_list_webhook, LIST_ID, {"url": receiver.url + "2",
                                                                         "events": {"unsub": True}})
    assert (status, answer["errors"][0]["field"]) == (400, "events")


def test_add_webhook_refuses_a_url_that_does_not_answer_200(fake: FakeMailchimp,
                                                            client: MailchimpMarketing.Client) -> None:
    failing = Receiver(get_status=404)
    try:
        status, body = refused(client.lists.create_list_webhook, LIST_ID, {"url": failing.url})
    finally:
        failing.close()
    assert (status, body["title"]) == (400, "Invalid Resource")
    assert fake.webhooks[LIST_ID] == []


def test_unsubscribe_deliveries_are_form_encoded(fake: FakeMailchimp, client: MailchimpMarketing.Client,
                                                 receiver: Receiver) -> None:
    client.lists.create_list_webhook(LIST_ID, {"url": receiver.url, "events": {"unsubscribe": True},
                                               "sources": {"user": True, "admin": True}})
    fake.add_member(LIST_ID, "anna@example.com", merge_fields={"FNAME": "Anna"})
    fake.add_member(LIST_ID, "berit@example.com")
    fake.unsubscribe_member(LIST_ID, "anna@example.com", reason="abuse", campaign_id="cb398d21d2")
    fake.unsubscribe_member(LIST_ID, "berit@example.com", action="delete")
    (kind, own), (_, admins) = receiver.posts
    assert kind == "application/x-www-form-urlencoded"
    assert own["type"] == "unsubscribe"
    time.strptime(own["fired_at"], WEBHOOK_TIME_FORMAT)
    assert (own["data[action]"], own["data[reason]"], own["data[campaign_id]"]) == ("unsub", "abuse", "cb398d21d2")
    assert own["data[email]"] == "anna@example.com" and own["data[merges][FNAME]"] == "Anna"
    assert own["data[list_id]"] == LIST_ID
    assert (admins["data[action]"], admins["data[email]"]) == ("delete", "berit@example.com")
    assert fake.member(LIST_ID, "anna@example.com")["status"] == "unsubscribed"
    assert subscriber_hash("anna@example.com") in fake.compliance[LIST_ID]


def test_api_changes_are_delivered_only_to_hooks_with_the_api_source(fake: FakeMailchimp,
                                                                     client: MailchimpMarketing.Client,
                                                                     receiver: Receiver) -> None:
    client.lists.create_list_webhook(LIST_ID, {"url": receiver.url, "events": {"subscribe": True, "unsubscribe": True},
                                               "sources": {"user": True}})
    put(client, "q@example.org", status_if_new="subscribed")
    assert fake.wait_for_webhooks() and receiver.posts == []
    client.lists.update_list_webhook(LIST_ID, fake.webhooks[LIST_ID][0]["id"], {"sources": {"api": True}})
    put(client, "q@example.org", status_if_new="subscribed", status="unsubscribed")
    assert fake.wait_for_webhooks()
    [(_, fields)] = receiver.posts
    assert (fields["type"], fields["data[action]"], fields["data[email]"]) == ("unsubscribe", "unsub", "q@example.org")


def test_webhook_fields_flatten_nested_data() -> None:
    fields = webhook_fields("upemail", {"list_id": LIST_ID, "new_email": "b@example.org", "old_email": "a@example.org",
                                        "merges": {"FNAME": "A"}}, fired_at="2026-11-22 10:00:00")
    assert fields == {"type": "upemail", "fired_at": "2026-11-22 10:00:00", "data[list_id]": LIST_ID,
                      "data[new_email]": "b@example.org", "data[old_email]": "a@example.org",
                      "data[merges][FNAME]": "A"}
