"""A fake APSIS One API, written from APSIS's documentation: a real HTTP server on 127.0.0.1 for tests.

Every handler below cites the page it follows. The pages:

- developer.apsis.com/reference/authentication-1 and /post_oauth-token: the token call and its limit
- help.apsis.com/en/articles/6104974-authentication: a bad or expired token is 403 ``{"message": ...}``
- help.apsis.com/en/articles/6104977-handling-errors: errors are ``{"title", "status", "detail"}``
- help.apsis.com/en/articles/6104976-api-responses: the status codes the API uses
- developer.apsis.com/reference/limits: 100 requests/s per account, 10/s per profile key, 10 token calls a
  minute, 1 event export request a minute, 60 export downloads a minute, 100 kB bodies (413 beyond)
- developer.apsis.com/reference/patch_audience-keyspaces-...-attributes (version 1, attribute version ids)
- developer.apsis.com/reference/patch_v2-audience-keyspaces-...-attributes-1 (version 2, discriminators,
  never creates a profile); help.apsis.one/en/articles/6104982 (``application/merge-patch+json``)
- developer.apsis.com/reference/post_v2-audience-keyspaces-...-consents-1 (201 / 204 / 409), and
  help.apsis.one/en/articles/6104985 (add consent to a profile; "source" not required)
- developer.apsis.com/reference/put_audience-keyspaces-...-locks, which names the delete call
  ``DELETE /audience/keyspaces/{keyspace}/profiles/{key}``; the same path is the Magento connector's
  ``deleteProfile`` (github ApsisInternational/module-one, Service/Api/ClientApi.php)
- developer.apsis.com/reference/post_emails-reports-1 and /get_emails-reports-report-id-1: the email event
  export, its status, its download URL and the gzip CSV it points to

Where the pages are silent the fake takes the stricter reading (see ``OPEN QUESTIONS`` at the end of this
docstring); tests that need another behaviour change an attribute of the fake.

Paths are matched exactly, segment by segment, after URL-decoding each segment: a path not listed is 404,
a listed path with another method is 405 with ``Allow``. There is no ``/v2`` twin of the v1 paths nor the
other way round.

Test-side API (all thread-safe):

- ``url``, ``client_id``, ``client_secret``, ``token_lifetime`` (seconds, default 86400 as documented)
- ``issue_token()``, ``expire_tokens()``, ``tokens``, ``token_requests``
- data model: ``define_attribute(discriminator, version_id=None, section=None)`` (default attributes exist
  in every section), ``add_keyspace()``, ``add_profile(keyspace, key, section, attributes=None)``
- state: ``profiles[(keyspace, key)] = {"attributes": {section: {discriminator: value}},
  "consents": {(section, topic, channel): {"type", "reason", "source"}}, "sections": set()}``,
  ``consents(keyspace, key)`` -> ``{(section, topic): type}`` for the email channel, ``attributes()``
- email event export: ``add_report_event(kind, email, section, occurred_at, **extra)``,
  ``repeat_report_event(correlation_id)``, ``report_polls`` / ``set_report_polls(n)``, ``reports``,
  ``report_events``, ``report_interval`` (60 s), ``report_calls``, ``status_calls``, ``download_calls``,
  ``download_url_lifetime``, ``report_max_window``
- limits and faults: ``rate_limit`` (100), ``profile_rate_limit`` (10), ``latency``, ``enqueue_failure()``
- recording: ``requests`` as ``(method, raw path, json body or None, time.monotonic())``, ``max_per_second``
  (the most requests under the account limit in any one second, refused ones included),
  ``count_429``, ``statuses`` (a Counter of every status answered)

OPEN QUESTIONS (the pages do not say; the fake's choice is the stricter one):

1. A missing ``Authorization`` header: 401 ``{"message": "Unauthorized"}``; a bad or expired token: 403.
2. Wrong client credentials on ``/oauth/token``: 401 problem JSON.
3. 429 carries no ``Retry-After``; a client must back off on its own.
4. ``source`` on a consent is required here although the pages say it defaults to "One API". The reference
   page answers 201 (new) / 204 (changed) / 409 (same type again); help.apsis.one 6104985 lists 200 for "no
   changes needed" instead: the fake follows the reference page, a client should accept both.
5. A consent, and a v2 attribute PATCH, need the profile to exist in that section (404 otherwise); only the
   v1 attribute PATCH creates a profile (and adds the section to it).
6. Unknown attribute keys are 400; a version id sent to v2, or a discriminator sent to v1, is 400.
7. PATCH must be ``application/merge-patch+json`` and POST ``application/json``, else 415.
8. ``DELETE`` of a profile answers 204 (the pages list 202 and 204 for DELETE); 404 when absent.
9. ``GET`` of v2 consents is marked "in development, not meant to be used": the path answers 405.
10. ``POST /emails/reports`` takes only ``start_at``, ``end_at`` and ``segment_filter`` (the names of the
    attribute/tag selection properties are not in the stored pages); it answers 201 ``{"report_id"}``.
11. ``start_at``/``end_at`` are ISO 8601 date-times with an offset and select on ``server_time``:
    ``start_at <= server_time``, and ``server_time < end_at`` (or up to the request when ``end_at`` is left
    out). Rows come in the order received, not sorted. The file is fixed when the export is requested.
12. The one-a-minute export limit counts every ``POST /emails/reports``, even one then refused with 400;
    status polls are not counted. The report's time window is not limited unless ``report_max_window``.
13. Statuses before ``completed`` are ``queued`` then ``in_progress``; a report needs ``report_polls``
    status calls (default 1) before it is ``completed``.
14. The download URL carries its own authentication: a request that also sends ``Authorization`` is 400,
    an expired or wrong URL is 403. The file is served as ``application/gzip`` without
    ``Content-Encoding``, so the client must gunzip it. CSV: UTF-8, header row, comma, RFC 4180 quoting.
15. The CSV has no section column and no bounce kind (hard/soft); ``add_report_event``'s ``section`` and
    any undocumented extra are kept on the event for tests to read, never written to the file.
16. A documented path called with another method is 405 with ``Allow`` (the pages list no 405).
"""

