"""A fake Mailchimp Marketing API v3.0, served over real HTTP on 127.0.0.1.

Use it as ``with FakeMailchimp() as fake: ...`` and point the real client at it::

    client = MailchimpMarketing.Client()
    client.set_config({"api_key": fake.api_key, "server": "us1", "timeout": 5})
    client.api_client.host = fake.url

It answers the way Mailchimp does for the calls the service makes: Basic auth with
the API key as password, members keyed by the MD5 of the lower-cased address,
compliance state for unsubscribed/cleaned members, permanently deleted
("forgotten") addresses, merge fields, batch subscribe, and errors as
``application/problem+json``. Faults can be queued with :meth:`FakeMailchimp.enqueue_failure`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socketserver
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
MEMBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
COMPLIANCE_STATUSES = ("unsubscribed", "cleaned")
MERGE_FIELD_TYPES = (
    "text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown", "birthday", "zip",
)
DEFAULT_MERGE_FIELDS = (
    {"tag": "FNAME", "name": "First Name", "type": "text"},
    {"tag": "LNAME", "name": "Last Name", "type": "text"},
)
BATCH_LIMIT = 500
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: MD5 of the lower-cased address."""
    return hashlib.md5(email.strip().lower().encode("utf-8"), usedforsecurity=False).hexdigest()


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class _Problem(Exception):
    """An error answered as application/problem+json."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": ERROR_TYPE,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": str(uuid.uuid4()),
            **self.extra,
        }


def _not_found(detail: str = "The requested resource could not be found.") -> _Problem:
    return _Problem(404, "Resource Not Found", detail)


def _invalid(detail: str, errors: list[dict[str, str]] | None = None) -> _Problem:
    if errors is None:
        return _Problem(400, "Invalid Resource", detail)
    return _Problem(400, "Invalid Resource", detail, errors=errors)


_VALIDATION_DETAIL = (
    "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins the handler threads
    block_on_close = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class FakeMailchimp:
    """A Mailchimp Marketing API v3.0 double. See the module docstring."""

    def __init__(self, api_key: str = "testkey-us1", latency: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.lists: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        self.forgotten: dict[str, set[str]] = {}  # permanently deleted hashes, per list
        self.compliance: dict[str, set[str]] = {}  # hashes that were unsubscribed/cleaned, per list
        self.requests: list[tuple[str, str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.max_concurrent = 0
        self.in_flight = 0
        # An outage: until this time.monotonic() every call answers 503, every other one
        # only after ``outage_hang`` seconds (longer than the client waits: a timeout).
        self.outage_until = 0.0
        self.outage_hang = 0.0
        self.outage_answers = 0
        self._failures: deque[tuple[int, dict[str, Any] | None, dict[str, str], str | None, str | None]] = deque()
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeMailchimp:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._closing.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/3.0"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-mailchimp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # cut injected latency short
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FakeMailchimp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup and inspection helpers ---------------------------------------

    def add_list(self, list_id: str, merge_fields: list[dict[str, Any] | str] | None = None,
                 name: str | None = None) -> dict[str, Any]:
        """Create an audience. ``merge_fields`` are dicts {tag, name, type} or bare tags (type text);
        None gives Mailchimp's FNAME and LNAME."""
        with self._lock:
            lst = {"id": list_id, "name": name or f"List {list_id}", "merge_fields": [], "_next_merge_id": 1}
            self.lists[list_id] = lst
            self.members.setdefault(list_id, {})
            self.forgotten.setdefault(list_id, set())
            self.compliance.setdefault(list_id, set())
            for field in DEFAULT_MERGE_FIELDS if merge_fields is None else merge_fields:
                spec = {"tag": field, "name": field, "type": "text"} if isinstance(field, str) else dict(field)
                self._create_merge_field(list_id, spec)
            return lst

    def remove_merge_field(self, list_id: str, tag: str) -> None:
        """Delete a merge field, as a marketer can in Mailchimp's audience settings."""
        with self._lock:
            lst = self.lists[list_id]
            lst["merge_fields"] = [f for f in lst["merge_fields"] if f["tag"] != tag]

    def merge_tags(self, list_id: str) -> list[str]:
        return [f["tag"] for f in self.lists[list_id]["merge_fields"]]

    def member(self, list_id: str, email: str) -> dict[str, Any] | None:
        return self.members.get(list_id, {}).get(subscriber_hash(email))

    def add_member(self, list_id: str, email: str, status: str = "subscribed", **fields: Any) -> dict[str, Any]:
        """Seed a member directly, bypassing the API's rules."""
        with self._lock:
            h = subscriber_hash(email)
            m = self._blank_member(list_id, email, status)
            m["merge_fields"].update(fields.pop("merge_fields", {}) or {})
            m.update(fields)
            self.members[list_id][h] = m
            if status in COMPLIANCE_STATUSES:
                self.compliance[list_id].add(h)
            return m

    def forget(self, list_id: str, email: str) -> None:
        """Mark an address as permanently deleted, as if delete-permanent had been called."""
        with self._lock:
            h = subscriber_hash(email)
            self.members[list_id].pop(h, None)
            self.forgotten[list_id].add(h)

    def confirm(self, list_id: str, email: str) -> dict[str, Any]:
        """The person confirmed a (double opt-in) pending subscription: subscribed, compliance cleared."""
        with self._lock:
            h = subscriber_hash(email)
            m = self.members[list_id][h]
            m["status"] = "subscribed"
            m["timestamp_opt"] = _now()
            m["last_changed"] = m["timestamp_opt"]
            self.forgotten[list_id].discard(h)
            self.compliance[list_id].discard(h)
            return m

    def enqueue_failure(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                        *, method: str | None = None, path_contains: str | None = None) -> None:
        """Queue one response returned before normal handling (FIFO). ``body=None`` sends the status
        with no body and no Content-Type (as Mailchimp's edge does for some 429/403). A dict body is
        sent as application/problem+json unless ``headers`` sets Content-Type. ``method`` and
        ``path_contains`` restrict which request consumes it."""
        with self._lock:
            self._failures.append((status, body, dict(headers or {}), method, path_contains))

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]

    # -- internals ----------------------------------------------------------

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
        name = spec.get("name")
        ftype = spec.get("type")
        errors = []
        if not isinstance(name, str) or not name:
            errors.append({"field": "name", "message": "This value should not be blank."})
        if ftype not in MERGE_FIELD_TYPES:
            errors.append({"field": "type", "message": f"Value must be one of: {', '.join(MERGE_FIELD_TYPES)}"})
        if errors:
            raise _invalid(_VALIDATION_DETAIL, errors)
        merge_id = lst["_next_merge_id"]
        tag = str(spec.get("tag") or f"MMERGE{merge_id}").upper()
        if len(tag) > 10 or not re.fullmatch(r"[A-Z0-9_]+", tag):
            raise _invalid(_VALIDATION_DETAIL, [{"field": "tag", "message": "Merge tags are at most 10 letters, "
                                                 "digits or underscores."}])
        if tag in self.merge_tags(list_id):
            raise _invalid(f'A Merge Field with the tag "{tag}" already exists for this list.')
        lst["_next_merge_id"] = merge_id + 1
        field = {
            "merge_id": merge_id,
            "tag": tag,
            "name": name,
            "type": ftype,
            "required": bool(spec.get("required", False)),
            "default_value": spec.get("default_value", ""),
            "public": bool(spec.get("public", False)),
            "display_order": len(lst["merge_fields"]) + 2,
            "options": spec.get("options", {}),
            "help_text": spec.get("help_text", ""),
            "list_id": list_id,
        }
        lst["merge_fields"].append(field)
        return field

    def _blank_member(self, list_id: str, email: str, status: str) -> dict[str, Any]:
        h = subscriber_hash(email)
        now = _now()
        return {
            "id": h,
            "email_address": email,
            "unique_email_id": uuid.uuid4().hex[:10],
            "contact_id": uuid.uuid4().hex,
            "full_name": "",
            "web_id": int(h[:7], 16),
            "email_type": "html",
            "status": status,
            "consents_to_one_to_one_messaging": True,
            "merge_fields": {tag: "" for tag in self.merge_tags(list_id)},
            "interests": {},
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
            "marketing_permissions": [],
            "source": "API - Generic",
            "tags_count": 0,
            "tags": [],
            "list_id": list_id,
        }

    def _check_email(self, email: Any) -> str:
        if not isinstance(email, str) or not email:
            raise _invalid(_VALIDATION_DETAIL, [{"field": "email_address",
                                                 "message": "This value should not be blank."}])
        if not _EMAIL_RE.match(email):
            raise _invalid(f"{email} looks fake or invalid, please enter a real email address.")
        return email

    def _check_status(self, field: str, status: Any) -> None:
        if status not in MEMBER_STATUSES:
            raise _invalid(_VALIDATION_DETAIL, [{
                "field": field,
                "message": f"Value must be one of: {', '.join(MEMBER_STATUSES)} (not {status})",
            }])

    def _check_merge_fields(self, list_id: str, merge_fields: Any) -> dict[str, Any]:
        if merge_fields is None:
            return {}
        if not isinstance(merge_fields, dict):
            raise _invalid(_VALIDATION_DETAIL, [{"field": "merge_fields", "message": "Schema describes object, "
                                                 f"{type(merge_fields).__name__} found instead"}])
        known = self.merge_tags(list_id)
        unknown = [tag for tag in merge_fields if tag not in known]
        if unknown:
            raise _invalid("Your merge fields were invalid.", [
                {"field": tag, "message": f"Merge field {tag} does not exist on this list."} for tag in unknown
            ])
        return merge_fields

    def _check_subscribable(self, list_id: str, h: str, email: str, existing: dict[str, Any] | None,
                            status: str) -> None:
        """Mailchimp's rules: a forgotten address or a member in compliance state can't be
        (re)subscribed through the API; pending (double opt-in) is allowed."""
        if status != "subscribed":
            return
        if h in self.forgotten[list_id]:
            raise _Problem(400, "Forgotten Email Not Subscribed",
                           f"{email} was permanently deleted and cannot be re-imported. "
                           "The contact must re-subscribe to get back on the list.")
        if existing is not None and (existing["status"] in COMPLIANCE_STATUSES or h in self.compliance[list_id]):
            raise _Problem(400, "Member In Compliance State",
                           f"{email} is already a list member in compliance state due to unsubscribe, bounce, "
                           "or compliance review and cannot be subscribed.")

    def _apply(self, list_id: str, member: dict[str, Any], body: dict[str, Any], status: str | None) -> None:
        changed = False
        if status is not None and status != member["status"]:
            member["status"] = status
            changed = True
            if status == "subscribed" and not body.get("timestamp_opt"):
                member["timestamp_opt"] = _now()
            if status in COMPLIANCE_STATUSES:
                self.compliance[list_id].add(member["id"])
        if body.get("merge_fields"):
            member["merge_fields"].update(body["merge_fields"])
            changed = True
        for key in ("ip_signup", "ip_opt", "language", "email_type", "vip", "marketing_permissions"):
            if key in body:
                member[key] = body[key]
                changed = True
        for key in ("timestamp_signup", "timestamp_opt"):
            if body.get(key):
                member[key] = _timestamp(key, body[key])
                changed = True
        if isinstance(body.get("interests"), dict):
            member["interests"].update(body["interests"])
        fname, lname = member["merge_fields"].get("FNAME", ""), member["merge_fields"].get("LNAME", "")
        member["full_name"] = f"{fname} {lname}".strip()
        if changed:
            member["last_changed"] = _now()

    def _resolve_hash(self, raw: str) -> str:
        # The endpoint also accepts the address itself in place of the hash.
        return subscriber_hash(raw) if "@" in raw else raw.lower()

    # -- endpoints ------------------------------------------------------------

    def _upsert(self, list_id: str, raw_hash: str, body: dict[str, Any], *, create: bool) -> dict[str, Any]:
        self._list(list_id)
        h = self._resolve_hash(raw_hash)
        existing = self.members[list_id].get(h)
        if existing is None and not create:
            raise _not_found()
        email = body.get("email_address", existing["email_address"] if existing and not create else None)
        email = self._check_email(email)
        if subscriber_hash(email) != h:
            raise _invalid(_VALIDATION_DETAIL, [{"field": "email_address",
                                                 "message": "The email address does not match the subscriber hash."}])
        status = body.get("status")
        if status is not None:
            self._check_status("status", status)
        if existing is None:
            status_if_new = body.get("status_if_new", status)
            if status_if_new is None:
                raise _invalid(_VALIDATION_DETAIL, [{"field": "status_if_new",
                                                     "message": "This value should not be blank."}])
            self._check_status("status_if_new", status_if_new)
            effective = status_if_new
        else:
            effective = status
        self._check_merge_fields(list_id, body.get("merge_fields"))
        if effective is not None:
            self._check_subscribable(list_id, h, email, existing, effective)
        for key in ("timestamp_signup", "timestamp_opt"):
            if body.get(key):
                _timestamp(key, body[key])
        if existing is None:
            member = self._blank_member(list_id, email, effective)
            self._apply(list_id, member, body, None)
            if effective in COMPLIANCE_STATUSES:
                self.compliance[list_id].add(h)
            self.members[list_id][h] = member
            return member
        self._apply(list_id, existing, body, effective)
        return existing

    def _batch(self, list_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._list(list_id)
        members = body.get("members")
        if not isinstance(members, list):
            raise _invalid(_VALIDATION_DETAIL, [{"field": "members", "message": "This value should not be blank."}])
        if len(members) > BATCH_LIMIT:
            raise _invalid(_VALIDATION_DETAIL, [{
                "field": "members",
                "message": f"Schema describes array, but more than {BATCH_LIMIT} items were found",
            }])
        update_existing = bool(body.get("update_existing", False))
        new, updated, errors = [], [], []
        for item in members:
            item = item if isinstance(item, dict) else {}
            email = item.get("email_address", "")
            try:
                self._check_email(email)
                h = subscriber_hash(email)
                existing = self.members[list_id].get(h)
                if existing is not None and not update_existing:
                    errors.append(_batch_error(email, f"{email} is already a list member. "
                                               "Use PUT to insert or update list members.", "ERROR_CONTACT_EXISTS"))
                    continue
                member = self._upsert(list_id, h, item, create=True)
                (updated if existing is not None else new).append(_public(member))
            except _Problem as problem:
                field = problem.extra.get("errors", [{}])[0] if problem.extra.get("errors") else {}
                errors.append(_batch_error(email, problem.detail, "ERROR_GENERIC",
                                           field.get("field", ""), field.get("message", "")))
        return {
            "new_members": new,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(new),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": [],
        }

    def dispatch(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Route one authenticated request; returns (status, json body or None for 204)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if not parts or parts[0] != "3.0":
            raise _not_found("Invalid path")
        parts = parts[1:]
        needs_body = method in ("POST", "PUT", "PATCH") and not (
            len(parts) == 6 and parts[4:] == ["actions", "delete-permanent"])
        if needs_body and not isinstance(body, dict):
            raise _Problem(400, "JSON Parse Exception", "We encountered an unspecified JSON parsing error.")
        with self._lock:
            if parts == ["ping"]:
                self._only(method, "GET")
                return 200, {"health_status": "Everything's Chimpy!"}
            if len(parts) == 2 and parts[0] == "lists":
                self._only(method, "POST")
                return 200, self._batch(parts[1], body)
            if len(parts) == 3 and parts[0] == "lists" and parts[2] == "merge-fields":
                self._only(method, "GET", "POST")
                lst = self._list(parts[1])
                if method == "GET":
                    fields = [_public(f) for f in lst["merge_fields"]]
                    return 200, {"merge_fields": fields, "list_id": parts[1], "total_items": len(fields)}
                return 200, _public(self._create_merge_field(parts[1], body))
            if len(parts) == 4 and parts[0] == "lists" and parts[2] == "members":
                self._only(method, "GET", "PUT", "PATCH", "DELETE")
                list_id, h = parts[1], self._resolve_hash(parts[3])
                self._list(list_id)
                if method == "GET":
                    member = self.members[list_id].get(h)
                    if member is None:
                        raise _not_found()
                    return 200, _public(member)
                if method == "DELETE":
                    member = self.members[list_id].get(h)
                    if member is None:
                        raise _not_found()
                    member["status"] = "archived"
                    member["last_changed"] = _now()
                    return 204, None
                return 200, _public(self._upsert(list_id, h, body, create=method == "PUT"))
            if len(parts) == 6 and parts[0] == "lists" and parts[2] == "members" and parts[4:] == [
                    "actions", "delete-permanent"]:
                self._only(method, "POST")
                list_id, h = parts[1], self._resolve_hash(parts[3])
                self._list(list_id)
                if self.members[list_id].pop(h, None) is None:
                    raise _not_found()
                self.forgotten[list_id].add(h)
                self.compliance[list_id].discard(h)
                return 204, None
        raise _not_found("Invalid path")

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _Problem(405, "Method Not Allowed", "The requested method and resource are not compatible. "
                           "See the Allow header for this resource's available methods.")


def _timestamp(field: str, value: Any) -> str:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        problem = _invalid(_VALIDATION_DETAIL, [{"field": field, "message": "Please enter a valid date and time."}])
        raise problem from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in record.items() if not k.startswith("_")}))


