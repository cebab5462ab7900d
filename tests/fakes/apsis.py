"""A fake APSIS One API: a real HTTP server on 127.0.0.1 for tests.

Answers the parts of the public API the service uses, the way APSIS One does:

- ``POST /oauth/token`` (JSON ``grant_type``/``client_id``/``client_secret``) gives a Bearer token;
  at most 10 token calls per minute, further ones get 429.
- ``PATCH /v2/audience/keyspaces/{keyspace}/profiles/{key}/sections/{section}/attributes`` -> 204
- ``POST  .../profiles/{key}/sections/{section}/consents`` -> 201; same type again -> 409
- ``GET   .../profiles/{key}/sections/{section}/consents`` -> 200 ``{"items": [...]}`` (test aid)
- ``DELETE /v2/audience/keyspaces/{keyspace}/profiles/{key}`` -> 204, 404 when absent
- ``GET /v2/reports/email-events?section=&types=&since=&cursor=&limit=`` -> 200
  ``{"items": [{"id", "type", "email", "section", "occurred_at"}], "cursor", "has_more"}``;
  the report allows one call a minute (429 with ``Retry-After`` otherwise); ``report_interval``
  shortens that for tests. Events are added with ``add_report_event()``.

Every audience path is also accepted without the ``/v2`` prefix. Path segments are
URL-decoded, so the profile key is the plain e-mail address. Errors are
``application/problem+json`` with ``type``, ``title``, ``status`` and ``detail``.

Rate limits, over a sliding one-second window: ``rate_limit`` (default 100) requests for the
account and 10 for one profile; beyond that 429 with ``Retry-After: 1``.

Fault injection: ``latency`` (seconds slept per request) and ``enqueue_failure()``.
Recording: ``requests`` as ``(method, raw path, json body or None, time.monotonic())``,
``profiles``, ``token_requests``, ``max_per_second``, ``count_429``.
"""

from __future__ import annotations

import collections
import json
import math
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

EMAIL_CHANNEL = "com.apsis1.channels.email"
CONSENT_TYPES = ("opt-in", "opt-out")
TOKEN_CALLS_PER_MINUTE = 10
PROFILE_RATE_LIMIT = 10
PROBLEM_BASE = "https://developers.apsis.one/problems/"


