"""API routes: thin; the rules live in ``app/consent.py``.

A token reaches the people of its own notices only: a notice outside them is
answered as an unknown one, and no answer says whether another controller holds
an address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import Response, g, jsonify, request
from sqlalchemy import select

from .. import accounts, addresses, consent
from ..database import MAX_ID, id_param
from ..extensions import db, limiter
from ..models import ConsentEvent, EventDetail, Subscription, utc_naive, utcnow
from ..notices import get_notice
from . import bp
from .openapi import document

API_RATE_LIMIT = "600 per minute"
MAX_PAGE = 500
LAST_USED_PRECISION = timedelta(minutes=1)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    response = jsonify({"error": exc.code, "detail": exc.message, "status": exc.status})
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


def needs(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route needs a live bearer token with ``scope``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
            token = accounts.token_for(secret.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                raise ApiError(
                    401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": 'Bearer realm="api"'}
                )
            if scope not in token.scopes.split():
                raise ApiError(403, "forbidden", f"this token lacks the {scope!r} scope")
            now = utcnow()
            g.api_actor = f"token:{token.id}"
            g.api_notices = accounts.notices_of(token)
            if token.last_used_at is None or now - token.last_used_at > LAST_USED_PRECISION:
                accounts.note_token_use(token, now)
            return view(*args, **kwargs)

        wrapped.required_scope = scope  # type: ignore[attr-defined]
        return wrapped

    return decorate


def _facts() -> consent.Facts:
    return consent.Facts(channel="api", actor=g.api_actor)


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON object with Content-Type: application/json")
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def _string(source: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = source.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(422, "invalid_field", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"{name} must be a string")
    return value


def _email(raw: str | None) -> str:
    try:
        return addresses.normalise_email(raw)
    except addresses.InvalidInput:
        raise ApiError(422, "invalid_field", "email is not a valid e-mail address") from None


def _notice(slug: str | None) -> Any:
    notice = get_notice(slug)
    if notice is None or notice.slug not in g.api_notices:
        known = ", ".join(sorted(g.api_notices)) or "(this token reaches no notice)"
        raise ApiError(422, "invalid_field", f"notice must be one of: {known}")
    return notice


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


@bp.get("/consent")
@limiter.limit(API_RATE_LIMIT)
@needs("read")
def consent_status() -> Response:
    email = _email(_string(dict(request.args), "email"))
    return jsonify({"email": email, "notices": consent.consent_status(email, within=g.api_notices)})


@bp.post("/subscriptions")
@limiter.limit(API_RATE_LIMIT)
@needs("subscribe")
def subscribe() -> Response:
    body = _body()
    notice = _notice(_string(body, "notice"))
    lang = _string(body, "lang", required=False) or "sv"
    if lang not in notice.languages:
        raise ApiError(422, "invalid_field", f"lang must be one of: {', '.join(notice.languages)}")
    name = _string(body, "name", required=False)
    facts = consent.Facts(channel="api", actor=g.api_actor, lang=lang)
    try:
        consent.request_subscription(notice, _string(body, "email"), name, facts)
    except addresses.InvalidInput as exc:
        raise ApiError(
            422, "invalid_field", f"{exc.field} is {'missing' if str(exc) == 'required' else 'invalid'}"
        ) from None
    # The same answer whether the address was known: the API reveals no more than the form.
    response = jsonify({"status": "confirmation_requested"})
    response.status_code = 202
    return response


@bp.post("/opt-outs")
@limiter.limit(API_RATE_LIMIT)
@needs("opt_out")
def opt_out() -> Response:
    body = _body()
    notice = _notice(_string(body, "notice"))
    email = _email(_string(body, "email"))
    return jsonify({"status": consent.opt_out_address(notice, email, _facts()), "rule": notice.opt_out_rule})


@bp.get("/events")
@limiter.limit(API_RATE_LIMIT)
@needs("read")
def events() -> Response:
    args = request.args
    after_raw = args.get("after", "0")
    after = MAX_ID if re.fullmatch(r"[0-9]{11,18}", after_raw) else id_param(after_raw)  # past every event
    limit = id_param(args.get("limit", "100"))
    if after is None or limit is None or not 1 <= limit <= MAX_PAGE:
        raise ApiError(422, "invalid_field", f"after must be a whole number and limit between 1 and {MAX_PAGE}")
    query = select(ConsentEvent, EventDetail).outerjoin(EventDetail, EventDetail.seq == ConsentEvent.seq)
    if args.get("notice"):
        query = query.where(ConsentEvent.notice == _notice(args["notice"]).slug)
    else:
        query = query.where(ConsentEvent.notice.in_(sorted(g.api_notices)))
    with_details = False
    if args.get("email"):
        ehash = addresses.email_hash(_email(args["email"]))
        refs = select(Subscription.ref).where(
            Subscription.email_hash == ehash, Subscription.notice.in_(sorted(g.api_notices))
        )
        query = query.where(ConsentEvent.subscription_ref.in_(refs))
        with_details = True  # one person's own events: their details belong with them
    rows = db.session.execute(query.where(ConsentEvent.seq > after).order_by(ConsentEvent.seq).limit(limit + 1)).all()
    page = rows[:limit]
    items = []
    for event, detail in page:
        item = {
            "seq": event.seq,
            "type": event.type,
            "at": event.at.isoformat(timespec="microseconds") + "Z",
            "notice": event.notice,
            "notice_version": event.notice_version,
            "subscription_ref": event.subscription_ref,
            "channel": event.channel,
            "facts": json.loads(event.facts or "{}"),
        }
        if with_details and detail is not None:
            item["details"] = json.loads(detail.details)
        items.append(item)
    next_after = page[-1][0].seq if len(rows) > limit else None
    return jsonify({"events": items, "next_after": next_after})


@bp.post("/contacts")
@limiter.limit(API_RATE_LIMIT)
@needs("contact")
def record_contact() -> Response:
    """A dialog with a contact (starts the prospect-with-dialog retention period), or their relationship."""
    body = _body()
    notice = _notice(_string(body, "notice"))
    email = _email(_string(body, "email"))
    at_raw = _string(body, "last_contact_at", required=False)
    at = utc_naive(at_raw) if at_raw else None
    if at_raw and at is None:
        raise ApiError(422, "invalid_field", "last_contact_at must be an ISO 8601 date-time")
    relationship = _string(body, "relationship", required=False)
    if at is None and relationship is None:
        raise ApiError(422, "invalid_field", "give last_contact_at, relationship, or both")
    try:
        sub = consent.record_contact(notice, email, at, relationship, _facts())
    except addresses.InvalidInput as exc:
        what = "in the future" if str(exc) == "future" else "invalid"
        raise ApiError(422, "invalid_field", f"{exc.field} is {what}") from None
    if sub is None:
        raise ApiError(404, "not_found", "that address is not held under this notice")
    return jsonify(
        {
            "notice": notice.slug,
            "relationship": sub.relationship,
            "last_contact_at": sub.last_contact_at.isoformat(timespec="seconds") + "Z" if sub.last_contact_at else None,
        }
    )