def _batch_error(email: str, error: str, code: str, field: str = "", field_message: str = "") -> dict[str, str]:
    return {"email_address": email, "error": error, "error_code": code, "field": field, "field_message": field_message}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMailchimp
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.fake
        with fake._lock:
            fake.in_flight += 1
            fake.max_concurrent = max(fake.max_concurrent, fake.in_flight)
        try:
            self._serve(fake)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing to answer
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _serve(self, fake: FakeMailchimp) -> None:
        method = self.command
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_error = True
        with fake._lock:
            fake.requests.append((method, path, body))
            fake.request_headers.append(dict(self.headers.items()))
        if fake.latency:
            fake._closing.wait(fake.latency)

        if time.monotonic() < fake.outage_until:
            with fake._lock:
                fake.outage_answers += 1
                hang = fake.outage_hang if fake.outage_answers % 2 else 0.0
            if hang:
                fake._closing.wait(hang)
            problem = _Problem(503, "Service Unavailable", "The service is temporarily unavailable.")
            self._send(503, problem.body(), {"Content-Type": "application/problem+json; charset=utf-8"})
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
            self._authenticate(fake)
            if parse_error:
                raise _Problem(400, "JSON Parse Exception", "We encountered an unspecified JSON parsing error.")
            status, data = fake.dispatch(method, path, body)
        except _Problem as problem:
            self._send(problem.status, problem.body(), {"Content-Type": "application/problem+json; charset=utf-8"})
            return
        except Exception as exc:  # a bug in the fake: answer 500 rather than kill the thread
            problem = _Problem(500, "Internal Server Error", f"{type(exc).__name__}: {exc}")
            self._send(500, problem.body(), {"Content-Type": "application/problem+json; charset=utf-8"})
            return
        self._send(status, data, {"Content-Type": "application/json; charset=utf-8"} if data is not None else {})

    def _authenticate(self, fake: FakeMailchimp) -> None:
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if not header:
            raise _Problem(401, "API Key Missing", "Your request did not include an API key.")
        key = None
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                key = None
        elif scheme.lower() == "apikey":
            key = value.strip()
        if key != fake.api_key:
            raise _Problem(401, "API Key Invalid",
                           "Your API key may be invalid, or you've attempted to access the wrong datacenter.")

    def _send(self, status: int, data: Any, headers: dict[str, str]) -> None:
        payload = b"" if data is None else json.dumps(data).encode("utf-8")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)
