"""The fake APSIS One server answers as the real API does, driven with requests as a client would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from .fakes.apsis import EMAIL_CHANNEL, FakeApsis

KEYSPACE = "com.apsis1.keyspaces.email"
SECTION = "com.apsis1.sections.news"
TOPIC = "com.apsis1.topics.newsletter"
EMAIL = "anna+test@example.se"


@pytest.fixture
def fake() -> Iterator[FakeApsis]:
    with FakeApsis() as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get_token(http: requests.Session, fake: FakeApsis) -> str:
    r = http.post(f"{fake.url}/oauth/token", timeout=5, json={
        "grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret,
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int | float)
    return body["access_token"]


def profile_url(fake: FakeApsis, email: str = EMAIL, prefix: str = "/v2") -> str:
    return f"{fake.url}{prefix}/audience/keyspaces/{KEYSPACE}/profiles/{quote(email, safe='')}"


def consent(kind: str) -> dict[str, str]:
    return {"topic_discriminator": TOPIC, "channel_discriminator": EMAIL_CHANNEL, "type": kind}


def assert_problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def test_token_flow_bad_credentials_and_expiry(fake: FakeApsis, http: requests.Session) -> None:
    bad = http.post(f"{fake.url}/oauth/token", timeout=5, json={
        "grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": "wrong",
    })
    assert_problem(bad, 401)

    fake.token_lifetime = 0.3
    token = get_token(http, fake)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{profile_url(fake)}/sections/{SECTION}/attributes"
    assert http.patch(url, json={"a1": "x"}, headers=auth, timeout=5).status_code == 204
    time.sleep(0.4)
    assert_problem(http.patch(url, json={"a1": "x"}, headers=auth, timeout=5), 401)
    assert_problem(http.patch(url, json={"a1": "x"}, headers={"Authorization": "Bearer nope"}, timeout=5), 401)
    assert_problem(http.patch(url, json={"a1": "x"}, timeout=5), 401)
    assert fake.token_requests == 2


def test_token_calls_limited_to_ten_per_minute(fake: FakeApsis, http: requests.Session) -> None:
    for _ in range(10):
        get_token(http, fake)
    r = http.post(f"{fake.url}/oauth/token", timeout=5, json={
        "grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret,
    })
    assert_problem(r, 429)
    assert int(r.headers["Retry-After"]) >= 1
    assert fake.token_requests == 11


def test_attributes_consents_and_delete(fake: FakeApsis, http: requests.Session) -> None:
    http.headers["Authorization"] = f"Bearer {get_token(http, fake)}"
    base = profile_url(fake)

    r = http.patch(f"{base}/sections/{SECTION}/attributes", json={"attr-1": "Anna", "attr-2": "sv"}, timeout=5)
    assert r.status_code == 204 and r.content == b""
    assert fake.profiles[(KEYSPACE, EMAIL)]["attributes"] == {SECTION: {"attr-1": "Anna", "attr-2": "sv"}}

    consents_url = f"{base}/sections/{SECTION}/consents"
    r = http.post(consents_url, json=consent("opt-in"), timeout=5)
    assert r.status_code in (201, 204) and r.content == b""
    listed = http.get(consents_url, timeout=5).json()["items"]
    assert [(c["topic_discriminator"], c["type"]) for c in listed] == [(TOPIC, "opt-in")]

    assert_problem(http.post(consents_url, json=consent("opt-in"), timeout=5), 409)

    assert http.post(consents_url, json=consent("opt-out"), timeout=5).status_code in (201, 204)
    assert fake.profiles[(KEYSPACE, EMAIL)]["consents"] == {(SECTION, TOPIC): "opt-out"}
    assert_problem(http.post(consents_url, json={"type": "opt-in"}, timeout=5), 400)

    # The path is sent URL-encoded and recorded as sent.
    assert any(path.endswith(f"/profiles/{quote(EMAIL, safe='')}/sections/{SECTION}/attributes")
               for _, path, _, _ in fake.requests)

    assert http.delete(base, timeout=5).status_code == 204
    assert (KEYSPACE, EMAIL) not in fake.profiles
    assert_problem(http.delete(base, timeout=5), 404)

    # Documentation also shows the path without /v2; both answer.
    other = profile_url(fake, "bo@example.se", prefix="")
    assert_problem(http.delete(other, timeout=5), 404)
    assert http.patch(f"{other}/sections/{SECTION}/attributes", json={"attr-1": "Bo"}, timeout=5).status_code == 204
    assert http.delete(other, timeout=5).status_code == 204


def test_enqueued_failures_and_latency(fake: FakeApsis, http: requests.Session) -> None:
    http.headers["Authorization"] = f"Bearer {get_token(http, fake)}"
    url = f"{profile_url(fake)}/sections/{SECTION}/attributes"
    fake.enqueue_failure(503, headers={"Retry-After": "2"})
    fake.enqueue_failure(500, {"type": "about:blank", "title": "Internal", "status": 500, "detail": "boom"})
    r = http.patch(url, json={"a": 1}, timeout=5)
    assert r.status_code == 503 and r.content == b"" and r.headers["Retry-After"] == "2"
    assert http.patch(url, json={"a": 1}, timeout=5).json()["detail"] == "boom"
    fake.latency = 0.2
    started = time.monotonic()
    assert http.patch(url, json={"a": 1}, timeout=5).status_code == 204
    assert time.monotonic() - started >= 0.2
    assert fake.requests[-1][:3] == ("PATCH", url.removeprefix(fake.url), {"a": 1})


def test_per_profile_rate_limit(fake: FakeApsis, http: requests.Session) -> None:
    http.headers["Authorization"] = f"Bearer {get_token(http, fake)}"
    url = f"{profile_url(fake)}/sections/{SECTION}/attributes"
    statuses = [http.patch(url, json={"a": i}, timeout=5).status_code for i in range(12)]
    assert statuses[:10] == [204] * 10
    assert 429 in statuses[10:]
    other = f"{profile_url(fake, 'other@example.se')}/sections/{SECTION}/attributes"
    assert http.patch(other, json={"a": 1}, timeout=5).status_code == 204


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
            url = f"{profile_url(fake, f'user{i}@example.se')}/sections/{SECTION}/attributes"
            responses.append(http.patch(url, json={"n": i}, timeout=5))
        return responses


def test_account_rate_limit_burst_vs_paced() -> None:
    with FakeApsis() as fake:
        burst = send_many(fake, 150, None)
        limited = [r for r in burst if r.status_code == 429]
        assert limited, "150 back-to-back requests on 127.0.0.1 take well under a second"
        assert all(r.headers["Retry-After"] == "1" for r in limited)
        assert_problem(limited[0], 429)
        assert fake.count_429 == len(limited)
        assert fake.max_per_second > 100

    with FakeApsis() as fake:
        paced = send_many(fake, 90, 90)
        assert [r.status_code for r in paced] == [204] * 90
        assert fake.count_429 == 0
        assert fake.max_per_second <= 100
