"""The fake APSIS One API answers as APSIS documents, driven over HTTP with requests as a client would.

Each test names the documented behaviour and the page it comes from (see tests/fakes/apsis.py).
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import requests

from .fakes.apsis import EMAIL_CHANNEL, EMAIL_KEYSPACE, EXPLICIT_DENY, EXPORT_COLUMNS, FakeApsis

SECTION = "usercreated.sections.news-abc123"
TOPIC = "usercreated.topics.newsletter-xyz789"
EMAIL = "anna+test@example.se"
EMAIL_ATTR = "com.apsis1.attributes.email"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def fake() -> Iterator[FakeApsis]:
    with FakeApsis() as server:
        server.define_attribute("usercreated.attributes.manage-url", "3001", section=SECTION)
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def token_call(http: requests.Session, fake: FakeApsis, **override: str) -> requests.Response:
    body = {"grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret}
    return http.post(f"{fake.url}/oauth/token", json={**body, **override}, timeout=5)


def get_token(http: requests.Session, fake: FakeApsis) -> str:
    r = token_call(http, fake)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and isinstance(body["expires_in"], int | float)
    return body["access_token"]


@pytest.fixture
def authed(http: requests.Session, fake: FakeApsis) -> requests.Session:
    http.headers["Authorization"] = f"Bearer {get_token(http, fake)}"
    return http


def profile_url(fake: FakeApsis, email: str = EMAIL, v2: bool = False) -> str:
    prefix = "/v2" if v2 else ""
    return f"{fake.url}{prefix}/audience/keyspaces/{EMAIL_KEYSPACE}/profiles/{quote(email, safe='')}"


def v1_attributes(fake: FakeApsis, email: str = EMAIL) -> str:
    return f"{profile_url(fake, email)}/sections/{SECTION}/attributes"


def v2_attributes(fake: FakeApsis, email: str = EMAIL) -> str:
    return f"{profile_url(fake, email, v2=True)}/sections/{SECTION}/attributes"


def consents_url(fake: FakeApsis, email: str = EMAIL) -> str:
    return f"{profile_url(fake, email, v2=True)}/sections/{SECTION}/consents"


def consent(kind: str, **override: str) -> dict[str, str]:
    return {"topic_discriminator": TOPIC, "channel_discriminator": EMAIL_CHANNEL, "type": kind,
            "reason": "Signed up on the web form", "source": "Consent service", **override}


def assert_problem(r: requests.Response, status: int) -> dict:
    """help.apsis.com 6104977 (handling errors): {"title", "status", "detail"} as problem JSON."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert set(body) == {"title", "status", "detail"} and body["status"] == status
    return body


def create_profile(authed: requests.Session, fake: FakeApsis, email: str = EMAIL) -> None:
    r = authed.patch(v1_attributes(fake, email), data=json.dumps({"1001": email}), headers=MERGE_PATCH, timeout=5)
    assert r.status_code == 204, r.text


# -- authentication: developer.apsis.com/reference/authentication-1, post_oauth-token ----------------------


def test_token_is_a_jwt_with_exp_and_expires_in_24_hours(fake: FakeApsis, http: requests.Session) -> None:
    r = token_call(http, fake)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"access_token", "expires_in", "token_type"} and body["expires_in"] == 86400
    claims_part = body["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
    assert abs(claims["exp"] - (time.time() + 86400)) < 5


@pytest.mark.parametrize(
    "override, status",
    [({"grant_type": "password"}, 400), ({"client_secret": "wrong"}, 401), ({"scope": "all"}, 400)],
    ids=["grant-type", "bad-secret", "unknown-field"],
)
def test_token_call_refuses_bad_bodies(fake: FakeApsis, http: requests.Session, override: dict, status: int) -> None:
    assert_problem(token_call(http, fake, **override), status)


def test_token_call_takes_json_only(fake: FakeApsis, http: requests.Session) -> None:
    form = {"grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret}
    assert_problem(http.post(f"{fake.url}/oauth/token", data=form, timeout=5), 415)
    assert_problem(http.get(f"{fake.url}/oauth/token", timeout=5), 405)


def test_token_endpoint_allows_ten_calls_a_minute_then_429(fake: FakeApsis, http: requests.Session) -> None:
    # developer.apsis.com/reference/limits: authentication token request, 10 requests per minute.
    for _ in range(10):
        get_token(http, fake)
    r = token_call(http, fake)
    assert_problem(r, 429)
    assert "Retry-After" not in r.headers  # nothing promised: the client backs off on its own
    assert fake.token_requests == 11


def test_bad_or_expired_token_is_403_explicit_deny_and_a_new_token_works(fake: FakeApsis,
                                                                          http: requests.Session) -> None:
    # help.apsis.com/en/articles/6104974-authentication: 403 {"message": "... explicit deny"}.
    fake.token_lifetime = 0.3
    token = get_token(http, fake)
    url = f"{fake.url}/emails/reports/no-such-report"
    assert_problem(http.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5), 404)
    time.sleep(0.4)
    for headers in ({"Authorization": f"Bearer {token}"}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {token}"}):
        r = http.get(url, headers=headers, timeout=5)
        assert r.status_code == 403 and r.json() == {"message": EXPLICIT_DENY}
    missing = http.get(url, timeout=5)
    assert missing.status_code == 401 and missing.json() == {"message": "Unauthorized"}
    fake.token_lifetime = 3600
    fresh = get_token(http, fake)  # the refresh
    assert_problem(http.get(url, headers={"Authorization": f"Bearer {fresh}"}, timeout=5), 404)
    assert fake.token_requests == 2


# -- routes: only the documented paths and methods ---------------------------------------------------------


def test_delete_is_documented_without_v2_and_the_v2_path_is_404(fake: FakeApsis, authed: requests.Session) -> None:
    # put_audience-...-locks names DELETE /audience/keyspaces/{keyspace}/profiles/{key}; the connector's
    # deleteProfile uses it. There is no /v2 delete.
    create_profile(authed, fake)
    body = assert_problem(authed.delete(profile_url(fake, v2=True), timeout=5), 404)
    assert "No resource" in body["detail"]
    assert (EMAIL_KEYSPACE, EMAIL) in fake.profiles
    r = authed.delete(profile_url(fake), timeout=5)
    assert r.status_code == 204 and r.content == b""
    assert (EMAIL_KEYSPACE, EMAIL) not in fake.profiles
    assert "not found" in assert_problem(authed.delete(profile_url(fake), timeout=5), 404)["detail"]


def test_wrong_methods_are_405_with_allow_and_other_paths_404(fake: FakeApsis, authed: requests.Session) -> None:
    r = authed.get(consents_url(fake), timeout=5)  # GET v2 consents is "in development": not served
    assert_problem(r, 405)
    assert r.headers["Allow"] == "POST"
    assert_problem(authed.put(v1_attributes(fake), json={}, timeout=5), 405)
    assert_problem(authed.get(profile_url(fake), timeout=5), 405)
    assert_problem(authed.post(f"{profile_url(fake)}/sections/{SECTION}/consents", json=consent("opt-in"),
                               timeout=5), 404)  # consents are v2 only
    assert_problem(authed.get(f"{fake.url}/v2/reports/email-events", timeout=5), 404)
    assert_problem(authed.delete(f"{profile_url(fake)}/", timeout=5), 404)
    other = f"{fake.url}/audience/keyspaces/usercreated.keyspaces.nope/profiles/x"
    assert_problem(authed.delete(other, timeout=5), 404)


def test_bodies_over_100_kb_are_413(fake: FakeApsis, authed: requests.Session) -> None:
    # developer.apsis.com/reference/limits: request body size is limited to 100 kB.
    big = json.dumps({"1001": "x" * 100_001})
    assert_problem(authed.patch(v1_attributes(fake), data=big, headers=MERGE_PATCH, timeout=5), 413)


# -- attributes: v1 version ids (creates), v2 discriminators (does not) ----------------------------------------


def test_v2_attributes_refuse_a_missing_profile(fake: FakeApsis, authed: requests.Session) -> None:
    # patch_v2-...-attributes-1: "this version will NOT create a new profile".
    r = authed.patch(v2_attributes(fake), data=json.dumps({EMAIL_ATTR: EMAIL}), headers=MERGE_PATCH, timeout=5)
    assert_problem(r, 404)
    assert fake.profiles == {}


def test_v1_attributes_take_version_ids_and_create_the_profile(fake: FakeApsis, authed: requests.Session) -> None:
    # patch_audience-...-attributes: keys are version IDs; JSON Merge Patch.
    body = {"1001": EMAIL, "1003": "Anna", "3001": "https://example.se/manage/1"}
    r = authed.patch(v1_attributes(fake), data=json.dumps(body), headers=MERGE_PATCH, timeout=5)
    assert r.status_code == 204 and r.content == b""
    assert fake.attributes(EMAIL_KEYSPACE, EMAIL, SECTION) == {
        EMAIL_ATTR: EMAIL, "com.apsis1.attributes.firstname": "Anna",
        "usercreated.attributes.manage-url": "https://example.se/manage/1",
    }
    # The path is sent URL-encoded and recorded as sent.
    assert fake.requests[-1][1].endswith(f"/profiles/{quote(EMAIL, safe='')}/sections/{SECTION}/attributes")
    # A discriminator is not a version id.
    wrong = authed.patch(v1_attributes(fake), data=json.dumps({EMAIL_ATTR: EMAIL}), headers=MERGE_PATCH, timeout=5)
    assert "version IDs" in assert_problem(wrong, 400)["detail"]


def test_v2_attributes_take_discriminators_and_merge_patch(fake: FakeApsis, authed: requests.Session) -> None:
    create_profile(authed, fake)
    url = v2_attributes(fake)
    body = {"com.apsis1.attributes.firstname": "Anna", "usercreated.attributes.manage-url": "https://m/1"}
    assert authed.patch(url, data=json.dumps(body), headers=MERGE_PATCH, timeout=5).status_code == 204
    remove = {"com.apsis1.attributes.firstname": None}
    assert authed.patch(url, data=json.dumps(remove), headers=MERGE_PATCH, timeout=5).status_code == 204
    assert fake.attributes(EMAIL_KEYSPACE, EMAIL, SECTION) == {
        EMAIL_ATTR: EMAIL, "usercreated.attributes.manage-url": "https://m/1",
    }
    version = authed.patch(url, data=json.dumps({"1003": "Anna"}), headers=MERGE_PATCH, timeout=5)
    assert "discriminators" in assert_problem(version, 400)["detail"]
    unknown = authed.patch(url, data=json.dumps({"usercreated.attributes.nope": 1}), headers=MERGE_PATCH, timeout=5)
    assert "Unknown attributes" in assert_problem(unknown, 400)["detail"]
    # help.apsis.one 6104982: the body is application/merge-patch+json.
    assert_problem(authed.patch(url, json=body, timeout=5), 415)
    assert_problem(authed.patch(url, data="{not json", headers=MERGE_PATCH, timeout=5), 400)


def test_a_custom_attribute_belongs_to_its_own_section(fake: FakeApsis, authed: requests.Session) -> None:
    other = f"{profile_url(fake)}/sections/usercreated.sections.other/attributes"
    r = authed.patch(other, data=json.dumps({"3001": "x"}), headers=MERGE_PATCH, timeout=5)
    assert_problem(r, 400)


# -- consents: post_v2-...-consents-1 ---------------------------------------------------------------------------


def test_consent_201_new_204_changed_409_same_type_again(fake: FakeApsis, authed: requests.Session) -> None:
    create_profile(authed, fake)
    url = consents_url(fake)
    first = authed.post(url, json=consent("opt-in"), timeout=5)
    assert first.status_code == 201 and first.content == b""
    assert fake.consents(EMAIL_KEYSPACE, EMAIL) == {(SECTION, TOPIC): "opt-in"}
    again = assert_problem(authed.post(url, json=consent("opt-in"), timeout=5), 409)
    assert "not supported" in again["detail"]
    assert authed.post(url, json=consent("opt-out"), timeout=5).status_code == 204
    assert_problem(authed.post(url, json=consent("opt-out"), timeout=5), 409)
    assert authed.post(url, json=consent("opt-in"), timeout=5).status_code == 204
    record = fake.profiles[(EMAIL_KEYSPACE, EMAIL)]["consents"][(SECTION, TOPIC, EMAIL_CHANNEL)]
    assert record == {"type": "opt-in", "reason": "Signed up on the web form", "source": "Consent service"}


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in consent("opt-in").items() if k != "reason"},
        {k: v for k, v in consent("opt-in").items() if k != "source"},
        {k: v for k, v in consent("opt-in").items() if k != "topic_discriminator"},
        consent("opt-in", reason=""),
        consent("opt-in", channel_discriminator="email"),
        consent("pending-opt-in"),
        consent("confirmed-opt-in"),
        consent("unsubscribe"),
        {**consent("opt-in"), "section_discriminator": SECTION},
    ],
    ids=["no-reason", "no-source", "no-topic", "empty-reason", "bad-channel", "pending", "confirmed", "bad-type",
         "unknown-field"],
)
def test_consent_body_is_checked_field_by_field(fake: FakeApsis, authed: requests.Session, body: dict) -> None:
    create_profile(authed, fake)
    assert_problem(authed.post(consents_url(fake), json=body, timeout=5), 400)
    assert fake.consents(EMAIL_KEYSPACE, EMAIL) == {}


