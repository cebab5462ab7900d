"""Mailchimp through the official client, mailchimp-marketing 3.0.80.

Traits of that client this adapter handles (read from its source):
- ``set_config`` resets every key it is not given, ``timeout`` included (120 s
  by default), so the whole config is passed every time, with a timeout.
- The base URL is ``api_client.host``; the client replaces the substring
  ``server`` in it with the data-centre name.
- Errors raise ``ApiClientError`` whose ``.text`` is the body (a JSON string for
  problem+json) and whose ``status_code`` is None for network failures.
- An error answer with no body or no Content-Type (Mailchimp's bodiless 429 and
  403 under load) is *returned* as a ``requests.Response`` instead of raising.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import mailchimp_marketing
import requests
from mailchimp_marketing.api_client import ApiClientError

from .. import metrics
from ..notices import Notice
from . import (
    CONCURRENT_CALLS,
    Member,
    Operation,
    Outcome,
    ProviderNotConfigured,
    ProviderPermanent,
    ProviderRetry,
    account_limits,
    apply_each,
)

DEFAULT_TIMEOUT_SECONDS = 10
COMPLIANCE_TITLES = ("Member In Compliance State", "Forgotten Email Not Subscribed")
# Mailchimp answers "Invalid Resource" for some refusals that pass with time (its error
# glossary: "signed up to a lot of lists very recently"): retried with backoff, not given up.
TEMPORARY_REFUSALS = ("very recently",)
PERMANENT_TITLES = ("Invalid Resource", "Member Exists", "Forgotten Email Not Subscribed")
UNSUBSCRIBE_FIELD = "UNSUBURL"
MANAGE_FIELD = "MANAGEURL"
# Merge fields our links travel in, so every newsletter can carry them (*|UNSUBURL|*, *|MANAGEURL|*).
LINK_FIELDS = {UNSUBSCRIBE_FIELD: "Unsubscribe link", MANAGE_FIELD: "Your data and settings link"}
BATCH_SIZE = 500  # the batch-members endpoint takes at most 500 members
# Of the account's 10 simultaneous connections: one is left for a connection that has answered
# but is still closing at Mailchimp's end when the next call starts (seen as an 11th otherwise).
ACCOUNT_CONNECTIONS = CONCURRENT_CALLS - 1
MERGE_FIELDS_PAGE = 1000  # GET .../merge-fields answers 10 unless asked for more; 1000 is its maximum
FORGOTTEN = "Forgotten Email Not Subscribed"


def subscriber_hash(email: str) -> str:
    """Mailchimp's member key: MD5 of the lower-cased address (an identifier, not security)."""
    return hashlib.md5(email.lower().encode("utf-8"), usedforsecurity=False).hexdigest()


def _problem(exc: ApiClientError) -> dict[str, Any]:
    try:
        body = json.loads(exc.text) if isinstance(exc.text, str) else {}
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


# Mailchimp's error details often name the member's address ("x@y was permanently deleted").
# What is kept of them (in a job's last error, shown on the dashboard and kept after an
# erasure) is the title and one of these fixed phrases, never the provider's free text.
EXPLAINED = (
    ("merge field", "merge fields refused"),
    ("permanently deleted", "address permanently deleted"),
    ("compliance", "member in compliance state"),
    ("already a list member", "already a member"),
    ("fake or invalid", "address refused as invalid"),
)


def _explained(detail: str) -> str:
    """A fixed phrase for a detail Mailchimp wrote in free text, or nothing."""
    lowered = detail.lower()
    return next((phrase for words, phrase in EXPLAINED if words in lowered), "")


def _temporary(text: str) -> bool:
    return any(words in text.lower() for words in TEMPORARY_REFUSALS)


def _forgotten() -> ProviderPermanent:
    return ProviderPermanent(
        f"Mailchimp 400 {FORGOTTEN}: the address was permanently deleted from the audience; Mailchimp takes it"
        " back only through its own sign-up form, never through the API"
    )


def _fields_refused(outcome: Outcome) -> bool:
    """Mailchimp refused the member's merge fields: our link fields may have been removed from
    the audience since this process checked them."""
    return isinstance(outcome, ProviderPermanent) and "merge field" in str(outcome).lower()


class MailchimpProvider:
    # Audiences known to have the link fields, by (API host, list id). A refusal of the
    # merge fields drops the entry, so fields deleted in Mailchimp are made again.
    _fields_checked: ClassVar[set[tuple[str, str]]] = set()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        api_key: str,
        api_url: str | None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        limits_uri: str = "memory://",
    ) -> None:
        self.limits_uri = limits_uri
        # The account's name in the shared counters: its key, hashed.
        self.account = "mailchimp:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        self.client = mailchimp_marketing.Client()
        server = api_key.rsplit("-", 1)[-1] if "-" in api_key else "us1"
        self.client.set_config({"api_key": api_key, "server": server, "timeout": timeout})
        if api_url:
            self.client.api_client.host = api_url.rstrip("/")

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> MailchimpProvider:
        api_key = str(config.get("MAILCHIMP_API_KEY") or "")
        if not api_key:
            raise ProviderNotConfigured("set MAILCHIMP_API_KEY")
        timeout = config.get("PROVIDER_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)
        assert isinstance(timeout, int)
        limits_uri = str(config.get("RATELIMIT_STORAGE_URI") or "memory://")
        return cls(api_key, str(config.get("MAILCHIMP_API_URL") or "") or None, timeout, limits_uri)

    def _call(self, fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """Run one client call, on one of the account's 10 connections; turn every failure
        shape into our three outcomes."""
        operation = getattr(fn, "__name__", "call")
        try:
            with account_limits.connection_slot(self.limits_uri, self.account, ACCOUNT_CONNECTIONS):
                result = fn(*args, **kwargs)
        except ApiClientError as exc:
            metrics.provider_call("mailchimp", operation, exc.status_code)
            if exc.status_code is None:
                raise ProviderRetry(f"Mailchimp unreachable: {exc.text}") from None
            problem = _problem(exc)
            title = problem.get("title", "")
            if exc.status_code == 404 and missing_ok:
                return None
            if exc.status_code == 429 or exc.status_code >= 500 or exc.status_code == 408:
                raise ProviderRetry(f"Mailchimp {exc.status_code} {title}".strip()) from None
            if exc.status_code == 400 and title in COMPLIANCE_TITLES:
                raise
            if exc.status_code == 400 and _temporary(str(problem.get("detail", ""))):
                raise ProviderRetry(f"Mailchimp 400 {title}: a temporary refusal") from None
            if exc.status_code == 400 and title in PERMANENT_TITLES:
                explained = _explained(str(problem.get("detail", "")))
                reason = f"Mailchimp 400 {title}: {explained}" if explained else f"Mailchimp 400 {title}"
                raise ProviderPermanent(reason) from None
            raise ProviderRetry(f"Mailchimp {exc.status_code} {title}".strip()) from None
        status = result.status_code if isinstance(result, requests.Response) else 200
        metrics.provider_call("mailchimp", operation, status)
        if isinstance(result, requests.Response) and result.status_code >= 400:
            if result.status_code == 404 and missing_ok:
                return None
            retry_after = result.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and re.fullmatch(r"[0-9]{1,6}", retry_after) else None
            raise ProviderRetry(f"Mailchimp {result.status_code} with no body", wait)
        return result

    def _merge_tags(self, list_id: str) -> set[str]:
        """Every merge tag of the audience: the list answers 10 by default, so ask for pages of 1000."""
        tags: set[str] = set()
        offset = 0
        while True:
            page = self._call(self.client.lists.get_list_merge_fields, list_id, count=MERGE_FIELDS_PAGE, offset=offset)
            fields = page.get("merge_fields") if isinstance(page, dict) else None
            if not isinstance(fields, list):
                raise ProviderRetry("Mailchimp merge fields answered without a list of fields")
            tags.update(str(f.get("tag")) for f in fields if isinstance(f, dict))
            offset += len(fields)
            total = page.get("total_items")
            if not fields or not isinstance(total, int) or offset >= total:
                return tags

    def _ensure_link_fields(self, list_id: str) -> None:
        key = (self.client.api_client.host, list_id)
        if key in self._fields_checked:
            return
        with self._lock:
            tags = self._merge_tags(list_id)
            for tag, name in LINK_FIELDS.items():
                if tag in tags:
                    continue
                body = {"tag": tag, "name": name, "type": "url", "public": False}
                try:
                    self._call(self.client.lists.add_list_merge_field, list_id, body)
                except ProviderPermanent:
                    # A tag that exists answers 400: another worker (or a person in Mailchimp)
                    # made it since we looked. Look again; only a field still missing is a failure.
                    if tag not in self._merge_tags(list_id):
                        raise
            self._fields_checked.add(key)

    def _recheck_link_fields(self, list_id: str) -> None:
        self._fields_checked.discard((self.client.api_client.host, list_id))
        self._ensure_link_fields(list_id)

    @staticmethod
    def _member_body(notice: Notice, member: Member, *, permissions: bool = True) -> dict[str, Any]:
        merge = {UNSUBSCRIBE_FIELD: member.unsubscribe_url, MANAGE_FIELD: member.manage_url}
        if member.name:
            first, _, last = member.name.partition(" ")
            merge.update({"FNAME": first, "LNAME": last})
        body: dict[str, Any] = {
            "email_address": member.email,
            "status": "subscribed",
            "merge_fields": merge,
            "language": member.language,
        }
        for key in ("ip_signup", "timestamp_signup", "ip_opt", "timestamp_opt"):
            if getattr(member, key):
                body[key] = getattr(member, key)
        wanted = notice.provider.get("marketing_permissions")
        if wanted and permissions:
            body["marketing_permissions"] = [
                {"marketing_permission_id": pid.strip(), "enabled": True} for pid in str(wanted).split(",")
            ]
        return body

    def subscribe(self, notice: Notice, member: Member) -> str:
        list_id = notice.provider["list_id"]
        self._ensure_link_fields(list_id)
        body = {**self._member_body(notice, member), "status_if_new": "subscribed"}
        key = subscriber_hash(member.email)
        try:
            self._call(self.client.lists.set_list_member, list_id, key, body)
        except ApiClientError as refused:
            if _problem(refused).get("title") == FORGOTTEN:
                raise _forgotten() from None
            # Compliance state: Mailchimp will only take the person back through
            # its own confirmation mail, so ask for that.
            body["status"] = body["status_if_new"] = "pending"
            try:
                self._call(self.client.lists.set_list_member, list_id, key, body)
            except ApiClientError as again:
                # Refused even as pending: the address was permanently deleted at Mailchimp.
                title = _problem(again).get("title", "")
                if title == FORGOTTEN:
                    raise _forgotten() from None
                raise ProviderPermanent(f"Mailchimp 400 {title}: refused even as pending") from None
            return "pending"
        return "subscribed"

    def _batch(self, notice: Notice, chunk: list[tuple[int, Operation]]) -> dict[int, Outcome]:
        """One call to the batch-members endpoint; per-member errors mapped back."""
        members = [
            self._member_body(notice, op.member, permissions=False)  # not in the batch member schema
            if op.action == "subscribe" and op.member is not None
            else {"email_address": op.email, "status": "unsubscribed"}
            for _, op in chunk
        ]
        try:
            answer = self._call(
                self.client.lists.batch_list_members,
                notice.provider["list_id"],
                {"members": members, "update_existing": True},
            )
        except (ProviderRetry, ProviderPermanent) as exc:
            return {i: exc for i, _ in chunk}
        errors = {
            str(e.get("email_address", "")).lower(): (str(e.get("error", "")), str(e.get("error_code") or ""))
            for e in (answer or {}).get("errors", [])
        }
        outcomes: dict[int, Outcome] = {}
        for i, op in chunk:
            found = errors.get(op.email.lower())
            if found is None:
                outcomes[i] = None
                continue
            error, code = found
            if _temporary(error):
                outcomes[i] = ProviderRetry("Mailchimp batch: a temporary refusal")
            elif "compliance" in error.lower() and op.action == "subscribe":
                outcomes[i] = "retry-single"  # needs the single call, which can ask for pending
            else:
                outcomes[i] = ProviderPermanent(
                    " ".join(filter(None, ("Mailchimp batch:", code or "error", _explained(error))))
                )
        return outcomes

    def _batches(self, notice: Notice, ops: list[tuple[int, Operation]]) -> dict[int, Outcome]:
        """``ops`` in batches of 500, up to 10 calls at once; each one's outcome by its index."""
        chunks = [ops[n : n + BATCH_SIZE] for n in range(0, len(ops), BATCH_SIZE)]
        outcomes: dict[int, Outcome] = {}
        with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
            for result in pool.map(lambda chunk: self._batch(notice, chunk), chunks):
                outcomes.update(result)
        return outcomes

    def _run(self, notice: Notice, ops: list[tuple[int, Operation]], batched: bool) -> dict[int, Outcome]:
        """Outcomes by index: in batches of 500, or one call each; a batch member Mailchimp
        wants to see alone (compliance state) then goes through the single call."""
        if not batched:
            return dict(zip([i for i, _ in ops], apply_each(self, notice, [op for _, op in ops]), strict=True))
        outcomes = self._batches(notice, ops)
        again = [(i, op) for i, op in ops if outcomes[i] == "retry-single"]
        outcomes.update(self._run(notice, again, batched=False))
        return outcomes

    def apply_many(self, notice: Notice, operations: list[Operation]) -> list[Outcome]:
        """Status changes in batches of 500 on up to 10 connections; deletes one by one.

        GDPR marketing permissions exist only on the single-member PUT, not in the batch
        member schema, so a notice that sets them sends its sign-ups one by one too.
        """
        single_actions = ("delete", "subscribe") if notice.provider.get("marketing_permissions") else ("delete",)
        plan = [(i, op, op.action not in single_actions) for i, op in enumerate(operations)]
        if any(op.action == "subscribe" for op in operations):
            try:
                self._ensure_link_fields(notice.provider["list_id"])
            except (ProviderRetry, ProviderPermanent) as exc:
                return [exc] * len(operations)
        outcomes: dict[int, Outcome] = {}
        for batched in (True, False):
            outcomes.update(self._run(notice, [(i, op) for i, op, b in plan if b == batched], batched))
        # Refused merge fields: ours may have been deleted in Mailchimp since this process
        # checked. Make them again, then send those sign-ups once more.
        refused = [(i, op, b) for i, op, b in plan if op.action == "subscribe" and _fields_refused(outcomes[i])]
        if refused:
            try:
                self._recheck_link_fields(notice.provider["list_id"])
            except (ProviderRetry, ProviderPermanent) as exc:
                outcomes.update({i: exc for i, _, _ in refused})
            else:
                for batched in (True, False):
                    outcomes.update(self._run(notice, [(i, op) for i, op, b in refused if b == batched], batched))
        return [outcomes[i] for i in range(len(operations))]

    def unsubscribe(self, notice: Notice, email: str) -> None:
        body = {"status": "unsubscribed"}
        self._call(
            self.client.lists.update_list_member,
            notice.provider["list_id"],
            subscriber_hash(email),
            body,
            missing_ok=True,
        )

    def delete(self, notice: Notice, email: str) -> None:
        self._call(
            self.client.lists.delete_list_member_permanent,
            notice.provider["list_id"],
            subscriber_hash(email),
            missing_ok=True,
        )
