"""A fake Mailchimp Marketing API 3.0, served over real HTTP on 127.0.0.1.

Built only from what Mailchimp documents: the API reference (mailchimp.com/developer/marketing/api/),
its docs and guides, the spec its clients are generated from, and the official Python client
``mailchimp-marketing==3.0.80``, whose request building is what this server judges. Every handler
names the page it follows. Where the documentation is silent the fake takes the stricter reading;
each such place is marked ``OPEN QUESTION``.

Point the real client at it::

    client = mailchimp_marketing.Client()
    client.set_config({"api_key": fake.api_key, "server": "us1", "timeout": 5})
    client.api_client.host = fake.url

What the client does with the answers (read from ``api_client.py``): a JSON answer (Content-Type
containing ``application/json``) becomes a dict; ``application/problem+json`` is not that, so an
error's ``ApiClientError.text`` is the raw JSON string; an answer with no body or no Content-Type
(204, a bodiless 429 or 403) is *returned* as the ``requests.Response`` instead of raising.

Public API
----------
``FakeMailchimp(api_key="testkey-us1", latency=0.0)``: ``start()``/``stop()`` or ``with``; ``url``, ``api_key``.

State, readable and writable by tests: ``lists``, ``members`` (list id -> subscriber hash -> member),
``compliance`` and ``forgotten`` (list id -> set of hashes), ``webhooks`` (list id -> list),
``requests`` ((method, path, json body) per call, on arrival), ``request_headers``, ``request_queries``,
``answers`` ((method, path, status, json body) as sent), ``webhook_deliveries``.

Limits and faults: ``max_connections`` (10 per account), ``bodiless_429``, ``count_429``,
``in_flight``, ``max_concurrent``, ``latency``, ``outage_until``/``outage_hang``/``outage_answers``,
``enqueue_failure()``, ``refuse_signups()``, ``batch_schema_errors`` ("member" or "request"),
``validate_webhook_urls``.

Helpers: ``add_list``, ``add_merge_field``, ``add_merge_fields``, ``remove_merge_field``, ``merge_tags``,
``add_member``, ``member``, ``forget``, ``confirm``, ``paths``, ``unsubscribe_member``, ``clean_member``,
``deliver_webhook``, ``wait_for_webhooks``; module functions ``subscriber_hash``, ``webhook_fields``,
``post_webhook``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import ipaddress
import json
import queue
import re
import socketserver
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

DOCS = "https://mailchimp.com/developer/marketing"
ERROR_TYPE = f"{DOCS}/docs/errors/"
MEMBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
PATCH_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")  # the PATCH schema has no "transactional"
COMPLIANCE_STATUSES = ("unsubscribed", "cleaned")
SIGNUP_STATUSES = ("subscribed", "pending")
MERGE_FIELD_TYPES = (
    "text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown", "birthday", "zip",
)
# {DOCS}/docs/merge-fields/ ("Structure"): a new audience has FNAME, LNAME, ADDRESS and PHONE.
DEFAULT_MERGE_FIELDS = (
    {"tag": "FNAME", "name": "First Name", "type": "text"},
    {"tag": "LNAME", "name": "Last Name", "type": "text"},
    {"tag": "ADDRESS", "name": "Address", "type": "address"},
    {"tag": "PHONE", "name": "Phone Number", "type": "phone"},
)
BATCH_LIMIT = 500  # {DOCS}/api/lists/batch-subscribe-or-unsubscribe/: up to 500 members a call
MAX_CONNECTIONS = 10  # {DOCS}/docs/fundamentals/ ("Throttling"): 10 simultaneous connections
PAGE_COUNT_DEFAULT = 10  # {DOCS}/docs/methods-parameters/ ("Pagination"): count defaults to 10
PAGE_COUNT_MAX = 1000  # ... and is at most 1000
WEBHOOK_EVENTS = ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign")
WEBHOOK_SOURCES = ("user", "admin", "api")
WEBHOOK_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # fired_at, {DOCS}/guides/sync-audience-data-webhooks/
WEBHOOK_TIMEOUT = 10.0  # ... a delivery taking over 10 s is cancelled
VALIDATION_DETAIL = "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_HASH_RE = re.compile(r"^[0-9a-f]{32}$")
_TAG_RE = re.compile(r"^[A-Z0-9_]{1,10}$")
# ISO 8601 as the reference says ("in ISO 8601 format"); OPEN QUESTION: whether "Y-m-d H:i:s" is also taken.
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")
# OPEN QUESTION: the reference gives no list of language codes; a code of this shape is taken.
_LANGUAGE_RE = re.compile(r"^[a-z]{2}(_[A-Z]{2})?$")


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased address (list-members reference)."""
    return hashlib.md5(email.lower().encode("utf-8"), usedforsecurity=False).hexdigest()


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- errors -----------------------------------------------------------------------------------


class _Problem(Exception):
    """An error answer: application/problem+json with type, title, status, detail, instance
    ({DOCS}/docs/errors/, "Error format")."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"type": ERROR_TYPE, "title": self.title, "status": self.status, "detail": self.detail,
                "instance": str(uuid.uuid4()), **self.extra}


def _not_found(detail: str = "The requested resource could not be found.") -> _Problem:
    return _Problem(404, "Resource Not Found", detail)


def _invalid(errors: list[dict[str, str]]) -> _Problem:
    return _Problem(400, "Invalid Resource", VALIDATION_DETAIL, errors=errors)


def _invalid_detail(detail: str) -> _Problem:
    return _Problem(400, "Invalid Resource", detail)


def _forgotten(email: str) -> _Problem:
    return _Problem(400, "Forgotten Email Not Subscribed",
                    f"{email} was permanently deleted and cannot be re-imported. "
                    "The contact must re-subscribe to get back on the list.")


def _in_compliance(email: str) -> _Problem:
    return _Problem(400, "Member In Compliance State",
                    f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
                    "and cannot be subscribed.")


def _member_exists(email: str) -> _Problem:
    return _Problem(400, "Member Exists",
                    f"{email} is already a list member. Use PUT to insert or update list members.")


# -- request body schemas (from the spec the clients are generated from) --------------------------

_Check = Callable[[Any], "str | None"]


def _of_type(expected: str, *types: type) -> _Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) and bool not in types:
            return f"Schema describes {expected}, boolean found instead"
        return None if isinstance(value, types) else f"Schema describes {expected}, {_json_type(value)} found instead"
    return check


_STRING = _of_type("string", str)
_BOOLEAN = _of_type("boolean", bool)
_INTEGER = _of_type("integer", int)
_NUMBER = _of_type("number", int, float)
_OBJECT = _of_type("object", dict)
_ARRAY = _of_type("array", list)


def _enum(values: tuple[str, ...]) -> _Check:
    def check(value: Any) -> str | None:
        return None if value in values else f"Value must be one of: {', '.join(values)} (not {value!r})"
    return check


def _timestamp(value: Any) -> str | None:
    if not isinstance(value, str) or not _TIMESTAMP_RE.match(value):
        return "Please enter a date and time in ISO 8601 format."
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "Please enter a valid date and time."
    return None


def _utc(value: str) -> str:
    """An ISO 8601 time as Mailchimp answers it: UTC, +00:00 (a time without an offset is taken as UTC)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _ip(value: Any) -> str | None:
    # OPEN QUESTION: the reference only says "IP address"; an address that does not parse is refused.
    try:
        ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        return "Please enter a valid IP address."
    return None


def _language(value: Any) -> str | None:
    return None if isinstance(value, str) and _LANGUAGE_RE.match(value) else "Please enter a valid language code."


