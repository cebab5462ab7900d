"""API routes: thin; the rules live in ``app/consent/``.

A token reaches the people of its own notices only: a notice outside them is
answered as an unknown one, and no answer says whether another controller holds
an address.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from .. import accounts, addresses, consent
from ..database import MAX_ID
from ..errors import json_error
from ..events import serialize_event, with_details
from ..extensions import db, limiter
from ..models import ConsentEvent, Subscription, utcnow
from ..notices import Notice, get_notice
from ..vocabulary import Scope
from . import bp
from .openapi import document
from .schemas import (
    ConsentAnswer,
    ConsentQuery,
    ContactRecorded,
    ContactRequest,
    EventPage,
    EventsQuery,
    OptOutDone,
    OptOutRequest,
    SignupAccepted,
    SubscriptionRequest,
    first_problem,
)

API_RATE_LIMIT = "600 per minute"
LAST_USED_PRECISION = timedelta(minutes=1)

Payload = TypeVar("Payload", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return json_error(exc.status, exc.code, exc.message, exc.headers)


def needs(scope: Scope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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
                raise ApiError(403, "forbidden", f"this token lacks the '{scope.value}' scope")
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


def _valid(model: type[Payload], data: Mapping[str, Any]) -> Payload:
    """``data`` as ``model``, with notices limited to the token's; else a 422 naming the first problem."""
    try:
        return model.model_validate(data, context={"notices": g.api_notices})
    except ValidationError as exc:
        raise ApiError(422, "invalid_field", first_problem(exc)) from None


def _query(model: type[Payload]) -> Payload:
    return _valid(model, request.args.to_dict())  # a repeated parameter counts once, its first value


def _notice(slug: str) -> Notice:
    notice = get_notice(slug)
    if notice is None:  # validated as a loaded notice a moment ago; it cannot have gone since
        raise ApiError(422, "invalid_field", "notice must be a loaded notice")
    return notice


def _answer(payload: BaseModel, status: int = 200) -> Response:
    response = jsonify(payload.model_dump(mode="json", exclude_unset=True))
    response.status_code = status
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


@bp.get("/consent")
@limiter.limit(API_RATE_LIMIT)
@needs(Scope.READ)
def consent_status() -> Response:
    email = _query(ConsentQuery).email
    answers = consent.consent_status(email, within=g.api_notices)
    return _answer(ConsentAnswer.model_validate({"email": email, "notices": answers}))


@bp.post("/subscriptions")
@limiter.limit(API_RATE_LIMIT)
@needs(Scope.SUBSCRIBE)
def subscribe() -> Response:
    body = _valid(SubscriptionRequest, _body())
    facts = consent.Facts(channel="api", actor=g.api_actor, lang=body.lang.value)
    try:
        consent.request_subscription(_notice(body.notice), body.email, body.name, facts)
    except addresses.InvalidInput as exc:
        raise ApiError(
            422, "invalid_field", f"{exc.field} is {'missing' if str(exc) == 'required' else 'invalid'}"
        ) from None
    # The same answer whether the address was known: the API reveals no more than the form.
    return _answer(SignupAccepted(status="confirmation_requested"), 202)


@bp.post("/opt-outs")
@limiter.limit(API_RATE_LIMIT)
@needs(Scope.OPT_OUT)
def opt_out() -> Response:
    body = _valid(OptOutRequest, _body())
    notice = _notice(body.notice)
    outcome = consent.opt_out_address(notice, body.email, _facts())
    return _answer(OptOutDone.model_validate({"status": outcome, "rule": notice.opt_out_rule}))


@bp.get("/events")
@limiter.limit(API_RATE_LIMIT)
@needs(Scope.READ)
def events() -> Response:
    asked = _query(EventsQuery)
    query = with_details()
    if asked.notice is not None:
        query = query.where(ConsentEvent.notice == asked.notice)
    else:
        query = query.where(ConsentEvent.notice.in_(sorted(g.api_notices)))
    if asked.email is not None:
        refs = select(Subscription.ref).where(
            Subscription.email_hash == addresses.email_hash(asked.email),
            Subscription.notice.in_(sorted(g.api_notices)),
        )
        query = query.where(ConsentEvent.subscription_ref.in_(refs))
    after = min(asked.after, MAX_ID)  # past every event: no seq is larger
    query = query.where(ConsentEvent.seq > after).order_by(ConsentEvent.seq).limit(asked.limit + 1)
    rows = db.session.execute(query).all()
    page = rows[: asked.limit]
    # One person's own events carry their details; a page of many people's never does.
    items = [serialize_event(event, detail if asked.email else None, with_ref=True) for event, detail in page]
    next_after = page[-1][0].seq if len(rows) > asked.limit else None
    return _answer(EventPage.model_validate({"events": items, "next_after": next_after}))


@bp.post("/contacts")
@limiter.limit(API_RATE_LIMIT)
@needs(Scope.CONTACT)
def record_contact() -> Response:
    """A dialog with a contact (starts the prospect-with-dialog retention period), or their relationship."""
    body = _valid(ContactRequest, _body())
    notice = _notice(body.notice)
    relationship = body.relationship.value if body.relationship is not None else None
    try:
        sub = consent.record_contact(notice, body.email, body.last_contact_at, relationship, _facts())
    except addresses.InvalidInput as exc:
        what = "in the future" if str(exc) == "future" else "invalid"
        raise ApiError(422, "invalid_field", f"{exc.field} is {what}") from None
    if sub is None:
        raise ApiError(404, "not_found", "that address is not held under this notice")
    at = sub.last_contact_at
    return _answer(
        ContactRecorded.model_validate(
            {
                "notice": notice.slug,
                "relationship": sub.relationship,
                "last_contact_at": at.isoformat(timespec="seconds") + "Z" if at else None,
            }
        )
    )