from __future__ import annotations

import base64
import collections
import csv
import gzip
import io
import json
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

EMAIL_KEYSPACE = "com.apsis1.keyspaces.email"
DEFAULT_KEYSPACES = (EMAIL_KEYSPACE, "com.apsis1.keyspaces.mobile", "com.apsis1.keyspaces.crm-id")
EMAIL_CHANNEL = "com.apsis1.channels.email"
CHANNELS = (EMAIL_CHANNEL, "com.apsis1.channels.sms")
CONSENT_TYPES = ("opt-in", "opt-out")
UNSUPPORTED_CONSENT_TYPES = ("pending-opt-in", "confirmed-opt-in")  # "not supported by APSIS One API yet"
# The default attributes every section has, with the version ids this fake gives them.
DEFAULT_ATTRIBUTES = {
    "com.apsis1.attributes.email": "1001",
    "com.apsis1.attributes.mobile": "1002",
    "com.apsis1.attributes.firstname": "1003",
    "com.apsis1.attributes.lastname": "1004",
    "com.apsis1.attributes.crmid": "1005",
}
EVENT_TYPES = ("SENT", "DELIVERED", "OPENED", "CLICKED", "BOUNCED", "UNSUBSCRIBED", "ABUSE")
EXPORT_COLUMNS = (
    "activity_id", "split_id", "activity_name", "split_activity_name", "sender", "subject", "address",
    "variation", "type", "correlation_id", "event_time", "server_time", "device",
)
TOKEN_CALLS_PER_MINUTE = 10
PROFILE_RATE_LIMIT = 10
EXPORT_DOWNLOADS_PER_MINUTE = 60
MAX_BODY_BYTES = 100_000
DOWNLOAD_PREFIX = ("fake-apsis-files", "email-reports")
EXPLICIT_DENY = "User is not authorized to access this resource with an explicit deny"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    # help.apsis.com/en/articles/6104977-handling-errors: {"title", "status", "detail"}.
    body = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return _Response(status, body, headers, "application/problem+json")