def test_consent_needs_an_existing_profile_and_json(fake: FakeApsis, authed: requests.Session) -> None:
    assert_problem(authed.post(consents_url(fake), json=consent("opt-out"), timeout=5), 404)
    assert fake.profiles == {}
    create_profile(authed, fake)
    r = authed.post(consents_url(fake), data=json.dumps(consent("opt-in")), headers=MERGE_PATCH, timeout=5)
    assert_problem(r, 415)


# -- limits: developer.apsis.com/reference/limits --------------------------------------------------------------


def test_ten_requests_a_second_for_one_profile_key(fake: FakeApsis, authed: requests.Session) -> None:
    statuses = [authed.patch(v1_attributes(fake), data=json.dumps({"1003": str(i)}), headers=MERGE_PATCH,
                             timeout=5).status_code for i in range(12)]
    assert statuses[:10] == [204] * 10
    assert 429 in statuses[10:]
    other = authed.patch(v1_attributes(fake, "bo@example.se"), data="{}", headers=MERGE_PATCH, timeout=5)
    assert other.status_code == 204
    time.sleep(1.05)
    again = authed.patch(v1_attributes(fake), data="{}", headers=MERGE_PATCH, timeout=5)
    assert again.status_code == 204


def send_many(fake: FakeApsis, count: int, per_second: float | None) -> list[requests.Response]:
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {get_token(http, fake)}"
        responses = []
        started = time.monotonic()
        for i in range(count):
            if per_second:
                delay = started + i / per_second - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            url = v1_attributes(fake, f"user{i}@example.se")
            responses.append(http.patch(url, data=json.dumps({"1001": i}), headers=MERGE_PATCH, timeout=5))
        return responses


