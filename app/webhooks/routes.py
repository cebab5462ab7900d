"""Webhook endpoints: thin; parsing here, the rules in ``app/consent/``.

A delivery is answered ``{"status": <outcome>}``; a refused one with the service's one
JSON error shape (``app.errors.json_error``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Response, abort, current_app, jsonify, request

from .. import addresses, consent, metrics
from ..errors import json_error
from ..extensions import csrf
from ..models import utc_naive
from ..notices import get_notice, notice_for_provider
from ..notices import notices as registered_notices
from . import bp

log = logging.getLogger(__name__)

SIGNATURE_TOLERANCE_SECONDS = 300
STAMP_RE = re.compile(r"[0-9]{1,12}")
SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")
# Reasons kept in the evidence record, which is never erased: known words only.
MAILCHIMP_REASONS = ("manual", "abuse", "hard", "soft")
# Mailchimp event type -> our kind (unsubscribe with reason "abuse" is a complaint).
MAILCHIMP_KINDS = {
    "unsubscribe": "unsubscribe",
    "cleaned": "bounce",
    "subscribe": "subscribe",
    "profile": "profile",
    "upemail": "address_change",
}
APSIS_FIELDS = (
    "type",
    "event",
    "email",
    "email_address",
    "address",
    "notice",
    "section",
    "id",
    "event_id",
    "occurred_at",
    "timestamp",
)
# What an APSIS flow may call its event -> our kind.
APSIS_KINDS = {
    "unsubscribe": "unsubscribe",
    "unsubscribed": "unsubscribe",
    "opt-out": "unsubscribe",
    "optout": "unsubscribe",
    "abuse": "complaint",
    "complaint": "complaint",
    "spam": "complaint",
    "bounce": "bounce",
    "bounced": "bounce",
    "hard_bounce": "bounce",
    "hardbounce": "bounce",
}


class BadDelivery(ValueError):
    """The delivery is malformed; answered 400 (``bad_request``) with this as the detail, nothing changes."""


def _secret_matches(setting: str, given: str) -> bool:
    expected = current_app.config.get(setting) or ""
    if not expected:
        return False  # the webhook is off
    # Digests of both, compared in constant time: neither content nor length leaks.
    return hmac.compare_digest(
        hashlib.sha256(expected.encode()).digest(), hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    )


@bp.after_request
def _count_delivery(response: Response) -> Response:
    """Each delivery by provider and result: its outcome when answered 200, its status otherwise."""
    provider = (request.endpoint or "").rsplit(".", 1)[-1]
    if provider in ("mailchimp", "apsis"):
        body = response.get_json(silent=True) if response.status_code == 200 else None
        outcome = body.get("status") if isinstance(body, dict) else None
        metrics.webhook_delivery(provider, str(outcome) if outcome else f"http_{response.status_code}")
    return response


def _answer(outcome: str, status: int = 200) -> Response:
    response = jsonify({"status": outcome})
    response.status_code = status
    return response


@bp.before_request
def _refuse_multipart() -> Response | None:
    """A multipart body is refused before anything parses it.

    Neither provider sends one (Mailchimp posts a urlencoded form, an APSIS flow query
    parameters or JSON), and a signature covers the bytes received: a parsed multipart form
    has consumed them, so what was checked and what was read could differ. The input guard
    (app/security.py) leaves these bodies unparsed so this answer comes first.
    """
    if request.mimetype.startswith("multipart/"):
        return json_error(
            415,
            "unsupported_media_type",
            "multipart bodies are not accepted here: send application/x-www-form-urlencoded "
            "(or, for APSIS, JSON or query parameters)",
        )
    return None


def _verify_mailchimp_signature() -> str | None:
    """None when the signature holds (or none is configured); else why not."""
    secret = current_app.config.get("MAILCHIMP_WEBHOOK_SIGNING_SECRET")
    if not secret:
        return None
    header = request.headers.get("X-Mailchimp-Signature", "")
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not STAMP_RE.fullmatch(stamp) or not SIGNATURE_RE.fullmatch(given):
        return "missing or malformed X-Mailchimp-Signature"
    if abs(time.time() - int(stamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return "signature timestamp is too old or in the future"
    # The bytes as received: nothing has parsed the body yet (multipart never gets here), and
    # the form is later parsed from these same cached bytes.
    signed = stamp.encode() + b"." + request.get_data(cache=True, parse_form_data=False)
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.lower().encode()):
        return "signature does not match"
    return None


def _field(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _address(raw: str, what: str) -> str:
    try:
        return addresses.normalise_email(raw)
    except addresses.InvalidInput:
        raise BadDelivery(f"{what} is missing or not an e-mail address") from None


def _mailchimp_time(raw: str) -> datetime | None:
    try:  # Mailchimp sends "2026-11-22 10:15:00", in UTC
        return datetime.strptime(raw, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _mailchimp_event(form: Any) -> consent.ProviderEvent | str:
    """The event a Mailchimp delivery reports, or the outcome to answer at once."""
    kind = MAILCHIMP_KINDS.get(_field(form, "type"))
    if kind is None:
        if not _field(form, "type"):
            raise BadDelivery("type is missing")
        return "ignored"  # e.g. "campaign": nothing to do with consent
    notice = notice_for_provider("mailchimp", list_id=_field(form, "data[list_id]"))
    if notice is None:
        log.warning("Mailchimp webhook for a list no notice names; acknowledged and ignored")
        return "unknown_list"
    raw_reason = _field(form, "data[reason]")
    reason = raw_reason if raw_reason in MAILCHIMP_REASONS else ("other" if raw_reason else None)
    occurred_at = _mailchimp_time(_field(form, "fired_at"))
    if occurred_at is None:
        raise BadDelivery("fired_at is missing or not a time (YYYY-MM-DD HH:MM:SS)")
    if kind == "address_change":
        email = _address(_field(form, "data[old_email]"), "data[old_email]")
        new_email = _address(_field(form, "data[new_email]"), "data[new_email]")
    else:
        email = _address(_field(form, "data[email]") or _field(form, "data[merges][EMAIL]"), "data[email]")
        new_email = None
    if kind == "unsubscribe" and _field(form, "data[action]") == "delete":
        # An admin deleted the contact in Mailchimp: not the person's own opt-out.
        kind = "provider_delete"
    elif kind == "unsubscribe" and reason == "abuse":
        kind = "complaint"
    if kind == "bounce" and reason == "abuse":
        kind = "complaint"
    name = None
    if kind in ("subscribe", "profile"):  # a bad name must never stand in the way of an opt-out
        try:
            name = addresses.clean_name(
                " ".join(filter(None, (_field(form, "data[merges][FNAME]"), _field(form, "data[merges][LNAME]"))))
            )
        except addresses.InvalidInput:
            raise BadDelivery("data[merges][FNAME] or [LNAME] is not a valid name") from None
    # Identical re-deliveries carry identical fields; that is the delivery's identity.
    identity = urlencode(sorted((k, v) for k, v in form.items(multi=True)))
    return consent.ProviderEvent(
        provider="mailchimp",
        kind=kind,
        notice=notice,
        email=email,
        identity=identity,
        channel="webhook",
        reason=reason,
        name=name,
        new_email=new_email,
        occurred_at=occurred_at,
    )


@bp.route("/mailchimp/<secret>", methods=["GET", "HEAD", "POST"])
@csrf.exempt
def mailchimp(secret: str) -> Response:
    if not _secret_matches("MAILCHIMP_WEBHOOK_SECRET", secret):
        abort(404)
    if request.method != "POST":
        return _answer("ok")  # Mailchimp checks the URL with a GET when the webhook is added
    problem = _verify_mailchimp_signature()
    if problem:
        log.warning("Mailchimp webhook refused: %s", problem)
        return json_error(401, "unauthorized", problem)
    try:
        event = _mailchimp_event(request.form)
    except BadDelivery as exc:
        return json_error(400, "bad_request", str(exc))
    if isinstance(event, str):
        return _answer(event)
    return _answer(consent.apply_provider_event(event))


def _apsis_fields() -> dict[str, str]:
    """The flow's fields, from a JSON object, a form, or the query string."""
    fields: dict[str, Any] = dict(request.args.items())
    if request.is_json:
        try:
            body = json.loads(request.get_data(cache=True))
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise BadDelivery("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadDelivery("the JSON body must be an object")
        fields.update(body)
    else:
        fields.update(request.form.items())
    clean: dict[str, str] = {}
    for key, value in fields.items():
        if key not in APSIS_FIELDS:
            continue
        if not isinstance(value, str | int):
            raise BadDelivery(f"{key} must be a string")
        text = str(value).strip()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadDelivery(f"{key} is not valid text") from None
        clean[key] = text
    return clean


def _apsis_event(fields: dict[str, str]) -> consent.ProviderEvent | str:
    raw_kind = (fields.get("type") or fields.get("event") or "").lower().replace(" ", "_")
    if not raw_kind:
        raise BadDelivery("type (or event) is missing")
    kind = APSIS_KINDS.get(raw_kind.removeprefix("email_").removeprefix("email-"))
    if kind is None:
        raise BadDelivery(f"type must be one of: {', '.join(sorted(set(APSIS_KINDS)))}")
    email = _address(fields.get("email") or fields.get("email_address") or fields.get("address") or "", "email")
    if fields.get("notice"):
        notice = get_notice(fields["notice"])
        if notice is None or notice.provider["kind"] != "apsis":
            return "unknown_list"
    elif fields.get("section"):
        notice = notice_for_provider("apsis", section=fields["section"])
        if notice is None:
            return "unknown_list"
    else:
        candidates = [n for n in registered_notices().values() if n.provider["kind"] == "apsis"]
        if len(candidates) != 1:
            raise BadDelivery("several notices use APSIS: name one with notice or section")
        notice = candidates[0]
    event_id = fields.get("id") or fields.get("event_id")
    occurred = fields.get("occurred_at") or fields.get("timestamp") or ""
    occurred_at = utc_naive(occurred) if occurred else None
    if occurred and occurred_at is None:
        raise BadDelivery("occurred_at must be an ISO 8601 time")
    # Without an id a delivery cannot be told from a later, real repeat of the
    # same event, so each counts as new; the state decides whether it changes anything.
    identity = f"id:{event_id}" if event_id else f"unidentified:{uuid.uuid4().hex}"
    return consent.ProviderEvent(
        provider="apsis",
        kind=kind,
        notice=notice,
        email=email,
        identity=identity,
        channel="webhook",
        reason=raw_kind,
        occurred_at=occurred_at,
    )


@bp.route("/apsis/<secret>", methods=["POST"])
@csrf.exempt
def apsis(secret: str) -> Response:
    if not _secret_matches("APSIS_WEBHOOK_SECRET", secret):
        abort(404)
    try:
        event = _apsis_event(_apsis_fields())
    except BadDelivery as exc:
        return json_error(400, "bad_request", str(exc))
    if isinstance(event, str):
        return _answer(event)
    return _answer(consent.apply_provider_event(event))