class _Response(Exception):
    """Raised inside the handler to answer at once."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                 content_type: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> _Response:
    title = HTTPStatus(status).phrase
    body = {
        "type": PROBLEM_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
    }
    return _Response(status, body, headers, "application/problem+json")


class FakeApsis:
    """``with FakeApsis() as fake:`` starts the server; ``fake.url`` is its base URL."""

    def __init__(self, client_id: str = "test-client-id",
                 client_secret: str = "test-client-secret",  # noqa: S107 - a test fixture's secret
                 token_lifetime: float = 3600, rate_limit: int = 100) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.rate_limit = rate_limit
        self.profile_rate_limit = PROFILE_RATE_LIMIT
        self.latency = 0.0
        self.requests: list[tuple[str, str, Any, float]] = []
        self.profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self.token_requests = 0
        self.max_per_second = 0
        self.count_429 = 0
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.report_events: list[dict[str, Any]] = []
        self.report_interval = 60.0
        self.report_calls = 0
        self._last_report_call: float | None = None
        self._failures: collections.deque[tuple[int, Any, dict[str, str]]] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque()
        self._account_window: collections.deque[float] = collections.deque()
        self._profile_windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._token_window: collections.deque[float] = collections.deque()
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeApsis:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apsis", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeApsis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def enqueue_failure(self, status: int, body: dict[str, Any] | str | bytes | None = None,
                        headers: dict[str, str] | None = None) -> None:
        """The next request (in order queued) gets this answer instead of normal handling."""
        with self.lock:
            self._failures.append((status, body, dict(headers or {})))

    def issue_token(self) -> str:
        """A valid bearer token without going through ``/oauth/token``."""
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def expire_tokens(self) -> None:
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def add_report_event(self, kind: str, email: str, section: str, occurred_at: str, **extra: Any) -> str:
        """An email event (UNSUBSCRIBED, BOUNCED, ABUSE, ...) as the report lists it; answers its id."""
        with self.lock:
            event_id = f"evt-{len(self.report_events) + 1}"
            self.report_events.append(
                {"id": event_id, "type": kind, "email": email, "section": section, "occurred_at": occurred_at,
                 **extra}
            )
        return event_id

    def consents(self, keyspace: str, key: str) -> dict[tuple[str, str], str]:
        with self.lock:
            profile = self.profiles.get((keyspace, key))
            return dict(profile["consents"]) if profile else {}

    # -- request handling (called from handler threads) ------------------------------------

    def _record(self, method: str, path: str, body: Any) -> None:
        now = time.monotonic()
        with self.lock:
            self.requests.append((method, path, body, now))
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] <= now - 1.0:
                self._arrivals.popleft()
            self.max_per_second = max(self.max_per_second, len(self._arrivals))

    def _next_failure(self) -> _Response | None:
        with self.lock:
            if not self._failures:
                return None
            status, body, headers = self._failures.popleft()
        content_type = None
        if isinstance(body, dict):
            content_type = "application/problem+json" if status >= 400 else "application/json"
        elif body is not None:
            content_type = "text/plain; charset=utf-8"
        return _Response(status, body, headers, content_type)

    def _token(self, body: Any) -> _Response:
        now = time.monotonic()
        with self.lock:
            self.token_requests += 1
            while self._token_window and self._token_window[0] <= now - 60.0:
                self._token_window.popleft()
            if len(self._token_window) >= TOKEN_CALLS_PER_MINUTE:
                wait = max(1, math.ceil(self._token_window[0] + 60.0 - now))
                raise _problem(429, "Too many token requests; at most 10 per minute.",
                               {"Retry-After": str(wait)})
            self._token_window.append(now)
        if not isinstance(body, dict):
            raise _problem(400, "Request body must be a JSON object.")
        if body.get("grant_type") != "client_credentials":
            raise _problem(400, "grant_type must be client_credentials.")
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            raise _problem(401, "Invalid client credentials.")
        token = self.issue_token()
        lifetime = self.token_lifetime
        return _Response(200, {"access_token": token, "expires_in": int(lifetime) if lifetime == int(lifetime)
                               else lifetime, "token_type": "Bearer"})

    def _authenticate(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _problem(401, "Missing bearer token.")
        with self.lock:
            expiry = self.tokens.get(token.strip())
        if expiry is None:
            raise _problem(401, "Invalid access token.")
        if expiry <= time.monotonic():
            raise _problem(401, "Access token expired.")

    def _limit(self, profile: tuple[str, str] | None) -> None:
        now = time.monotonic()
        with self.lock:
            window = self._account_window
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= self.rate_limit:
                raise _problem(429, "Rate limit exceeded for this account.", {"Retry-After": "1"})
            pwindow = None
            if profile is not None:
                pwindow = self._profile_windows.setdefault(profile, collections.deque())
                while pwindow and pwindow[0] <= now - 1.0:
                    pwindow.popleft()
                if len(pwindow) >= self.profile_rate_limit:
                    raise _problem(429, "Rate limit exceeded for this profile.", {"Retry-After": "1"})
                pwindow.append(now)
            window.append(now)

    def handle(self, method: str, raw_path: str, headers: Any, body: Any, body_error: bool) -> _Response:
        self._record(method, raw_path, body)
        if self.latency:
            time.sleep(self.latency)
        failure = self._next_failure()
        if failure is not None:
            return failure
        segments = [unquote(s) for s in urlsplit(raw_path).path.split("/")[1:]]
        if segments == ["oauth", "token"]:
            if method != "POST":
                raise _problem(405, "Use POST.")
            return self._token(None if body_error else body)
        self._authenticate(headers.get("Authorization"))
        if segments and segments[0] == "v2":
            segments = segments[1:]
        if segments == ["reports", "email-events"]:
            if method != "GET":
                raise _problem(405, "Use GET.")
            return self._report(parse_qs(urlsplit(raw_path).query))
        if len(segments) < 5 or segments[:2] != ["audience", "keyspaces"] or segments[3] != "profiles":
            raise _problem(404, f"No such resource: {raw_path}")
        keyspace, key, rest = segments[2], segments[4], segments[5:]
        if not keyspace or not key:
            raise _problem(404, f"No such resource: {raw_path}")
        ident = (keyspace, key)
        if not rest:
            if method != "DELETE":
                raise _problem(405, f"{method} not allowed here.")
            self._limit(ident)
            with self.lock:
                if self.profiles.pop(ident, None) is None:
                    raise _problem(404, f"Profile {key} not found in keyspace {keyspace}.")
            return _Response(204)
        if len(rest) != 3 or rest[0] != "sections" or not rest[1] or rest[2] not in ("attributes", "consents"):
            raise _problem(404, f"No such resource: {raw_path}")
        section, what = rest[1], rest[2]
        allowed = ("PATCH",) if what == "attributes" else ("POST", "GET")
        if method not in allowed:
            raise _problem(405, f"{method} not allowed here.")
        self._limit(ident)
        if method == "GET":
            with self.lock:
                profile = self.profiles.get(ident)
                if profile is None:
                    raise _problem(404, f"Profile {key} not found in keyspace {keyspace}.")
                items = [
                    {"section_discriminator": sec, "channel_discriminator": EMAIL_CHANNEL,
                     "topic_discriminator": topic, "type": kind}
                    for (sec, topic), kind in profile["consents"].items() if sec == section
                ]
            return _Response(200, {"items": items})
        if body_error or not isinstance(body, dict):
            raise _problem(400, "Request body must be a JSON object.")
        if what == "attributes":
            with self.lock:
                profile = self.profiles.setdefault(ident, {"attributes": {}, "consents": {}})
                attributes = profile["attributes"].setdefault(section, {})
                for name, value in body.items():
                    if value is None:
                        attributes.pop(name, None)
                    else:
                        attributes[name] = value
            return _Response(204)
        topic = body.get("topic_discriminator")
        channel = body.get("channel_discriminator", body.get("channel"))
        kind = body.get("type")
        if not isinstance(topic, str) or not topic:
            raise _problem(400, "topic_discriminator is required.")
        if channel != EMAIL_CHANNEL:
            raise _problem(400, f"channel_discriminator must be {EMAIL_CHANNEL}.")
        if kind not in CONSENT_TYPES:
            raise _problem(400, "type must be opt-in or opt-out.")
        with self.lock:
            profile = self.profiles.setdefault(ident, {"attributes": {}, "consents": {}})
            if profile["consents"].get((section, topic)) == kind:
                raise _problem(409, f"Profile already has {kind} consent for topic {topic}.")
            profile["consents"][(section, topic)] = kind
        return _Response(201)


    def _report(self, query: dict[str, list[str]]) -> _Response:
        def one(name: str) -> str:
            return (query.get(name) or [""])[0]

        now = time.monotonic()
        with self.lock:
            self.report_calls += 1
            if self._last_report_call is not None and now - self._last_report_call < self.report_interval:
                wait = max(1, math.ceil(self._last_report_call + self.report_interval - now))
                raise _problem(429, "The report allows one call a minute.", {"Retry-After": str(wait)})
            self._last_report_call = now
            types = {t for t in one("types").split(",") if t}
            try:
                start = int(one("cursor") or 0)
                limit = min(int(one("limit") or 1000), 1000)
            except ValueError:
                raise _problem(400, "cursor and limit must be whole numbers.") from None
            since = one("since")
            matching = [
                (i, e) for i, e in enumerate(self.report_events)
                if i >= start and (not types or e["type"] in types)
                and (not one("section") or e["section"] == one("section"))
                and (not since or e["occurred_at"] >= since)
            ]
            page = matching[:limit]
            has_more = len(matching) > limit
            # The cursor is a position in the event log: after the last row given,
            # or after everything when the page holds the rest.
            next_cursor = page[-1][0] + 1 if has_more else max(start, len(self.report_events))
            return _Response(200, {
                "items": [dict(e) for _, e in page],
                "cursor": str(next_cursor),
                "has_more": has_more,
            })


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "FakeApsis/1.0"
    timeout = 10
    fake: FakeApsis

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        body_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_error = True
        try:
            response = self.fake.handle(self.command, self.path, self.headers, body, body_error)
        except _Response as exc:
            response = exc
        except Exception as exc:  # a bug in the fake: answer 500 so the test sees it
            response = _problem(500, f"Fake APSIS error: {exc!r}")
        self._send(response)

    def _send(self, response: _Response) -> None:
        if response.status == 429:
            with self.fake.lock:
                self.fake.count_429 += 1
        payload = b""
        if isinstance(response.body, bytes):
            payload = response.body
        elif isinstance(response.body, str):
            payload = response.body.encode()
        elif response.body is not None:
            payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        headers = dict(response.headers)
        if payload and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = response.content_type or "application/json"
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve
