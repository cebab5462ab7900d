"""APSIS One through a small client on ``requests`` (no Python client exists).

OAuth2 client credentials; the token is cached until shortly before it
expires and fetched again on 401/403 (the token endpoint allows only 10 calls
a minute, so it is never fetched per request). Profiles live in the email
keyspace with the address, URL-encoded, as the key. A 409 on a consent means
"already so"; a 404 on delete does only when APSIS says so in its error body.
Every request holds a place in the account's second, and one in its profile's
(``account_limits.request_slot``), so APSIS never sees more than its limits.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

import requests

from .. import metrics
from ..config import APSIS_DEFAULT_URL
from ..notices import Notice
from . import (
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
EMAIL_CHANNEL = "com.apsis1.channels.email"
# APSIS's limits (developer.apsis.com/reference/limits): 100 requests a second per account
# and 10 a second per profile key. A request's place counts until a second after its answer,
# so these hold at APSIS whenever the requests arrive there (account_limits).
REQUESTS_PER_SECOND = 100
REQUESTS_PER_PROFILE_SECOND = 10
RETRYABLE = {408, 429, 500, 502, 503, 504}
CONSENT_SOURCE = "Newsletter consent service"
CONSENT_REASONS = {"opt-in": "Double opt-in confirmed", "opt-out": "Opted out"}


class ExportExpired(ProviderRetry):
    """The export's download link no longer works; the export must be asked for again."""


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ProviderRetry(f"APSIS answered {response.status_code} without JSON") from None
    if not isinstance(body, dict):
        raise ProviderRetry(f"APSIS answered {response.status_code} with JSON that is not an object")
    return body


def _operation(method: str, path: str) -> str:
    """The call's path as a template, for metrics: no address (a profile key) ever in a label."""
    template = re.sub(r"/profiles/[^/?]+", "/profiles/{profile}", path.split("?")[0])
    return f"{method} {re.sub(r'/keyspaces/[^/]+', '/keyspaces/{keyspace}', template)}"