def _flags(names: tuple[str, ...]) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"Schema describes object, {_json_type(value)} found instead"
        for key, flag in value.items():
            if key not in names:
                return f"{key} is not one of: {', '.join(names)}"
            if not isinstance(flag, bool):
                return f"{key}: schema describes boolean, {_json_type(flag)} found instead"
        return None
    return check


def _location(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"Schema describes object, {_json_type(value)} found instead"
    for key, number in value.items():
        if key not in ("latitude", "longitude"):
            return f"{key} is not a field of location"
        if isinstance(number, bool) or not isinstance(number, int | float):
            return f"{key}: schema describes number, {_json_type(number)} found instead"
    return None


def _interests(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"Schema describes object, {_json_type(value)} found instead"
    bad = [key for key, flag in value.items() if not isinstance(flag, bool)]
    return f"Interest values must be booleans ({', '.join(bad)})" if bad else None


def _permissions(value: Any) -> str | None:
    """``marketing_permissions``: an array of ``{marketing_permission_id: string, enabled: boolean}``."""
    if not isinstance(value, list):
        return f"Schema describes array, {_json_type(value)} found instead"
    for item in value:
        if not isinstance(item, dict):
            return f"Schema describes object, {_json_type(item)} found instead"
        extra = set(item) - {"marketing_permission_id", "enabled"}
        if extra:
            return f"{', '.join(sorted(extra))} is not a field of a marketing permission"
        if not isinstance(item.get("marketing_permission_id"), str):
            return "marketing_permission_id: schema describes string"
        if not isinstance(item.get("enabled"), bool):
            return "enabled: schema describes boolean"
    return None


def _strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "Schema describes array of strings"
    return None


def _url(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"Schema describes string, {_json_type(value)} found instead"
    parts = urlsplit(value)
    return None if parts.scheme in ("http", "https") and parts.netloc else "Please enter a valid URL."


_MEMBER_COMMON: dict[str, _Check] = {
    "email_address": _STRING,
    "email_type": _enum(("html", "text")),
    "merge_fields": _OBJECT,
    "interests": _interests,
    "language": _language,
    "vip": _BOOLEAN,
    "location": _location,
    "ip_signup": _ip,
    "timestamp_signup": _timestamp,
    "ip_opt": _ip,
    "timestamp_opt": _timestamp,
}
# {DOCS}/api/list-members/add-or-update-list-member/ (AddListMembers2): required email_address, status_if_new.
# OPEN QUESTION: the prose says both are needed only for a new address; the schema lists them as required,
# so the fake requires them on every PUT.
_PUT_SCHEMA = {**_MEMBER_COMMON, "status_if_new": _enum(MEMBER_STATUSES), "status": _enum(MEMBER_STATUSES),
               "marketing_permissions": _permissions}
# {DOCS}/api/list-members/add-member-to-list/ (AddListMembers): required email_address, status.
_POST_SCHEMA = {**_MEMBER_COMMON, "status": _enum(MEMBER_STATUSES), "marketing_permissions": _permissions,
                "tags": _strings}
# {DOCS}/api/list-members/update-list-member/ (AddListMembers1): nothing required.
_PATCH_SCHEMA = {**_MEMBER_COMMON, "status": _enum(PATCH_STATUSES), "marketing_permissions": _permissions}
# {DOCS}/api/lists/batch-subscribe-or-unsubscribe/ (ListsBatchSubscribeOrUnsubscribeRequest): a member has
# NO marketing_permissions and no tags. OPEN QUESTION: the schema marks nothing required in a member; the fake
# requires email_address and status (a member without them cannot be subscribed or unsubscribed).
_BATCH_MEMBER_SCHEMA = {**_MEMBER_COMMON, "status": _enum(MEMBER_STATUSES)}
_BATCH_SCHEMA: dict[str, _Check] = {"members": _ARRAY, "update_existing": _BOOLEAN, "sync_tags": _BOOLEAN}
_MEMBER_SCHEMAS: dict[str, tuple[dict[str, _Check], tuple[str, ...]]] = {
    "put": (_PUT_SCHEMA, ("email_address", "status_if_new")),
    "post": (_POST_SCHEMA, ("email_address", "status")),
    "patch": (_PATCH_SCHEMA, ()),
    "batch": (_BATCH_MEMBER_SCHEMA, ("email_address", "status")),
}
# {DOCS}/api/list-merges/add-merge-field/ (ListsAddMergeFieldRequest): required name, type.
_MERGE_FIELD_SCHEMA: dict[str, _Check] = {
    "tag": _STRING, "name": _STRING, "type": _enum(MERGE_FIELD_TYPES), "required": _BOOLEAN,
    "default_value": _STRING, "public": _BOOLEAN, "display_order": _INTEGER, "options": _OBJECT,
    "help_text": _STRING,
}
# {DOCS}/api/list-merges/update-merge-field/: the same fields but the type.
_MERGE_FIELD_PATCH_SCHEMA = {k: v for k, v in _MERGE_FIELD_SCHEMA.items() if k != "type"}
# {DOCS}/api/list-webhooks/add-webhook/: url, events{...}, sources{user, admin, api}.
_WEBHOOK_SCHEMA: dict[str, _Check] = {"url": _url, "events": _flags(WEBHOOK_EVENTS), "sources": _flags(WEBHOOK_SOURCES)}


def _validate(body: dict[str, Any], schema: dict[str, _Check], required: tuple[str, ...]) -> list[dict[str, str]]:
    """Field errors: missing required fields, unknown fields (OPEN QUESTION: the spec does not say
    additionalProperties is false; the fake refuses them), and type errors."""
    errors = [{"field": key, "message": "This value should not be blank."} for key in required if key not in body]
    for key, value in body.items():
        check = schema.get(key)
        if check is None:
            errors.append({"field": key, "message": f"{key} is not a field of this resource's schema."})
            continue
        message = check(value)
        if message:
            errors.append({"field": key, "message": message})
    return errors


def _merge_value_error(field: dict[str, Any], value: Any) -> str | None:
    """A merge value checked against its field's type ({DOCS}/docs/merge-fields/, "Add merge data to contacts")."""
    kind = field["type"]
    if value == "":
        return None
    if kind == "address":
        if not isinstance(value, dict):
            return "An address is an object with addr1, city, state and zip."
        missing = [k for k in ("addr1", "city", "state", "zip") if not isinstance(value.get(k), str)]
        extra = set(value) - {"addr1", "addr2", "city", "state", "zip", "country"}
        return "Address fields missing or unknown: " + ", ".join(missing + sorted(extra)) if missing or extra else None
    if kind == "number":
        if isinstance(value, bool):
            return "Please enter a number."
        if isinstance(value, int | float):
            return None
        try:
            float(value)
        except (TypeError, ValueError):
            return "Please enter a number."
        return None
    if not isinstance(value, str):
        return f"Schema describes string, {_json_type(value)} found instead"
    if kind in ("url", "imageurl"):
        return _url(value)
    if kind in ("radio", "dropdown"):
        choices = field.get("options", {}).get("choices") or []
        return None if value in choices else f"Please choose one of: {', '.join(choices)}"
    if kind == "text" and len(value) > 255:
        return "Text merge values are at most 255 characters."
    return None


def _partial(data: Any, query: dict[str, str]) -> Any:
    """``fields`` / ``exclude_fields`` with dot notation ({DOCS}/docs/methods-parameters/, "Partial responses")."""
    keep = [f.split(".") for f in query.get("fields", "").split(",") if f]
    drop = [f.split(".") for f in query.get("exclude_fields", "").split(",") if f]
    if keep:
        data = _keep(data, keep)
    if drop:
        data = _drop(data, drop)
    return data


def _keep(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_keep(item, paths) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key in dict.fromkeys(p[0] for p in paths):
        if key not in value:
            continue
        rest = [p[1:] for p in paths if p[0] == key]
        out[key] = value[key] if any(not r for r in rest) else _keep(value[key], rest)
    return out


def _drop(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_drop(item, paths) for item in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for path in paths:
        if path[0] in out:
            if len(path) == 1:
                del out[path[0]]
            else:
                out[path[0]] = _drop(out[path[0]], [path[1:]])
    return out


def _int_param(query: dict[str, str], name: str, default: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid([{"field": name, "message": "Schema describes integer."}]) from None
    if value < 0 or (maximum is not None and value > maximum):
        # OPEN QUESTION: the reference gives the maximum but not what a larger count does; refused here.
        raise _invalid([{"field": name, "message": f"Must be between 0 and {maximum}." if maximum else
                         "Must not be negative."}])
    return value


def _flag(query: dict[str, str], name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise _invalid([{"field": name, "message": "Schema describes boolean."}])


def _page(items: list[Any], query: dict[str, str]) -> list[Any]:
    count = _int_param(query, "count", PAGE_COUNT_DEFAULT, PAGE_COUNT_MAX)
    offset = _int_param(query, "offset", 0)
    return items[offset:offset + count]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
    out["_links"] = []
    return out


# -- webhook deliveries ---------------------------------------------------------------------


def webhook_fields(kind: str, data: dict[str, Any], fired_at: str | None = None) -> dict[str, str]:
    """A delivery's form fields as Mailchimp names them: ``type``, ``fired_at`` (``Y-m-d H:i:s``, UTC here:
    OPEN QUESTION, the guide does not name the zone) and ``data[...]``, nested keys as ``data[merges][FNAME]``
    ({DOCS}/guides/sync-audience-data-webhooks/)."""
    fields = {"type": kind, "fired_at": fired_at or datetime.now(UTC).strftime(WEBHOOK_TIME_FORMAT)}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}[{key}]", inner)
        else:
            fields[prefix] = "" if value is None else str(value)

    flatten("data", data)
    return fields


def post_webhook(url: str, fields: dict[str, str], timeout: float = WEBHOOK_TIMEOUT) -> requests.Response:
    """POST one delivery as ``application/x-www-form-urlencoded``, as Mailchimp does."""
    return requests.post(url, data=fields, timeout=timeout, headers={"User-Agent": "MailChimp"})


# -- the server -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins the handler threads
    block_on_close = True
    request_queue_size = 128  # socketserver's 5 would leave simultaneous callers waiting for a SYN retry

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


# Paths under /3.0 and their methods. A method mapped to None exists in the real API but not in this fake:
# it answers 501 so a test notices the gap instead of reading a 404 or 405 the real API would not give.
_ROUTES: tuple[tuple[tuple[str, ...], dict[str, str | None]], ...] = (
    (("ping",), {"GET": "ping"}),
    (("lists",), {"GET": "get_lists", "POST": None}),
    (("lists", "{list_id}"), {"GET": "get_list", "POST": "batch_members", "PATCH": None, "DELETE": None}),
    (("lists", "{list_id}", "members"), {"GET": "list_members", "POST": "add_member"}),
    (("lists", "{list_id}", "members", "{subscriber_hash}"),
     {"GET": "get_member", "PUT": "set_member", "PATCH": "update_member", "DELETE": "archive_member"}),
    (("lists", "{list_id}", "members", "{subscriber_hash}", "actions", "delete-permanent"),
     {"POST": "delete_member_permanent"}),
    (("lists", "{list_id}", "merge-fields"), {"GET": "list_merge_fields", "POST": "add_merge_field"}),
    (("lists", "{list_id}", "merge-fields", "{merge_id}"),
     {"GET": "get_merge_field", "PATCH": "update_merge_field", "DELETE": "delete_merge_field"}),
    (("lists", "{list_id}", "webhooks"), {"GET": "list_webhooks", "POST": "add_webhook"}),
    (("lists", "{list_id}", "webhooks", "{webhook_id}"),
     {"GET": "get_webhook", "PATCH": "update_webhook", "DELETE": "delete_webhook"}),
)
_UNLOCKED = {"add_webhook"}  # does its validation GET without holding the fake's lock


class FakeMailchimp:
    """A Mailchimp Marketing API 3.0 double. See the module docstring."""

    def __init__(self, api_key: str = "testkey-us1", latency: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.lists: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        self.forgotten: dict[str, set[str]] = {}  # permanently deleted hashes, per list
        self.compliance: dict[str, set[str]] = {}  # hashes that unsubscribed or were cleaned, per list
        self.webhooks: dict[str, list[dict[str, Any]]] = {}
        self.webhook_deliveries: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.request_queries: list[dict[str, str]] = []
        self.answers: list[tuple[str, str, int, Any]] = []  # (method, path, status, json body or None), as sent
        self.max_connections = MAX_CONNECTIONS
        self.bodiless_429 = False  # {DOCS}/docs/fundamentals/: "a 429 or 403 without a JSON body" under load
        self.count_429 = 0
        self.max_concurrent = 0
        self.in_flight = 0
        # An outage: until this time.monotonic() every call answers 503, every other one only after
        # ``outage_hang`` seconds (longer than the client waits: a timeout).
        self.outage_until = 0.0
        self.outage_hang = 0.0
        self.outage_answers = 0
        # How a batch member carrying a field its schema lacks is refused: "member" (that member's
        # entry in ``errors``, the others go through) or "request" (400 for the whole call). OPEN QUESTION.
        self.batch_schema_errors = "member"
        self.validate_webhook_urls = True
        self.webhook_timeout = WEBHOOK_TIMEOUT
        self._account_in_flight = 0
        self._signup_refusals: dict[str, int] = {}
        self._failures: deque[tuple[int, dict[str, Any] | None, dict[str, str], str | None, str | None]] = deque()
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._outbox: queue.Queue[tuple[list[str], dict[str, str]] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeMailchimp:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._closing.clear()
        self._server = _Server(("127.0.0.1", 0), handler)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/3.0"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-mailchimp", daemon=True)
        self._thread.start()
        self._sender = threading.Thread(target=self._send_webhooks, name="fake-mailchimp-webhooks", daemon=True)
        self._sender.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # cut injected latency and hangs short
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=self.webhook_timeout + 1)
            self._sender = None

    def __enter__(self) -> FakeMailchimp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup and inspection helpers ----------------------------------------------------------

    def add_list(self, list_id: str, merge_fields: list[dict[str, Any] | str] | None = None, name: str | None = None,
                 marketing_permissions: list[str | dict[str, str]] | None = None,
                 interests: list[str] | None = None) -> dict[str, Any]:
        """Create an audience. ``merge_fields`` are dicts {tag, name, type, ...} or bare tags (type text);
        None gives the documented defaults FNAME, LNAME, ADDRESS, PHONE. ``marketing_permissions`` are the
        audience's GDPR permission ids (or dicts {marketing_permission_id, text}); none by default.
        ``interests`` are interest ids members may be put in."""
        with self._lock:
            permissions = [
                {"marketing_permission_id": p, "text": p} if isinstance(p, str) else dict(p)
                for p in marketing_permissions or []
            ]
            lst = {"id": list_id, "name": name or f"List {list_id}", "merge_fields": [],
                   "marketing_permissions": permissions, "interests": list(interests or []),
                   "date_created": _now(), "_next_merge_id": 1}
            self.lists[list_id] = lst
            self.members.setdefault(list_id, {})
            self.forgotten.setdefault(list_id, set())
            self.compliance.setdefault(list_id, set())
            self.webhooks.setdefault(list_id, [])
            for field in DEFAULT_MERGE_FIELDS if merge_fields is None else merge_fields:
                spec = {"tag": field, "name": field, "type": "text"} if isinstance(field, str) else dict(field)
                self._create_merge_field(list_id, spec)
            return lst

    def add_merge_field(self, list_id: str, tag: str, name: str | None = None, type: str = "text",
                        **options: Any) -> dict[str, Any]:
        """Add one merge field directly, as a marketer can in the audience settings."""
        with self._lock:
            return self._create_merge_field(list_id, {"tag": tag, "name": name or tag, "type": type, **options})

    def add_merge_fields(self, list_id: str, count: int, prefix: str = "EXTRA", type: str = "text") -> list[str]:
        """Pre-fill an audience with ``count`` other merge fields (tags PREFIX1, PREFIX2, ...)."""
        return [self.add_merge_field(list_id, f"{prefix}{n}", f"{prefix.title()} {n}", type)["tag"]
                for n in range(1, count + 1)]

    def remove_merge_field(self, list_id: str, tag: str) -> None:
        """Delete a merge field (and its values on every member), as a marketer can in Mailchimp."""
        with self._lock:
            lst = self.lists[list_id]
            lst["merge_fields"] = [f for f in lst["merge_fields"] if f["tag"] != tag]
            for member in self.members[list_id].values():
                member["merge_fields"].pop(tag, None)

    def merge_tags(self, list_id: str) -> list[str]:
        return [f["tag"] for f in self.lists[list_id]["merge_fields"]]

    def member(self, list_id: str, email: str) -> dict[str, Any] | None:
        """The stored member (as GET answers it, without _links), or None."""
        return self.members.get(list_id, {}).get(subscriber_hash(email))

    def add_member(self, list_id: str, email: str, status: str = "subscribed", **fields: Any) -> dict[str, Any]:
        """Seed a member directly, bypassing the API's rules. Unsubscribed/cleaned members enter compliance."""
        with self._lock:
            h = subscriber_hash(email)
            member = self._blank_member(list_id, email, status)
            member["merge_fields"].update(fields.pop("merge_fields", {}) or {})
            member.update(fields)
            self.members[list_id][h] = member
            if status in COMPLIANCE_STATUSES:
                self.compliance[list_id].add(h)
            return member

    def forget(self, list_id: str, email: str) -> None:
        """Mark an address as permanently deleted, as if delete-permanent had been called."""
        with self._lock:
            h = subscriber_hash(email)
            self.members[list_id].pop(h, None)
            self.forgotten[list_id].add(h)
            self.compliance[list_id].discard(h)

    def confirm(self, list_id: str, email: str) -> dict[str, Any]:
        """The person confirmed Mailchimp's opt-in mail for a pending member: subscribed, compliance cleared."""
        with self._lock:
            h = subscriber_hash(email)
            member = self.members[list_id][h]
            member["status"] = "subscribed"
            member["timestamp_opt"] = member["last_changed"] = _now()
            self.compliance[list_id].discard(h)
            self._emit(list_id, "subscribe", self._hook_data(list_id, member, with_signup=True), "user")
            return member

    def refuse_signups(self, email: str, times: int = 1) -> None:
        """The next ``times`` writes that would make ``email`` subscribed or pending (on any audience) answer
        400 "Invalid Resource" "... has signed up to a lot of lists very recently ...", a temporary refusal."""
        with self._lock:
            self._signup_refusals[subscriber_hash(email)] = times

    def enqueue_failure(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                        *, method: str | None = None, path_contains: str | None = None) -> None:
        """Queue one answer given before normal handling (FIFO). ``body=None`` sends the status with no body
        and no Content-Type (as Mailchimp's edge does for some 429/403). A dict body is sent as
        application/problem+json unless ``headers`` sets Content-Type. ``method`` and ``path_contains``
        restrict which request consumes it."""
        with self._lock:
            self._failures.append((status, body, dict(headers or {}), method, path_contains))

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]

    # -- webhook helpers ------------------------------------------------------------------------

    def unsubscribe_member(self, list_id: str, email: str, *, action: str = "unsub", reason: str = "manual",
                           campaign_id: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """Someone leaves the audience inside Mailchimp, then the ``unsubscribe`` webhook fires.
        ``action="unsub"``: the person unsubscribed (source "user"; ``reason`` "manual" or "abuse"), the member
        becomes unsubscribed and enters compliance state. ``action="delete"``: an admin deleted the contact
        (source "admin"); the member is archived. Returns the deliveries made."""
        if action not in ("unsub", "delete"):
            raise ValueError("action is 'unsub' or 'delete'")
        with self._lock:
            h = subscriber_hash(email)
            member = self.members[list_id][h]
            data = self._hook_data(list_id, member)
            data.update({"action": action, "reason": reason})
            if campaign_id:
                data["campaign_id"] = campaign_id
            member["status"] = "unsubscribed" if action == "unsub" else "archived"
            member["last_changed"] = _now()
            if action == "unsub":
                member["unsubscribe_reason"] = reason
                self.compliance[list_id].add(h)
        return self.deliver_webhook(list_id, "unsubscribe", data, source=source or ("user" if action == "unsub"
                                                                                      else "admin"))

    def clean_member(self, list_id: str, email: str, *, reason: str = "hard",
                     campaign_id: str | None = None) -> list[dict[str, Any]]:
        """The address bounced (``reason`` "hard") or complained ("abuse"): cleaned, then the ``cleaned`` webhook.
        OPEN QUESTION: which source a cleaning counts as; the fake delivers it whatever the sources."""
        with self._lock:
            h = subscriber_hash(email)
            member = self.members[list_id][h]
            member["status"] = "cleaned"
            member["last_changed"] = _now()
            self.compliance[list_id].add(h)
            data = {"list_id": list_id, "campaign_id": campaign_id or "", "reason": reason,
                    "email": member["email_address"]}
        return self.deliver_webhook(list_id, "cleaned", data, source=None)

    def deliver_webhook(self, list_id: str, kind: str, data: dict[str, Any], *, source: str | None = "user",
                        fired_at: str | None = None) -> list[dict[str, Any]]:
        """POST one event now to every webhook of the audience that has ``events[kind]`` and ``sources[source]``
        on (``source=None``: whatever its sources, as for campaign events). Returns the deliveries."""
        with self._lock:
            targets = self._webhook_targets(list_id, kind, source)
        fields = webhook_fields(kind, data, fired_at)
        return [self._deliver(url, fields) for url in targets]

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until the deliveries caused by API calls (sent in the background, as Mailchimp does) are made."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._outbox.unfinished_tasks

    def _webhook_targets(self, list_id: str, kind: str, source: str | None) -> list[str]:
        return [hook["url"] for hook in self.webhooks.get(list_id, [])
                if hook["events"].get(kind) and (source is None or kind == "campaign" or hook["sources"].get(source))]

    def _deliver(self, url: str, fields: dict[str, str]) -> dict[str, Any]:
        record: dict[str, Any] = {"url": url, "fields": fields, "status": None, "error": None}
        try:
            record["status"] = post_webhook(url, fields, self.webhook_timeout).status_code
        except requests.RequestException as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.webhook_deliveries.append(record)
        return record

    def _emit(self, list_id: str, kind: str, data: dict[str, Any], source: str) -> None:
        """Queue the event for the webhooks that want it, sent by a background thread (Mailchimp's deliveries
        are asynchronous too). Mailchimp retries a failed delivery for 75 minutes; the fake tries once and
        records the outcome in ``webhook_deliveries``."""
        targets = self._webhook_targets(list_id, kind, source)
        if targets:
            self._outbox.put((targets, webhook_fields(kind, data)))

    def _send_webhooks(self) -> None:
        while True:
            item = self._outbox.get()
            try:
                if item is None:
                    return
                targets, fields = item
                for url in targets:
                    if not self._closing.is_set():
                        self._deliver(url, fields)
            finally:
                self._outbox.task_done()

    def _hook_data(self, list_id: str, member: dict[str, Any], with_signup: bool = False) -> dict[str, Any]:
        merges: dict[str, Any] = {"EMAIL": member["email_address"]}
        merges.update(member["merge_fields"])
        data = {"id": member["unique_email_id"], "email": member["email_address"],
                "email_type": member["email_type"], "ip_opt": member["ip_opt"], "web_id": member["web_id"],
                "merges": merges, "list_id": list_id}
        if with_signup:
            data["ip_signup"] = member["ip_signup"]
        return data

    # -- internals -----------------------------------------------------------------------------

    def _take_failure(self, method: str, path: str) -> tuple[int, dict[str, Any] | None, dict[str, str]] | None:
        with self._lock:
            for item in list(self._failures):
                status, body, headers, want_method, want_path = item
                if want_method and want_method.upper() != method:
                    continue
                if want_path and want_path not in path:
                    continue
                self._failures.remove(item)
                return status, body, headers
        return None

    def _list(self, list_id: str) -> dict[str, Any]:
        lst = self.lists.get(list_id)
        if lst is None:
            raise _not_found()
        return lst

    def _create_merge_field(self, list_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        lst = self._list(list_id)
        errors = _validate(spec, _MERGE_FIELD_SCHEMA, ("name", "type"))
        if errors:
            raise _invalid(errors)
        merge_id = lst["_next_merge_id"]
        tag = spec.get("tag") or f"MMERGE{merge_id}"
        # OPEN QUESTION: the reference does not give the tag's form; Mailchimp's tags are at most 10
        # upper-case letters, digits or underscores, and the fake refuses others rather than rewriting them.
        if not _TAG_RE.match(tag):
            raise _invalid([{"field": "tag", "message": "A merge tag is 1 to 10 upper-case letters, digits or _."}])
        if tag in ("EMAIL", *self.merge_tags(list_id)):
            raise _invalid_detail(f'A Merge Field with the tag "{tag}" already exists for this list.')
        lst["_next_merge_id"] = merge_id + 1
        field = {
            "merge_id": merge_id,
            "tag": tag,
            "name": spec["name"],
            "type": spec["type"],
            "required": spec.get("required", False),
            "default_value": spec.get("default_value", ""),
            "public": spec.get("public", False),
            "display_order": spec.get("display_order", len(lst["merge_fields"]) + 2),
            "options": spec.get("options", {}),
            "help_text": spec.get("help_text", ""),
            "list_id": list_id,
        }
        lst["merge_fields"].append(field)
        for member in self.members[list_id].values():
            member["merge_fields"].setdefault(tag, "")
        return field

    def _merge_field(self, list_id: str, merge_id: str) -> dict[str, Any]:
        for field in self._list(list_id)["merge_fields"]:
            if str(field["merge_id"]) == merge_id:
                return field
        raise _not_found()

    def _blank_member(self, list_id: str, email: str, status: str) -> dict[str, Any]:
        h = subscriber_hash(email)
        now = _now()
        lst = self.lists[list_id]
        return {
            "id": h,
            "email_address": email,
            "unique_email_id": uuid.uuid4().hex[:10],
            "contact_id": uuid.uuid4().hex,
            "full_name": "",
            "web_id": int(h[:7], 16),
            "email_type": "html",
            "status": status,
            "unsubscribe_reason": "",
            "consents_to_one_to_one_messaging": True,
            "merge_fields": {tag: "" for tag in self.merge_tags(list_id)},
            "interests": {i: False for i in lst["interests"]},
            "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
            "ip_signup": "",
            "timestamp_signup": "",
            "ip_opt": "",
            "timestamp_opt": now if status == "subscribed" else "",
            "member_rating": 2,
            "last_changed": now,
            "language": "",
            "vip": False,
            "email_client": "",
            "location": {"latitude": 0, "longitude": 0, "gmtoff": 0, "dstoff": 0, "country_code": "", "timezone": ""},
            "marketing_permissions": [{**p, "enabled": False} for p in lst["marketing_permissions"]],
            "source": "API - Generic",
            "tags_count": 0,
            "tags": [],
            "list_id": list_id,
        }

    def _check_merge_fields(self, lst: dict[str, Any], values: dict[str, Any] | None, *, creating: bool,
                            skip_required: bool) -> None:
        """Unknown tags and values of the wrong type are refused (OPEN QUESTION: the reference does not say
        unknown tags are refused rather than ignored; the stricter reading is taken). A required field must
        have a value when a member is created, unless ``skip_merge_validation`` is true."""
        fields = {f["tag"]: f for f in lst["merge_fields"]}
        values = values or {}
        errors = []
        for tag, value in values.items():
            field = fields.get(tag)
            if field is None:
                errors.append({"field": tag, "message": f"Merge field {tag} does not exist on this audience."})
                continue
            message = _merge_value_error(field, value)
            if message:
                errors.append({"field": tag, "message": message})
        if creating and not skip_required:
            errors += [{"field": tag, "message": "Please enter a value."} for tag, f in fields.items()
                       if f["required"] and values.get(tag) in (None, "") and not f["default_value"]]
        if errors:
            raise _Problem(400, "Invalid Resource", "Your merge fields were invalid.", errors=errors)

    def _check_permissions(self, lst: dict[str, Any], permissions: list[dict[str, Any]] | None) -> None:
        """Only the audience's own marketing permission ids are taken. OPEN QUESTION: the reference does not
        say what an unknown id answers; refused as Invalid Resource."""
        known = {p["marketing_permission_id"] for p in lst["marketing_permissions"]}
        unknown = [p["marketing_permission_id"] for p in permissions or [] if p["marketing_permission_id"] not in known]
        if unknown:
            raise _invalid([{"field": "marketing_permissions",
                             "message": f"Not a marketing permission of this audience: {pid}"} for pid in unknown])

    def _check_interests(self, lst: dict[str, Any], interests: dict[str, bool] | None) -> None:
        unknown = [i for i in interests or {} if i not in lst["interests"]]
        if unknown:
            raise _invalid([{"field": "interests", "message": f"Not an interest of this audience: {i}"}
                            for i in unknown])

    def _write_member(self, list_id: str, h: str, body: dict[str, Any], *, mode: str,
                      skip_merge_validation: bool = False) -> tuple[dict[str, Any], bool]:
        """The rules shared by PUT, POST, PATCH and each batch member. Returns (member, created)."""
        lst = self._list(list_id)
        schema, required = _MEMBER_SCHEMAS[mode]
        errors = _validate(body, schema, required)
        if errors:
            raise _invalid(errors)
        record = self.members[list_id].get(h)
        existing = record if record is not None and record["status"] != "archived" else None
        new_email: str | None = None
        if mode == "patch":
            if existing is None:
                raise _not_found()
            email = existing["email_address"]
            if "email_address" in body and subscriber_hash(body["email_address"]) != h:
                new_email = body["email_address"]
        else:
            email = body["email_address"]
        for address in (email, new_email):
            if address is not None and not _EMAIL_RE.match(address):
                raise _invalid_detail(f"{address} looks fake or invalid, please enter a real email address.")
        if mode == "put" and subscriber_hash(email) != h:
            # OPEN QUESTION: the answer's wording is not documented; the hash in the path must be the address's.
            raise _invalid([{"field": "email_address",
                             "message": "The MD5 of the lower-cased address is not the subscriber hash in the path."}])
        if h in self.forgotten[list_id]:
            # {DOCS}/api/list-members/delete-list-member/: a permanently deleted address cannot be re-imported,
            # whatever the status asked for (pending included).
            raise _forgotten(email)
        if mode == "post" and existing is not None:
            raise _member_exists(email)
        current = existing["status"] if existing else None
        if existing is None:
            target = body["status_if_new"] if mode == "put" else body["status"]
        else:
            target = body.get("status", current)
        if target == "subscribed" and current != "subscribed" and (
                current in COMPLIANCE_STATUSES or h in self.compliance[list_id]):
            raise _in_compliance(email)
        if target in SIGNUP_STATUSES and target != current and self._signup_refusals.get(h):
            self._signup_refusals[h] -= 1
            raise _invalid_detail(f"{email} has signed up to a lot of lists very recently; "
                                  "we're not allowing more signups for now")
        self._check_merge_fields(lst, body.get("merge_fields"), creating=existing is None,
                                 skip_required=skip_merge_validation)
        self._check_permissions(lst, body.get("marketing_permissions"))
        self._check_interests(lst, body.get("interests"))
        if new_email is not None:
            new_hash = subscriber_hash(new_email)
            if new_hash in self.forgotten[list_id]:
                raise _forgotten(new_email)
            other = self.members[list_id].get(new_hash)
            if other is not None and other["status"] != "archived":
                raise _member_exists(new_email)

        created = existing is None
        member = self._blank_member(list_id, email, target) if created else existing
        assert member is not None
        before = copy.deepcopy(member)
        if target != member["status"]:
            member["status"] = target
        if target == "subscribed" and (created or current != "subscribed") and "timestamp_opt" not in body:
            member["timestamp_opt"] = _now()
        if target in COMPLIANCE_STATUSES:
            self.compliance[list_id].add(h)
        member["merge_fields"].update(body.get("merge_fields") or {})
        for key in ("ip_signup", "ip_opt", "language", "email_type", "vip"):
            if key in body:
                member[key] = body[key]
        for key in ("timestamp_signup", "timestamp_opt"):
            if key in body:
                member[key] = _utc(body[key])
        if "location" in body:
            member["location"].update(body["location"])
        if "interests" in body:
            member["interests"].update(body["interests"])
        wanted = {p["marketing_permission_id"]: p["enabled"] for p in body.get("marketing_permissions") or []}
        for permission in member["marketing_permissions"]:
            if permission["marketing_permission_id"] in wanted:
                permission["enabled"] = wanted[permission["marketing_permission_id"]]
        if "tags" in body:
            member["tags"] = [{"id": n + 1, "name": t} for n, t in enumerate(body["tags"])]
            member["tags_count"] = len(member["tags"])
        fname, lname = member["merge_fields"].get("FNAME", ""), member["merge_fields"].get("LNAME", "")
        member["full_name"] = f"{fname} {lname}".strip()
        if new_email is not None:
            old = member["email_address"]
            del self.members[list_id][h]
            h = subscriber_hash(new_email)
            member["email_address"], member["id"] = new_email, h
        if member != before:
            member["last_changed"] = _now()
        self.members[list_id][h] = member

        # Deliveries for webhooks that take API-made changes ({DOCS}/api/list-webhooks/add-webhook/, sources.api).
        status_changed = created or before["status"] != member["status"]
        if status_changed and member["status"] == "subscribed":
            self._emit(list_id, "subscribe", self._hook_data(list_id, member, with_signup=True), "api")
        elif status_changed and member["status"] == "unsubscribed":
            data = {**self._hook_data(list_id, member), "action": "unsub", "reason": "manual"}
            self._emit(list_id, "unsubscribe", data, "api")
        elif status_changed and member["status"] == "cleaned":
            self._emit(list_id, "cleaned", {"list_id": list_id, "reason": "hard", "email": email}, "api")
        elif not created and before["merge_fields"] != member["merge_fields"]:
            self._emit(list_id, "profile", self._hook_data(list_id, member), "api")
        if new_email is not None:
            self._emit(list_id, "upemail", {"list_id": list_id, "new_id": member["unique_email_id"],
                                            "new_email": new_email, "old_email": old}, "api")
        return member, created

    def _member_hash(self, list_id: str, raw: str) -> str:
        """The member named in the path: its hash, or (as the reference allows for GET, PUT, PATCH and DELETE)
        its address or contact_id. An unknown value is returned as is (and matches nobody)."""
        if "@" in raw:
            return subscriber_hash(raw)
        if _HASH_RE.match(raw):
            return raw
        for h, member in self.members[list_id].items():
            if member["contact_id"] == raw:
                return h
        return raw

    @staticmethod
    def _object(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _invalid([{"field": "", "message": f"Schema describes object, {_json_type(body)} found instead"}])
        return body

    # -- endpoints -----------------------------------------------------------------------------

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        """Route one authenticated request; returns (status, json body or None, extra headers)."""
        if not path.startswith("/3.0/"):
            raise _not_found("Invalid path")
        parts = [unquote(p) for p in path[len("/3.0/"):].split("/")]
        for pattern, methods in _ROUTES:
            if len(pattern) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{") and got:
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if method not in methods:
                    allow = ", ".join(sorted(methods))
                    raise _Problem(405, "Method Not Allowed",
                                   "The requested method and resource are not compatible. "
                                   "See the Allow header for this resource's available methods.",
                                   headers={"Allow": allow})
                name = methods[method]
                if name is None:
                    raise _Problem(501, "Not Implemented", f"{method} {path} exists in Mailchimp's API but not in "
                                   "this fake.")
                handler = getattr(self, f"_api_{name}")
                if name in _UNLOCKED:
                    return handler(params, query, body)
                with self._lock:
                    return handler(params, query, body)
        raise _not_found()

    # {DOCS}/api/ping/ping/
    def _api_ping(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, {"health_status": "Everything's Chimpy!"}, {}

    # {DOCS}/api/lists/get-lists-info/
    def _api_get_lists(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        lists = [self._list_out(lst) for lst in self.lists.values()]
        return 200, _partial({"lists": _page(lists, q), "total_items": len(lists), "_links": []}, q), {}

    # {DOCS}/api/lists/get-list-info/
    def _api_get_list(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, _partial(self._list_out(self._list(p["list_id"])), q), {}

    def _list_out(self, lst: dict[str, Any]) -> dict[str, Any]:
        members = self.members[lst["id"]].values()
        statuses = [m["status"] for m in members]
        out = _public(lst)
        del out["merge_fields"], out["interests"]
        out["marketing_permissions"] = bool(lst["marketing_permissions"])
        out["stats"] = {"member_count": statuses.count("subscribed"),
                        "unsubscribe_count": statuses.count("unsubscribed"),
                        "cleaned_count": statuses.count("cleaned"), "merge_field_count": len(lst["merge_fields"])}
        return out

    # {DOCS}/api/lists/batch-subscribe-or-unsubscribe/
    def _api_batch_members(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        list_id = p["list_id"]
        self._list(list_id)
        body = self._object(body)
        errors = _validate(body, _BATCH_SCHEMA, ("members",))
        if errors:
            raise _invalid(errors)
        members = body["members"]
        if len(members) > BATCH_LIMIT:
            raise _invalid([{"field": "members", "message": f"At most {BATCH_LIMIT} members may be sent in one call."}])
        skip_merge = _flag(q, "skip_merge_validation")
        skip_duplicates = _flag(q, "skip_duplicate_check")
        update_existing = body.get("update_existing", False)
        if self.batch_schema_errors == "request":
            for item in members:
                if isinstance(item, dict):
                    unknown = [k for k in item if k not in _BATCH_MEMBER_SCHEMA]
                    if unknown:
                        raise _invalid([{"field": f"members.{k}", "message": f"{k} is not a field of a batch member."}
                                        for k in unknown])
        new, updated, failed = [], [], []
        seen: set[str] = set()
        for item in members:
            email = item.get("email_address", "") if isinstance(item, dict) else ""
            email = email if isinstance(email, str) else ""
            try:
                item = self._object(item)
                errors = _validate(item, _BATCH_MEMBER_SCHEMA, _MEMBER_SCHEMAS["batch"][1])
                if errors:
                    raise _invalid(errors)
                h = subscriber_hash(email)
                if h in seen:
                    if skip_duplicates:
                        continue  # the first appearance is the one saved
                    # OPEN QUESTION: the reference only says what skip_duplicate_check=true does; without it
                    # a repeated address is refused here.
                    raise _invalid_detail(f"{email} appears more than once in this batch.")
                seen.add(h)
                record = self.members[list_id].get(h)
                if record is not None and record["status"] != "archived" and not update_existing:
                    failed.append(_batch_error(email, f"{email} is already a list member. Use PUT to insert or "
                                               "update list members.", "ERROR_CONTACT_EXISTS"))
                    continue
                member, created = self._write_member(list_id, h, item, mode="batch",
                                                     skip_merge_validation=skip_merge)
                (new if created else updated).append(_public(member))
            except _Problem as problem:
                # One member's refusal is that member's entry in errors; the others go on.
                first = (problem.extra.get("errors") or [{}])[0]
                failed.append(_batch_error(email, problem.detail, "ERROR_GENERIC", first.get("field", ""),
                                           first.get("message", "")))
        answer = {"new_members": new, "updated_members": updated, "errors": failed, "total_created": len(new),
                  "total_updated": len(updated), "error_count": len(failed), "_links": []}
        return 200, _partial(answer, q), {}

    # {DOCS}/api/list-members/list-members-info/
    def _api_list_members(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        list_id = p["list_id"]
        self._list(list_id)
        status = q.get("status")
        if status is not None and status not in (*MEMBER_STATUSES, "archived"):
            raise _invalid([{"field": "status", "message": f"Value must be one of: {', '.join(MEMBER_STATUSES)}, "
                             "archived"}])
        members = [_public(m) for m in self.members[list_id].values()
                   if (m["status"] == status if status else m["status"] != "archived")]
        answer = {"members": _page(members, q), "list_id": list_id, "total_items": len(members), "_links": []}
        return 200, _partial(answer, q), {}

    # {DOCS}/api/list-members/add-member-to-list/
    def _api_add_member(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        body = self._object(body)
        email = body.get("email_address")
        h = subscriber_hash(email) if isinstance(email, str) else ""
        member, _ = self._write_member(p["list_id"], h, body, mode="post",
                                       skip_merge_validation=_flag(q, "skip_merge_validation"))
        return 200, _public(member), {}

    # {DOCS}/api/list-members/get-member-info/
    def _api_get_member(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        member = self.members[p["list_id"]].get(self._member_hash(p["list_id"], p["subscriber_hash"]))
        if member is None:
            raise _not_found()
        return 200, _partial(_public(member), q), {}

    # {DOCS}/api/list-members/add-or-update-list-member/
    def _api_set_member(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        body = self._object(body)
        h = self._member_hash(p["list_id"], p["subscriber_hash"])
        member, _ = self._write_member(p["list_id"], h, body, mode="put",
                                       skip_merge_validation=_flag(q, "skip_merge_validation"))
        return 200, _public(member), {}

    # {DOCS}/api/list-members/update-list-member/
    def _api_update_member(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        body = self._object(body)
        h = self._member_hash(p["list_id"], p["subscriber_hash"])
        member, _ = self._write_member(p["list_id"], h, body, mode="patch",
                                       skip_merge_validation=_flag(q, "skip_merge_validation"))
        return 200, _public(member), {}

    # {DOCS}/api/list-members/archive-list-member/
    def _api_archive_member(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        member = self.members[p["list_id"]].get(self._member_hash(p["list_id"], p["subscriber_hash"]))
        if member is None or member["status"] == "archived":
            raise _not_found()
        member["status"] = "archived"
        member["last_changed"] = _now()
        return 204, None, {}

    # {DOCS}/api/list-members/delete-list-member/ (POST .../actions/delete-permanent): 204; the address can
    # never be re-imported. Only the hash is documented for this path (no address or contact_id).
    def _api_delete_member_permanent(self, p: dict[str, str], q: dict[str, str],
                                     body: Any) -> tuple[int, Any, dict[str, str]]:
        list_id, h = p["list_id"], p["subscriber_hash"]
        self._list(list_id)
        member = self.members[list_id].pop(h, None)
        if member is None:
            raise _not_found()
        self.forgotten[list_id].add(h)
        self.compliance[list_id].discard(h)
        # OPEN QUESTION: the unsubscribe webhook's action "delete" is documented for deleted contacts; that an
        # API deletion fires it (to webhooks with sources.api) is assumed.
        data = {**self._hook_data(list_id, member), "action": "delete", "reason": "manual"}
        self._emit(list_id, "unsubscribe", data, "api")
        return 204, None, {}

    # {DOCS}/api/list-merges/list-merge-fields/: count defaults to 10 (max 1000), offset pages.
    def _api_list_merge_fields(self, p: dict[str, str], q: dict[str, str],
                               body: Any) -> tuple[int, Any, dict[str, str]]:
        lst = self._list(p["list_id"])
        fields = sorted(lst["merge_fields"], key=lambda f: (f["display_order"], f["merge_id"]))
        if "type" in q:
            fields = [f for f in fields if f["type"] == q["type"]]
        if "required" in q:
            fields = [f for f in fields if f["required"] == _flag(q, "required")]
        answer = {"merge_fields": [_public(f) for f in _page(fields, q)], "list_id": lst["id"],
                  "total_items": len(fields), "_links": []}
        return 200, _partial(answer, q), {}

    # {DOCS}/api/list-merges/add-merge-field/: a tag that exists answers 400.
    def _api_add_merge_field(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, _public(self._create_merge_field(p["list_id"], self._object(body))), {}

    # {DOCS}/api/list-merges/get-merge-field/
    def _api_get_merge_field(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, _partial(_public(self._merge_field(p["list_id"], p["merge_id"])), q), {}

    # {DOCS}/api/list-merges/update-merge-field/
    def _api_update_merge_field(self, p: dict[str, str], q: dict[str, str],
                                body: Any) -> tuple[int, Any, dict[str, str]]:
        field = self._merge_field(p["list_id"], p["merge_id"])
        body = self._object(body)
        errors = _validate(body, _MERGE_FIELD_PATCH_SCHEMA, ())
        if errors:
            raise _invalid(errors)
        tag = body.get("tag", field["tag"])
        if tag != field["tag"]:
            if not _TAG_RE.match(tag):
                raise _invalid([{"field": "tag", "message": "A merge tag is 1 to 10 upper-case letters, digits or _."}])
            if tag in ("EMAIL", *self.merge_tags(p["list_id"])):
                raise _invalid_detail(f'A Merge Field with the tag "{tag}" already exists for this list.')
            for member in self.members[p["list_id"]].values():
                member["merge_fields"][tag] = member["merge_fields"].pop(field["tag"], "")
        field.update(body)
        return 200, _public(field), {}

    # {DOCS}/api/list-merges/delete-merge-field/
    def _api_delete_merge_field(self, p: dict[str, str], q: dict[str, str],
                                body: Any) -> tuple[int, Any, dict[str, str]]:
        self.remove_merge_field(p["list_id"], self._merge_field(p["list_id"], p["merge_id"])["tag"])
        return 204, None, {}

    # {DOCS}/api/list-webhooks/list-webhooks/
    def _api_list_webhooks(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._list(p["list_id"])
        hooks = [_public(h) for h in self.webhooks[p["list_id"]]]
        return 200, {"webhooks": hooks, "list_id": p["list_id"], "total_items": len(hooks), "_links": []}, {}

    # {DOCS}/api/list-webhooks/add-webhook/ and {DOCS}/guides/sync-audience-data-webhooks/: the validator
    # sends a GET to the URL, which must answer 200 (the fake does it before storing the webhook).
    def _api_add_webhook(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self._list(p["list_id"])
            body = self._object(body)
            # OPEN QUESTION: url is not marked required in the schema; a webhook without one is refused.
            errors = _validate(body, _WEBHOOK_SCHEMA, ("url",))
            if errors:
                raise _invalid(errors)
            if any(h["url"] == body["url"] for h in self.webhooks[p["list_id"]]):
                # OPEN QUESTION: what a second webhook with the same URL answers; refused here.
                raise _invalid_detail("This audience already has a webhook with that URL.")
        if self.validate_webhook_urls:
            try:
                check = requests.get(body["url"], timeout=self.webhook_timeout,
                                     headers={"User-Agent": "MailChimp.com WebHook Validator"})
                ok = check.status_code == 200
            except requests.RequestException:
                ok = False
            if not ok:
                raise _invalid_detail("The webhook URL did not answer the validation GET with 200 OK.")
        with self._lock:
            # OPEN QUESTION: events and sources left out of the body are taken as off (not on).
            hook = {
                "id": uuid.uuid4().hex[:10],
                "url": body["url"],
                "events": {e: body.get("events", {}).get(e, False) for e in WEBHOOK_EVENTS},
                "sources": {s: body.get("sources", {}).get(s, False) for s in WEBHOOK_SOURCES},
                "list_id": p["list_id"],
            }
            self.webhooks[p["list_id"]].append(hook)
            return 200, _public(hook), {}

    def _webhook(self, list_id: str, webhook_id: str) -> dict[str, Any]:
        self._list(list_id)
        for hook in self.webhooks[list_id]:
            if hook["id"] == webhook_id:
                return hook
        raise _not_found()

    # {DOCS}/api/list-webhooks/get-webhook-info/
    def _api_get_webhook(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, _public(self._webhook(p["list_id"], p["webhook_id"])), {}

    # {DOCS}/api/list-webhooks/update-webhook/
    def _api_update_webhook(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        hook = self._webhook(p["list_id"], p["webhook_id"])
        body = self._object(body)
        errors = _validate(body, _WEBHOOK_SCHEMA, ())
        if errors:
            raise _invalid(errors)
        hook["url"] = body.get("url", hook["url"])
        hook["events"].update(body.get("events", {}))
        hook["sources"].update(body.get("sources", {}))
        return 200, _public(hook), {}

    # {DOCS}/api/list-webhooks/delete-webhook/
    def _api_delete_webhook(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self.webhooks[p["list_id"]].remove(self._webhook(p["list_id"], p["webhook_id"]))
        return 204, None, {}

    # -- authentication and limits -------------------------------------------------------------

    def _key_of(self, header: str | None) -> str | None:
        """The API key in a Basic Authorization header (any user name, the key as password:
        {DOCS}/docs/fundamentals/, "Authentication"), or None."""
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _authenticate(self, header: str | None) -> None:
        if not header:
            raise _Problem(401, "API Key Missing", "Your request did not include an API key.")
        if self._key_of(header) != self.api_key:
            raise _Problem(401, "API Key Invalid",
                           "Your API key may be invalid, or you've attempted to access the wrong datacenter.")


def _batch_error(email: str, error: str, code: str, field: str = "", field_message: str = "") -> dict[str, str]:
    return {"email_address": email, "error": error, "error_code": code, "field": field, "field_message": field_message}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMailchimp
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if length > 0 else b""
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_error = True
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        account = fake._key_of(self.headers.get("Authorization")) == fake.api_key
        with fake._lock:
            fake.requests.append((self.command, split.path, body))
            fake.request_headers.append(dict(self.headers.items()))
            fake.request_queries.append(query)
            fake.in_flight += 1
            fake.max_concurrent = max(fake.max_concurrent, fake.in_flight)
            # {DOCS}/docs/fundamentals/ ("Throttling"): 10 simultaneous connections per account; past that, 429.
            over_limit = account and fake._account_in_flight >= fake.max_connections
            if over_limit:
                fake.count_429 += 1
            elif account:
                fake._account_in_flight += 1
        try:
            if over_limit:
                if fake.bodiless_429:
                    self._send(429, None, {})
                else:
                    limit = fake.max_connections
                    problem = _Problem(429, "Too Many Requests",
                                       f"You have exceeded the limit of {limit} simultaneous connections.")
                    self._send_problem(problem)
            else:
                self._serve(fake, split.path, query, body, parse_error)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing to answer
        finally:
            with fake._lock:
                fake.in_flight -= 1
                if account and not over_limit:
                    fake._account_in_flight -= 1

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _serve(self, fake: FakeMailchimp, path: str, query: dict[str, str], body: Any, parse_error: bool) -> None:
        method = self.command
        if fake.latency:
            fake._closing.wait(fake.latency)
        if time.monotonic() < fake.outage_until:
            with fake._lock:
                fake.outage_answers += 1
                hang = fake.outage_hang if fake.outage_answers % 2 else 0.0
            if hang:
                fake._closing.wait(hang)
            self._send_problem(_Problem(503, "Service Unavailable", "The service is temporarily unavailable."))
            return
        failure = fake._take_failure(method, path)
        if failure is not None:
            status, fbody, headers = failure
            if fbody is None:
                self._send(status, None, headers)
            else:
                self._send(status, fbody, {"Content-Type": "application/problem+json; charset=utf-8", **headers})
            return
        try:
            fake._authenticate(self.headers.get("Authorization"))
            if parse_error:
                raise _Problem(400, "JSON Parse Exception", "We encountered an unspecified JSON parsing error.")
            status, data, headers = fake.dispatch(method, path, query, body)
        except _Problem as problem:
            self._send_problem(problem)
            return
        except Exception as exc:  # a bug in the fake: answer 500 rather than kill the thread
            self._send_problem(_Problem(500, "Internal Server Error", f"{type(exc).__name__}: {exc}"))
            return
        content = {"Content-Type": "application/json; charset=utf-8"} if data is not None else {}
        self._send(status, data, {**content, **headers})

    def _send_problem(self, problem: _Problem) -> None:
        body = problem.body()
        self._send(problem.status, body, {"Content-Type": "application/problem+json; charset=utf-8",
                                          "X-Request-Id": body["instance"], **problem.headers})

    def _send(self, status: int, data: Any, headers: dict[str, str]) -> None:
        with self.fake._lock:
            self.fake.answers.append((self.command, urlsplit(self.path).path, status, data))
        payload = b"" if data is None else json.dumps(data).encode("utf-8")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)