def test_one_hundred_requests_a_second_per_account() -> None:
    with FakeApsis() as fake:
        burst = send_many(fake, 150, None)
        limited = [r for r in burst if r.status_code == 429]
        assert limited, "150 back-to-back requests on 127.0.0.1 take well under a second"
        assert_problem(limited[0], 429)
        assert fake.count_429 == len(limited) == fake.statuses[429]
        assert fake.max_per_second > 100

    with FakeApsis() as fake:
        paced = send_many(fake, 90, 90)
        assert [r.status_code for r in paced] == [204] * 90
        assert fake.count_429 == 0
        assert fake.max_per_second <= 100


# -- fault injection -------------------------------------------------------------------------------------------


def test_enqueued_failures_and_latency(fake: FakeApsis, authed: requests.Session) -> None:
    url = v1_attributes(fake)
    fake.enqueue_failure(503, headers={"Retry-After": "2"})
    fake.enqueue_failure(500, {"title": "Internal Server Error", "status": 500, "detail": "boom"})
    r = authed.patch(url, data="{}", headers=MERGE_PATCH, timeout=5)
    assert r.status_code == 503 and r.content == b"" and r.headers["Retry-After"] == "2"
    assert authed.patch(url, data="{}", headers=MERGE_PATCH, timeout=5).json()["detail"] == "boom"
    fake.latency = 0.2
    started = time.monotonic()
    assert authed.patch(url, data=json.dumps({"1003": "A"}), headers=MERGE_PATCH, timeout=5).status_code == 204
    assert time.monotonic() - started >= 0.2
    assert fake.requests[-1][:3] == ("PATCH", url.removeprefix(fake.url), {"1003": "A"})


# -- email event export: post_emails-reports-1, get_emails-reports-report-id-1 ---------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat()