def _apsis_error(response: requests.Response) -> bool:
    """The answer carries an error body in APSIS's JSON shape (not a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get("title") or body.get("message") or body.get("detail"))


class ApsisProvider:
    _tokens: ClassVar[dict[tuple[str, str], tuple[str, float]]] = {}
    _token_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        limits_uri: str = "memory://",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = client_id
        self.client_secret = client_secret
        self.limits_uri = limits_uri
        # The account's name in the shared counters: its client id, hashed (the counters'
        # store is not where credentials belong).
        self.account = "apsis:" + hashlib.sha256(f"{self.base_url}|{client_id}".encode()).hexdigest()[:16]
        self.session = requests.Session()

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> ApsisProvider:
        client_id, secret = str(config.get("APSIS_CLIENT_ID") or ""), str(config.get("APSIS_CLIENT_SECRET") or "")
        if not client_id or not secret:
            raise ProviderNotConfigured("set APSIS_CLIENT_ID and APSIS_CLIENT_SECRET")
        timeout = config.get("PROVIDER_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)
        assert isinstance(timeout, int)
        limits_uri = str(config.get("RATELIMIT_STORAGE_URI") or "memory://")
        base_url = str(config.get("APSIS_API_URL") or APSIS_DEFAULT_URL)
        return cls(base_url, client_id, secret, timeout, limits_uri)

    def close(self) -> None:
        self.session.close()

    # --- transport -------------------------------------------------------

    def _token(self, refresh: bool = False) -> str:
        key = (self.base_url, self.client_id)
        with self._token_lock:
            cached = self._tokens.get(key)
            if cached and not refresh and cached[1] > time.monotonic():
                return cached[0]
            body = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
            response = self._send("POST", "/oauth/token", body, token=None)
            if response.status_code != 200:
                self._fail(response, "token")
            data = response.json()
            lifetime = float(data.get("expires_in", 3600))
            self._tokens[key] = (data["access_token"], time.monotonic() + max(lifetime - 60, lifetime / 2))
            return data["access_token"]

    def _send(self, method: str, path: str, body: Any, token: str | None) -> requests.Response:
        with ExitStack() as places:  # the profile's place first, then the account's: one order, no deadlock
            if "/profiles/" in path:
                profile = path.split("/profiles/")[1].split("/")[0]
                key = f"{self.account}:{hashlib.sha256(profile.encode()).hexdigest()[:16]}"
                places.enter_context(account_limits.request_slot(self.limits_uri, key, REQUESTS_PER_PROFILE_SECOND))
            account = account_limits.request_slot(self.limits_uri, self.account, REQUESTS_PER_SECOND, even=True)
            places.enter_context(account)
            return self._call(method, path, body, token)

    def _call(self, method: str, path: str, body: Any, token: str | None) -> requests.Response:
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        operation = _operation(method, path)
        try:
            data = None if body is None else json.dumps(body).encode()
            if data is not None:
                headers.setdefault("Content-Type", "application/json")
            response = self.session.request(
                method, self.base_url + path, data=data, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            metrics.provider_call("apsis", operation, None)
            raise ProviderRetry(f"APSIS unreachable: {type(exc).__name__}") from None
        metrics.provider_call("apsis", operation, response.status_code)
        return response

    def _fail(self, response: requests.Response, what: str) -> NoReturn:
        try:
            title = response.json().get("title", "")
        except ValueError:
            title = ""
        reason = f"APSIS {response.status_code} on {what} {title}".strip()
        if response.status_code in RETRYABLE:
            retry_after = response.headers.get("Retry-After", "")
            raise ProviderRetry(reason, float(retry_after) if re.fullmatch(r"[0-9]{1,6}", retry_after) else None)
        if response.status_code in (401, 403):
            raise ProviderRetry(reason)  # credentials may be fixed; retried, then a dead letter
        raise ProviderPermanent(reason)

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        ok_statuses: tuple[int, ...] = (),
        missing_ok: bool = False,
    ) -> requests.Response:
        """``missing_ok``: a 404 is an answer (the profile is not there) only when APSIS says so in
        its own error body; a 404 without one (a proxy, a wrong base URL) is retried, so it is
        never taken for a deletion or an opt-out done."""
        response = self._send(method, path, body, self._token())
        if response.status_code in (401, 403):
            response = self._send(method, path, body, self._token(refresh=True))
        what = f"{method} {path.split('/profiles/')[0].split('?')[0]}"
        if response.status_code == 404 and missing_ok:
            if not _apsis_error(response):
                raise ProviderRetry(f"APSIS 404 on {what} without an APSIS error body; not counted as done")
            return response
        if response.status_code < 300 or response.status_code in ok_statuses:
            return response
        self._fail(response, what)

    # --- the provider interface -------------------------------------------

    @staticmethod
    def _profile(notice: Notice, email: str, version: str = "/v2") -> str:
        """A profile's path. The consent calls are under ``/v2``; the delete and the
        attribute update by version ids are not (developer.apsis.com, PROVIDERS.md)."""
        keyspace = notice.provider["keyspace"]
        return f"{version}/audience/keyspaces/{quote(keyspace, safe='')}/profiles/{quote(email, safe='')}"

    def _consent(self, notice: Notice, email: str, kind: str) -> requests.Response:
        section = quote(notice.provider["section"], safe="")
        body = {
            "topic_discriminator": notice.provider["topic"],
            "channel_discriminator": EMAIL_CHANNEL,
            "type": kind,
            # What APSIS shows beside the consent; its own connector always sends both.
            "reason": CONSENT_REASONS[kind],
            "source": CONSENT_SOURCE,
        }
        # 409: the consent is already in that state. 404: APSIS holds no such profile in the
        # section (a consent never creates one); the caller decides what that means.
        path = f"{self._profile(notice, email)}/sections/{section}/consents"
        return self._request("POST", path, body, ok_statuses=(409,), missing_ok=True)

    def _attributes(self, notice: Notice, member: Member) -> None:
        """The address, name and our links in the section's attributes, where the notice names their ids.

        This call (v1, by attribute version ids) is also what creates the profile in the
        section, which a consent needs; so the email attribute's id is required.
        """
        if not notice.provider.get("email_attribute"):
            raise ProviderNotConfigured(
                f"set email_attribute in notices/{notice.slug}.toml (or {notice.slug.upper()}_EMAIL_ATTRIBUTE) to the"
                " version id of the section's email attribute: APSIS creates a profile only through that call"
            )
        wanted = {
            "email_attribute": member.email,
            "name_attribute": member.name,
            "unsubscribe_url_attribute": member.unsubscribe_url,
            "manage_url_attribute": member.manage_url,
        }
        values = {notice.provider[key]: value for key, value in wanted.items() if notice.provider.get(key) and value}
        if values:
            # Version ids go to the v1 call, which also creates the profile; the v2 call
            # takes discriminators and answers 404 for a profile that does not exist yet.
            section = quote(notice.provider["section"], safe="")
            path = f"{self._profile(notice, member.email, version='')}/sections/{section}/attributes"
            self._request("PATCH", path, values)

    def subscribe(self, notice: Notice, member: Member) -> str:
        self._attributes(notice, member)
        if self._consent(notice, member.email, "opt-in").status_code == 404:
            raise ProviderRetry("APSIS 404 on the opt-in consent right after creating the profile")
        return "subscribed"

    def unsubscribe(self, notice: Notice, email: str) -> None:
        self._consent(notice, email, "opt-out")  # no profile at APSIS: nothing there to opt out

    def delete(self, notice: Notice, email: str) -> None:
        self._request("DELETE", self._profile(notice, email, version=""), missing_ok=True)

    # --- the email event export (providers poll-apsis) ------------------------

    def request_export(self, start_at: str, end_at: str) -> str:
        """Ask for the account's email events with ``start_at <= server_time < end_at``; answers
        the report id (developer.apsis.com post_emails-reports-1: one request a minute)."""
        response = self._request("POST", "/emails/reports", {"start_at": start_at, "end_at": end_at})
        report_id = _json(response).get("report_id")
        if not isinstance(report_id, str) or not report_id:
            raise ProviderRetry("APSIS export request answered without a report_id")
        return report_id

    def export_status(self, report_id: str) -> dict[str, Any]:
        """The report's ``status`` and, once ``completed``, its ``file_download_url``
        (get_emails-reports-report-id-1)."""
        answer = _json(self._request("GET", f"/emails/reports/{quote(report_id, safe='')}"))
        if not isinstance(answer.get("status"), str):
            raise ProviderRetry("APSIS export status answered without a status")
        return answer

    def export_rows(self, url: str) -> Iterator[dict[str, str]]:
        """The export file's rows, read as they download: a gzip CSV with a header row.

        The download URL carries its own authorisation, so no token goes with it.
        """
        try:
            response = requests.get(url, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ProviderRetry(f"APSIS export file unreachable: {type(exc).__name__}") from None
        with response:
            if response.status_code in (403, 404, 410):
                raise ExportExpired(f"APSIS export file answered {response.status_code} (expired or gone)")
            if response.status_code != 200:
                raise ProviderRetry(f"APSIS export file answered {response.status_code}")
            try:
                with gzip.GzipFile(fileobj=response.raw) as unzipped:
                    yield from csv.DictReader(io.TextIOWrapper(unzipped, encoding="utf-8", newline=""))
            except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
                raise ProviderRetry(f"APSIS export file could not be read: {type(exc).__name__}") from None

    def apply_many(self, notice: Notice, operations: list[Operation]) -> list[Outcome]:
        # APSIS has no batch endpoint for consents; calls run concurrently, each holding its
        # place in the account's second.
        return apply_each(self, notice, operations)