def _gateway(status: int, message: str) -> _Response:
    # help.apsis.com/en/articles/6104974-authentication: {"message": ...} for an invalid or expired token.
    return _Response(status, {"message": message}, None, "application/json")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_datetime(value: Any, name: str) -> int:
    """An ISO 8601 date-time with an offset, as milliseconds since the epoch; 400 otherwise."""
    if not isinstance(value, str) or "T" not in value:
        raise _problem(400, f"{name} must be an ISO 8601 date-time string with a time zone.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _problem(400, f"{name} is not a valid ISO 8601 date-time.") from None
    if moment.tzinfo is None:
        raise _problem(400, f"{name} must carry a time zone offset.")
    return _epoch_ms(moment)


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON Merge Patch, which the attribute pages require."""
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict):
            current = target.get(name)
            merged = dict(current) if isinstance(current, dict) else {}
            _merge_patch(merged, value)
            target[name] = merged
        else:
            target[name] = value


def _fields(body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise _problem(400, f"Unknown properties: {', '.join(unknown)}.")
    missing = [name for name in required if name not in body]
    if missing:
        raise _problem(400, f"Missing required properties: {', '.join(missing)}.")


class _Request:
    def __init__(self, method: str, raw_path: str, headers: Any, body: bytes) -> None:
        self.method = method
        self.raw_path = raw_path
        split = urlsplit(raw_path)
        self.segments = tuple(unquote(s) for s in split.path.split("/")[1:])
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.body = body

    def media_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def json_object(self, media_type: str) -> dict[str, Any]:
        if self.media_type() != media_type:
            raise _problem(415, f"Content-Type must be {media_type}.")
        try:
            body = json.loads(self.body)
        except ValueError:
            raise _problem(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _problem(400, "The request body must be a JSON object.")
        return body


# (path pattern, {method: handler name}, needs a bearer token). "{name}" matches one non-empty segment.
_ROUTES: tuple[tuple[tuple[str, ...], dict[str, str], bool], ...] = (
    (("oauth", "token"), {"POST": "_token"}, False),
    (("audience", "keyspaces", "{keyspace}", "profiles", "{key}"), {"DELETE": "_delete_profile"}, True),
    (("audience", "keyspaces", "{keyspace}", "profiles", "{key}", "sections", "{section}", "attributes"),
     {"PATCH": "_attributes_v1"}, True),
    (("v2", "audience", "keyspaces", "{keyspace}", "profiles", "{key}", "sections", "{section}", "attributes"),
     {"PATCH": "_attributes_v2"}, True),
    (("v2", "audience", "keyspaces", "{keyspace}", "profiles", "{key}", "sections", "{section}", "consents"),
     {"POST": "_consent"}, True),
    (("emails", "reports"), {"POST": "_request_report"}, True),
    (("emails", "reports", "{report_id}"), {"GET": "_report_status"}, True),
    ((*DOWNLOAD_PREFIX, "{report_id}", "{file}"), {"GET": "_download"}, False),
)


def _match(segments: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str], bool] | None:
    for pattern, methods, needs_token in _ROUTES:
        if len(pattern) != len(segments):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    break
                params[want[1:-1]] = got
            elif want != got:
                break
        else:
            return methods, params, needs_token
    return None


class FakeApsis:
    """``with FakeApsis() as fake:`` starts the server; ``fake.url`` is its base URL."""

    def __init__(self, client_id: str = "test-client-id",
                 client_secret: str = "test-client-secret",  # noqa: S107 - a test fixture's secret
                 token_lifetime: float = 86400, rate_limit: int = 100) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.rate_limit = rate_limit
        self.profile_rate_limit = PROFILE_RATE_LIMIT
        self.token_calls_per_minute = TOKEN_CALLS_PER_MINUTE
        self.downloads_per_minute = EXPORT_DOWNLOADS_PER_MINUTE
        self.latency = 0.0
        self.requests: list[tuple[str, str, Any, float]] = []
        self.profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self.keyspaces: set[str] = set(DEFAULT_KEYSPACES)
        # (section or None for every section, discriminator) -> version id
        self.attribute_model: dict[tuple[str | None, str], str] = {
            (None, discriminator): version for discriminator, version in DEFAULT_ATTRIBUTES.items()
        }
        self.token_requests = 0
        self.max_per_second = 0
        self.count_429 = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.report_events: list[dict[str, Any]] = []
        self.reports: dict[str, dict[str, Any]] = {}
        self.report_interval = 60.0
        self.report_polls = 1
        self.report_max_window: float | None = None
        self.report_calls = 0
        self.status_calls = 0
        self.download_calls = 0
        self.download_url_lifetime = 3600.0
        self.file_lifetime = 86400.0
        self._last_report_call: float | None = None
        self._failures: collections.deque[tuple[int, Any, dict[str, str]]] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque()
        self._account_window: collections.deque[float] = collections.deque()
        self._profile_windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._token_window: collections.deque[float] = collections.deque()
        self._download_window: collections.deque[float] = collections.deque()
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
        """The next request (in order queued, the token call included) gets this answer instead."""
        with self.lock:
            self._failures.append((status, body, dict(headers or {})))

    def issue_token(self) -> str:
        """A valid bearer token without going through ``/oauth/token``: a JWT whose ``exp`` claim is its
        expiry, as developer.apsis.com/reference/authentication-1 describes."""
        now = time.time()
        header = {"alg": "RS256", "typ": "JWT"}
        claims = {"iss": "fake-apsis", "sub": self.client_id, "iat": int(now),
                  "exp": int(now + self.token_lifetime), "jti": uuid.uuid4().hex}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        token = ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                          b64(secrets.token_bytes(32))))
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def expire_tokens(self) -> None:
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def add_keyspace(self, discriminator: str) -> None:
        with self.lock:
            self.keyspaces.add(discriminator)

    def define_attribute(self, discriminator: str, version_id: str | None = None, section: str | None = None) -> str:
        """An attribute of the account's data model (``section`` None: in every section); answers its version id."""
        with self.lock:
            version = version_id or str(2000 + len(self.attribute_model))
            self.attribute_model[(section, discriminator)] = version
            return version

    def add_profile(self, keyspace: str, key: str, section: str,
                    attributes: dict[str, Any] | None = None) -> None:
        """A profile as if created earlier in ``section``; attributes by discriminator."""
        with self.lock:
            profile = self._profile_entry(keyspace, key)
            profile["sections"].add(section)
            _merge_patch(profile["attributes"].setdefault(section, {}), dict(attributes or {}))

    def consents(self, keyspace: str, key: str, channel: str = EMAIL_CHANNEL) -> dict[tuple[str, str], str]:
        with self.lock:
            profile = self.profiles.get((keyspace, key))
            if not profile:
                return {}
            return {(section, topic): consent["type"]
                    for (section, topic, chan), consent in profile["consents"].items() if chan == channel}

    def attributes(self, keyspace: str, key: str, section: str) -> dict[str, Any]:
        with self.lock:
            profile = self.profiles.get((keyspace, key))
            return dict(profile["attributes"].get(section, {})) if profile else {}

    def add_report_event(self, kind: str, email: str, section: str, occurred_at: str | int | datetime | None,
                         **extra: Any) -> str:
        """An email event as the event export lists it; answers its ``correlation_id``.

        ``occurred_at`` (ISO 8601 with an offset, milliseconds, a datetime, or None for 0) becomes
        ``event_time``; ``server_time`` is when it is added (APSIS received it), unless given. Keyword
        arguments named like a documented column (``correlation_id``, ``event_time``, ``server_time``,
        ``activity_id``, ``device``, ...) set that column; any other (e.g. ``bounce_type``) is kept on the
        event under ``extra`` and never written to the file, which has no such column.
        """
        if kind not in EVENT_TYPES:
            raise ValueError(f"{kind!r} is not an event type of the export: {', '.join(EVENT_TYPES)}")
        if occurred_at is None:
            event_time = 0
        elif isinstance(occurred_at, int):
            event_time = occurred_at
        elif isinstance(occurred_at, datetime):
            event_time = _epoch_ms(occurred_at)
        else:
            moment = datetime.fromisoformat(occurred_at)
            event_time = _epoch_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        columns = {name: extra.pop(name) for name in list(extra) if name in EXPORT_COLUMNS}
        with self.lock:
            n = len(self.report_events) + 1
            event: dict[str, Any] = {
                "activity_id": "5001", "split_id": "5001", "activity_name": "Newsletter",
                "split_activity_name": "", "sender": "Fake Sender", "subject": "News", "address": email,
                "variation": "", "type": kind, "correlation_id": f"corr-{n}-{uuid.uuid4().hex[:8]}",
                "event_time": event_time, "server_time": _now_ms(), "device": "",
            }
            event.update(columns)
            event["section"] = section
            event["extra"] = extra
            self.report_events.append(event)
            return str(event["correlation_id"])

    def repeat_report_event(self, correlation_id: str) -> None:
        """The same event delivered again by the email tool's retry: same correlation_id, a new server_time."""
        with self.lock:
            original = next(e for e in self.report_events if e["correlation_id"] == correlation_id)
            again = {**original, "extra": dict(original["extra"]), "server_time": _now_ms()}
            self.report_events.append(again)

    def set_report_polls(self, polls: int) -> None:
        """Reports requested from now on answer a status other than ``completed`` this many times first."""
        with self.lock:
            self.report_polls = polls

    # -- request handling (called from handler threads) ------------------------------------

    def _record(self, method: str, path: str, body: bytes) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self.lock:
            self.requests.append((method, path, parsed, time.monotonic()))

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

    @staticmethod
    def _window(window: collections.deque[float], now: float, span: float, limit: int) -> bool:
        """Counts ``now`` into a sliding window; False (not counted) when the window is full."""
        while window and window[0] <= now - span:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        return True

    def _authenticate(self, req: _Request) -> None:
        # help.apsis.com/en/articles/6104974-authentication: an invalid or expired token is 403 with
        # {"message": "User is not authorized to access this resource with an explicit deny"}.
        # A request without the header at all: 401 {"message": "Unauthorized"} (open question 1).
        authorization = req.headers.get("Authorization")
        if authorization is None:
            raise _gateway(401, "Unauthorized")
        scheme, _, token = authorization.partition(" ")
        with self.lock:
            expiry = self.tokens.get(token.strip()) if scheme == "Bearer" else None
        if expiry is None or expiry <= time.monotonic():
            raise _gateway(403, EXPLICIT_DENY)

    def _account_limit(self) -> None:
        # developer.apsis.com/reference/limits: most endpoints allow 100 requests per second per account.
        # ``max_per_second`` counts what this limit counts, refused requests included: the token endpoint
        # has a limit of its own (``token_calls_per_minute``) and is not in it.
        with self.lock:
            now = time.monotonic()
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] <= now - 1.0:
                self._arrivals.popleft()
            self.max_per_second = max(self.max_per_second, len(self._arrivals))
            if not self._window(self._account_window, now, 1.0, self.rate_limit):
                raise _problem(429, "Too many requests for this account (100 per second).")

    def _profile_limit(self, ident: tuple[str, str]) -> None:
        # developer.apsis.com/reference/limits: operations using the same profile key, 10 per second.
        with self.lock:
            window = self._profile_windows.setdefault(ident, collections.deque())
            if not self._window(window, time.monotonic(), 1.0, self.profile_rate_limit):
                raise _problem(429, "Too many requests for this profile key (10 per second).")

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Response:
        self._record(method, raw_path, body)
        if self.latency:
            time.sleep(self.latency)
        failure = self._next_failure()
        if failure is not None:
            return failure
        req = _Request(method, raw_path, headers, body)
        found = _match(req.segments)
        needs_token = found[2] if found else True
        if needs_token:
            self._authenticate(req)
            self._account_limit()
        # help.apsis.com/en/articles/6104976-api-responses: 404 resource not found; 405 for a method the
        # documented path does not take (open question: the pages list no 405, the fake answers it with Allow).
        if found is None:
            raise _problem(404, f"No resource at {urlsplit(raw_path).path}.")
        methods, params, _ = found
        if method not in methods:
            raise _problem(405, f"{method} is not allowed here.", {"Allow": ", ".join(methods)})
        if len(body) > MAX_BODY_BYTES:
            # developer.apsis.com/reference/limits: request bodies are limited to 100 kB.
            raise _problem(413, "The request body is larger than 100 kB.")
        if "key" in params:
            self._profile_limit((params["keyspace"], params["key"]))
        return getattr(self, methods[method])(req, **params)

    # -- endpoints -------------------------------------------------------------------------

    def _token(self, req: _Request) -> _Response:
        # developer.apsis.com/reference/post_oauth-token and /authentication-1: JSON
        # {grant_type: client_credentials, client_id, client_secret} -> {access_token, expires_in, token_type};
        # rate limited more strictly, 10 calls a minute (developer.apsis.com/reference/limits), 429 beyond.
        now = time.monotonic()
        with self.lock:
            self.token_requests += 1
            if not self._window(self._token_window, now, 60.0, self.token_calls_per_minute):
                raise _problem(429, "Too many token requests (10 per minute).")
        body = req.json_object("application/json")
        _fields(body, ("grant_type", "client_id", "client_secret"))
        if body["grant_type"] != "client_credentials":
            raise _problem(400, "grant_type must be client_credentials.")
        if body["client_id"] != self.client_id or body["client_secret"] != self.client_secret:
            raise _problem(401, "Invalid client credentials.")  # open question 2
        token = self.issue_token()
        lifetime = self.token_lifetime
        expires_in = int(lifetime) if lifetime == int(lifetime) else lifetime
        return _Response(200, {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})

    def _keyspace(self, keyspace: str) -> None:
        # help.apsis.com/en/articles/6104981: the keyspace must exist; an unknown one is 404 like the
        # profile (developer.apsis.com/reference/delete_audience-profiles-merges-...-1: "The specified
        # keyspace or profile was not found").
        if keyspace not in self.keyspaces:
            raise _problem(404, f"Keyspace {keyspace} not found.")

    def _profile_entry(self, keyspace: str, key: str) -> dict[str, Any]:
        return self.profiles.setdefault((keyspace, key), {"attributes": {}, "consents": {}, "sections": set()})

    def _existing(self, keyspace: str, key: str, section: str) -> dict[str, Any]:
        profile = self.profiles.get((keyspace, key))
        if profile is None or section not in profile["sections"]:
            raise _problem(404, f"Profile {key} not found in keyspace {keyspace} and section {section}.")
        return profile

    def _delete_profile(self, req: _Request, keyspace: str, key: str) -> _Response:
        # DELETE /audience/keyspaces/{keyspace}/profiles/{key}, no /v2: named by
        # developer.apsis.com/reference/put_audience-keyspaces-keyspace-discriminator-profiles-profile-key-locks
        # and used by the connector's deleteProfile (ApsisInternational/module-one Service/Api/ClientApi.php).
        # The profile goes in every section with its consents and events (help.apsis.one 6105271).
        self._keyspace(keyspace)
        with self.lock:
            if self.profiles.pop((keyspace, key), None) is None:
                raise _problem(404, f"Profile {key} not found in keyspace {keyspace}.")
        return _Response(204)

    def _attribute_keys(self, section: str, by_version: bool) -> dict[str, str]:
        """The attribute keys a section takes (version id or discriminator) -> discriminator."""
        keys: dict[str, str] = {}
        for (where, discriminator), version in self.attribute_model.items():
            if where is None or where == section:
                keys[version if by_version else discriminator] = discriminator
        return keys

    def _translate(self, body: dict[str, Any], section: str, by_version: bool) -> dict[str, Any]:
        accepted = self._attribute_keys(section, by_version)
        other = self._attribute_keys(section, not by_version)
        wrong_kind = sorted(k for k in body if k not in accepted and k in other)
        if wrong_kind:
            wanted = "version IDs" if by_version else "discriminators"
            raise _problem(400, f"This endpoint takes attribute {wanted}, not {', '.join(wrong_kind)}.")
        unknown = sorted(k for k in body if k not in accepted)
        if unknown:
            raise _problem(400, f"Unknown attributes in section {section}: {', '.join(unknown)}.")
        return {accepted[k]: v for k, v in body.items()}

    def _attributes_v1(self, req: _Request, keyspace: str, key: str, section: str) -> _Response:
        # developer.apsis.com/reference/patch_audience-keyspaces-keyspace-discriminator-profiles-profile-key-
        # sections-section-discriminator-attributes: keys are attribute version IDs, JSON Merge Patch, and the
        # profile is created when missing (the v2 page says v1 does; the connector's addAttributesToProfile).
        self._keyspace(keyspace)
        body = req.json_object("application/merge-patch+json")
        with self.lock:
            values = self._translate(body, section, by_version=True)
            profile = self._profile_entry(keyspace, key)
            profile["sections"].add(section)
            _merge_patch(profile["attributes"].setdefault(section, {}), values)
        return _Response(204)

    def _attributes_v2(self, req: _Request, keyspace: str, key: str, section: str) -> _Response:
        # developer.apsis.com/reference/patch_v2-audience-keyspaces-keyspace-discriminator-profiles-profile-key-
        # sections-section-discriminator-attributes-1: keys are attribute discriminators, JSON Merge Patch
        # (help.apsis.one/en/articles/6104982 sends application/merge-patch+json), and "this version will NOT
        # create a new profile" when it does not exist (open question 5: in that section).
        self._keyspace(keyspace)
        body = req.json_object("application/merge-patch+json")
        with self.lock:
            values = self._translate(body, section, by_version=False)
            profile = self._existing(keyspace, key, section)
            _merge_patch(profile["attributes"].setdefault(section, {}), values)
        return _Response(204)

    def _consent(self, req: _Request, keyspace: str, key: str, section: str) -> _Response:
        # developer.apsis.com/reference/post_v2-audience-keyspaces-keyspace-discriminator-profiles-profile-key-
        # sections-section-discriminator-consents-1: topic_discriminator, channel_discriminator, type
        # (opt-in / opt-out; pending-opt-in and confirmed-opt-in not supported by the API yet), reason, source
        # (required here; the connector's createConsent sends both). 201 when new, 204 when changed, 409 when
        # the transition is not supported (mostly the same type again).
        # help.apsis.one/en/articles/6104985 (add consent to a profile) says the same of the fields.
        self._keyspace(keyspace)
        body = req.json_object("application/json")
        _fields(body, ("topic_discriminator", "channel_discriminator", "type", "reason", "source"))
        for name in ("topic_discriminator", "reason", "source"):
            if not isinstance(body[name], str) or not body[name].strip():
                raise _problem(400, f"{name} must be a non-empty string.")
        if body["channel_discriminator"] not in CHANNELS:
            raise _problem(400, f"channel_discriminator must be one of {', '.join(CHANNELS)}.")
        kind = body["type"]
        if kind in UNSUPPORTED_CONSENT_TYPES:
            raise _problem(400, f"Consent type {kind} is not supported by APSIS One API yet.")
        if kind not in CONSENT_TYPES:
            raise _problem(400, f"type must be one of {', '.join(CONSENT_TYPES)}.")
        with self.lock:
            profile = self._existing(keyspace, key, section)
            ident = (section, body["topic_discriminator"], body["channel_discriminator"])
            current = profile["consents"].get(ident)
            if current is not None and current["type"] == kind:
                raise _problem(409, f"Transition from {kind} to {kind} is not supported.")
            profile["consents"][ident] = {"type": kind, "reason": body["reason"], "source": body["source"]}
        return _Response(204 if current is not None else 201)

    def _request_report(self, req: _Request) -> _Response:
        # developer.apsis.com/reference/post_emails-reports-1: an export of email events since start_at,
        # optionally to end_at, optionally for a segment (segment_filter); asynchronous, answers a report_id.
        # developer.apsis.com/reference/limits: event exports, 1 request a minute (429 beyond).
        now = time.monotonic()
        with self.lock:
            self.report_calls += 1
            if self._last_report_call is not None and now - self._last_report_call < self.report_interval:
                raise _problem(429, "Too many event export requests (1 per minute).")
            self._last_report_call = now
        body = req.json_object("application/json")
        _fields(body, ("start_at",), ("end_at", "segment_filter"))
        start = _parse_datetime(body["start_at"], "start_at")
        requested_at = _now_ms()
        end = None
        if body.get("end_at") is not None:
            end = _parse_datetime(body["end_at"], "end_at")
            if end <= start:
                raise _problem(400, "end_at must be later than start_at.")
        if "segment_filter" in body and not isinstance(body["segment_filter"], dict):
            raise _problem(400, "segment_filter must be an object.")
        if self.report_max_window is not None and (end or requested_at) - start > self.report_max_window * 1000:
            raise _problem(400, "The requested time window is too long.")
        with self.lock:
            rows = [dict(e) for e in self.report_events
                    if start <= e["server_time"] and (e["server_time"] < end if end is not None
                                                      else e["server_time"] <= requested_at)]
            report_id = str(uuid.uuid4())
            self.reports[report_id] = {
                "report_id": report_id, "request": body, "rows": rows, "polls_left": self.report_polls,
                "polls": 0, "created": datetime.now(UTC), "urls": {},
            }
        return _Response(201, {"report_id": report_id})

    def _report_status(self, req: _Request, report_id: str) -> _Response:
        # developer.apsis.com/reference/get_emails-reports-report-id-1: status; when completed,
        # file_download_url (GET it), file_download_url_expires_at, file_expires_at. With header_auth=true the
        # URL carries no credentials and the token comes in the x-apsis-auth response header instead.
        unknown = sorted(set(req.query) - {"header_auth"})
        if unknown:
            raise _problem(400, f"Unknown query parameters: {', '.join(unknown)}.")
        header_auth = (req.query.get("header_auth") or ["false"])[-1]
        if header_auth not in ("true", "false"):
            raise _problem(400, "header_auth must be true or false.")
        with self.lock:
            self.status_calls += 1
            report = self.reports.get(report_id)
            if report is None:
                raise _problem(404, f"Report {report_id} not found.")
            report["polls"] += 1
            if report["polls_left"] > 0:
                report["polls_left"] -= 1
                status = "queued" if report["polls"] == 1 else "in_progress"
                return _Response(200, {"report_id": report_id, "status": status})
            secret = secrets.token_urlsafe(24)
            lifetime = self.download_url_lifetime
            report["urls"][secret] = (time.monotonic() + lifetime, header_auth == "true")
            now = datetime.now(UTC)
            path = "/".join((*DOWNLOAD_PREFIX, report_id, "email-events.csv.gz"))
            url = f"{self.url}/{path}"
            headers: dict[str, str] = {}
            if header_auth == "true":
                headers["x-apsis-auth"] = secret
            else:
                url += f"?signature={secret}"
            return _Response(200, {
                "report_id": report_id, "status": "completed", "file_download_url": url,
                "file_download_url_expires_at": _iso(now + timedelta(seconds=lifetime)),
                "file_expires_at": _iso(report["created"] + timedelta(seconds=self.file_lifetime)),
            }, headers)

    def _download(self, req: _Request, report_id: str, file: str) -> _Response:
        # developer.apsis.com/reference/get_emails-reports-report-id-1: a GET of file_download_url, which
        # carries its own authentication (or x-apsis-auth when asked for). developer.apsis.com/reference/limits:
        # export downloads, 60 requests a minute. developer.apsis.com/reference/post_emails-reports-1: the file
        # is a GZIP compressed CSV with the documented default columns.
        with self.lock:
            self.download_calls += 1
            if not self._window(self._download_window, time.monotonic(), 60.0, self.downloads_per_minute):
                raise _problem(429, "Too many export downloads (60 per minute).")
        if "Authorization" in req.headers:
            raise _problem(400, "The download URL carries its own authentication; send no Authorization header.")
        with self.lock:
            report = self.reports.get(report_id)
            if report is None or file != "email-events.csv.gz":
                raise _gateway(404, "Not Found")
            signature = (req.query.get("signature") or [None])[-1]
            header_token = req.headers.get("x-apsis-auth")
            grant = report["urls"].get(signature) if signature else None
            if grant is not None and grant[1]:
                grant = None  # a header-auth URL's token is not accepted in the query
            if grant is None and header_token and not signature:
                grant = report["urls"].get(header_token)
                if grant is not None and not grant[1]:
                    grant = None
            if grant is None or grant[0] <= time.monotonic():
                raise _gateway(403, "Access denied: the download URL is invalid or has expired.")
            rows = report["rows"]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in EXPORT_COLUMNS})
        payload = gzip.compress(text.getvalue().encode("utf-8"))
        return _Response(200, payload, {"Content-Disposition": 'attachment; filename="email-events.csv.gz"'},
                         "application/gzip")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "FakeApsis/2.0"
    timeout = 10
    fake: FakeApsis

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            response = self.fake.handle(self.command, self.path, self.headers, raw)
        except _Response as exc:
            response = exc
        except Exception as exc:  # a bug in the fake: answer 500 so the test sees it
            response = _problem(500, f"Fake APSIS error: {exc!r}")
        self._send(response)

    def _send(self, response: _Response) -> None:
        with self.fake.lock:
            self.fake.statuses[response.status] += 1
            if response.status == 429:
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

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = _serve