def poll_until_completed(authed: requests.Session, fake: FakeApsis, report_id: str, **params: str) -> requests.Response:
    for _ in range(10):
        r = authed.get(f"{fake.url}/emails/reports/{report_id}", params=params, timeout=5)
        assert r.status_code == 200, r.text
        if r.json()["status"] == "completed":
            return r
    raise AssertionError("never completed")


def read_export(payload: bytes) -> list[dict[str, str]]:
    with gzip.open(io.BytesIO(payload), "rt", encoding="utf-8", newline="") as text:
        return list(csv.DictReader(text))


def test_export_flow_end_to_end_gives_a_gzip_csv(fake: FakeApsis, authed: requests.Session) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    unsub = fake.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, "2024-05-01T10:00:00+02:00")
    fake.add_report_event("BOUNCED", "b@example.com", SECTION, "2024-05-01T10:01:00Z", bounce_type="soft")
    fake.add_report_event("ABUSE", "c@example.com", SECTION, None)  # no event time from the source: 0
    fake.repeat_report_event(unsub)  # the email tool's retry: same correlation_id
    fake.set_report_polls(2)

    r = authed.post(f"{fake.url}/emails/reports", json={"start_at": iso(start)}, timeout=5)
    assert r.status_code == 201 and set(r.json()) == {"report_id"}
    report_id = r.json()["report_id"]
    statuses = [authed.get(f"{fake.url}/emails/reports/{report_id}", timeout=5).json()["status"] for _ in range(2)]
    assert statuses == ["queued", "in_progress"]
    done = poll_until_completed(authed, fake, report_id).json()
    assert set(done) == {"report_id", "status", "file_download_url", "file_download_url_expires_at",
                         "file_expires_at"}
    expires = datetime.fromisoformat(done["file_download_url_expires_at"])
    assert expires > datetime.now(UTC)

    with requests.Session() as plain:  # the URL carries its own authentication
        file = plain.get(done["file_download_url"], timeout=5)
    assert file.status_code == 200 and file.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in file.headers and file.content[:2] == b"\x1f\x8b"
    rows = read_export(file.content)
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [(row["type"], row["address"]) for row in rows] == [
        ("UNSUBSCRIBED", "a@example.com"), ("BOUNCED", "b@example.com"), ("ABUSE", "c@example.com"),
        ("UNSUBSCRIBED", "a@example.com"),
    ]
    assert rows[0]["correlation_id"] == rows[3]["correlation_id"] == unsub
    assert rows[0]["event_time"] == str(int(datetime(2024, 5, 1, 8, tzinfo=UTC).timestamp() * 1000))
    assert rows[2]["event_time"] == "0"
    assert all(int(row["server_time"]) >= int(start.timestamp() * 1000) for row in rows)
    assert "bounce_type" not in rows[1] and "section" not in rows[1]

    # The same URL can be fetched again while valid; a new status call gives a fresh one.
    assert authed.get(f"{fake.url}/emails/reports/{report_id}", timeout=5).json()["status"] == "completed"
    assert fake.report_calls == 1 and fake.status_calls == 4


def test_export_window_selects_on_server_time(fake: FakeApsis, authed: requests.Session) -> None:
    fake.report_interval = 0
    fake.add_report_event("SENT", "old@example.com", SECTION, "2024-01-01T00:00:00Z", server_time=1_000)
    fake.add_report_event("SENT", "mid@example.com", SECTION, "2024-01-01T00:00:00Z", server_time=2_000)
    fake.add_report_event("SENT", "new@example.com", SECTION, "2024-01-01T00:00:00Z", server_time=3_000)

    def export(**body: str) -> list[str]:
        report_id = authed.post(f"{fake.url}/emails/reports", json=body, timeout=5).json()["report_id"]
        url = poll_until_completed(authed, fake, report_id).json()["file_download_url"]
        return [row["address"] for row in read_export(requests.get(url, timeout=5).content)]

    def at(ms: int) -> str:
        return iso(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))

    assert export(start_at=at(2_000)) == ["mid@example.com", "new@example.com"]  # start inclusive
    assert export(start_at=at(1_000), end_at=at(3_000)) == ["old@example.com", "mid@example.com"]  # end exclusive


@pytest.mark.parametrize(
    "body",
    [{}, {"start_at": "2024-05-01"}, {"start_at": "2024-05-01T10:00:00"}, {"start_at": 1714557600000},
     {"start_at": "2024-05-02T00:00:00Z", "end_at": "2024-05-01T00:00:00Z"},
     {"start_at": "2024-05-01T00:00:00Z", "segment_filter": "all"},
     {"start_at": "2024-05-01T00:00:00Z", "types": ["UNSUBSCRIBED"]}],
    ids=["empty", "date-only", "no-offset", "number", "end-before-start", "bad-segment-filter", "unknown-field"],
)
def test_export_request_body_is_checked(fake: FakeApsis, authed: requests.Session, body: dict) -> None:
    fake.report_interval = 0
    assert_problem(authed.post(f"{fake.url}/emails/reports", json=body, timeout=5), 400)


def test_one_export_request_a_minute_per_account(fake: FakeApsis, authed: requests.Session) -> None:
    # developer.apsis.com/reference/limits: event exports, 1 request per minute.
    body = {"start_at": "2024-05-01T00:00:00Z", "segment_filter": {}}
    assert authed.post(f"{fake.url}/emails/reports", json=body, timeout=5).status_code == 201
    second = authed.post(f"{fake.url}/emails/reports", json=body, timeout=5)
    assert_problem(second, 429)
    assert fake.report_calls == 2 and fake.count_429 == 1
    fake.report_interval = 0.2
    time.sleep(0.25)
    assert authed.post(f"{fake.url}/emails/reports", json=body, timeout=5).status_code == 201


def test_unknown_report_is_404(fake: FakeApsis, authed: requests.Session) -> None:
    assert_problem(authed.get(f"{fake.url}/emails/reports/00000000-0000-0000-0000-000000000000", timeout=5), 404)
    assert_problem(authed.get(f"{fake.url}/emails/reports/x", params={"cursor": "1"}, timeout=5), 400)


def completed_url(fake: FakeApsis, authed: requests.Session, **params: str) -> requests.Response:
    fake.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, "2024-05-01T10:00:00Z")
    r = authed.post(f"{fake.url}/emails/reports", json={"start_at": "2000-01-01T00:00:00Z"}, timeout=5)
    return poll_until_completed(authed, fake, r.json()["report_id"], **params)


def test_download_url_expires_and_sends_no_bearer_token(fake: FakeApsis, authed: requests.Session) -> None:
    fake.download_url_lifetime = 0.3
    url = completed_url(fake, authed).json()["file_download_url"]
    assert_problem(authed.get(url, timeout=5), 400)  # the API token must not go to the file URL
    assert requests.get(url.replace("signature=", "signature=x"), timeout=5).status_code == 403
    assert requests.get(url.split("?")[0], timeout=5).status_code == 403
    assert requests.get(url, timeout=5).status_code == 200
    time.sleep(0.35)
    assert requests.get(url, timeout=5).status_code == 403


def test_download_with_header_auth(fake: FakeApsis, authed: requests.Session) -> None:
    # get_emails-reports-report-id-1: header_auth=true -> a token in x-apsis-auth, sent back as a header.
    status = completed_url(fake, authed, header_auth="true")
    url, token = status.json()["file_download_url"], status.headers["x-apsis-auth"]
    assert "?" not in url
    assert requests.get(url, timeout=5).status_code == 403
    assert requests.get(f"{url}?signature={token}", timeout=5).status_code == 403
    file = requests.get(url, headers={"x-apsis-auth": token}, timeout=5)
    assert file.status_code == 200 and [r["type"] for r in read_export(file.content)] == ["UNSUBSCRIBED"]


def test_sixty_export_downloads_a_minute(fake: FakeApsis, authed: requests.Session) -> None:
    url = completed_url(fake, authed).json()["file_download_url"]
    with requests.Session() as plain:
        statuses = [plain.get(url, timeout=5).status_code for _ in range(61)]
    assert statuses[:60] == [200] * 60 and statuses[60] == 429
    assert fake.download_calls == 61


def test_add_report_event_only_takes_documented_types(fake: FakeApsis) -> None:
    with pytest.raises(ValueError, match="not an event type"):
        fake.add_report_event("HARD_BOUNCE", "a@example.com", SECTION, "2024-05-01T10:00:00Z")
