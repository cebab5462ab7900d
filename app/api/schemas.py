"""The API's payloads, each declared once: what ``/api/v1`` takes and what it answers.

The handlers (``routes.py``) validate every query and body with these models and build
every answer from them; ``openapi.py`` generates ``/api/v1/openapi.json`` from the same
models, so the document and the code cannot drift apart. Words with a vocabulary
(languages, lawful bases, opt-out rules, statuses, relationships) are the StrEnums of
``app/vocabulary.py``; limits are those of ``app/addresses.py``; a notice slug is one of
the notices loaded when the document is built.

Why pydantic, rather than APIFlask or flask-smorest:

- It is a library the handlers call, not a framework around them: the application stays
  a plain ``Flask`` and the API a plain ``Blueprint``, where APIFlask replaces both classes
  and flask-smorest brings its own ``Api`` and ``Blueprint``, with marshmallow schemas.
- Its JSON Schema is draft 2020-12, the dialect of OpenAPI 3.1, so a model's schema goes
  into the document as it is; apispec's marshmallow output follows OpenAPI 3.0's dialect.
- One validation library serves the whole service: the notice files are declared the same
  way (``app/notice_schema.py``).
- The answers stay ours: a failed validation becomes the API's own ``invalid_field``
  error (``first_problem``), with a detail that names the field and never echoes input.

Input is validated in pydantic's lax mode from plain Python values: ``json.loads`` has
already read the body (so malformed JSON stays a 400, a well-formed body that breaks a
rule a 422), and query strings arrive as ``str``. Unknown keys are ignored.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from ..addresses import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, InvalidInput, normalise_email
from ..database import id_param
from ..models import utc_naive
from ..notices import get_notice
from ..notices import notices as registered_notices
from ..vocabulary import Language, LawfulBasis, OptOutRule, Relationship, Status

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_AFTER = 10**18 - 1  # 18 digits; any value past the last event reads as "after every event"
INVALID = "invalid_field"  # the error type of every rule below, and the API's error code for it


def _refuse(message: str, **context: str) -> PydanticCustomError:
    """A broken rule; ``message`` is the whole English detail (``{name}`` filled from ``context``)."""
    return PydanticCustomError(INVALID, message, context)


# --- input types ----------------------------------------------------------------------------


def _present(value: object, info: ValidationInfo) -> object:
    """A required field given as null or "" is missing, as an absent one is."""
    if value is None or value == "":
        raise _refuse("{field} is required", field=info.field_name or "a field")
    return value


def _blank_is_absent(value: object) -> object:
    """An optional field given as "" counts as not given."""
    return None if value == "" else value


def _default_language(value: object) -> object:
    """Swedish when no language is given: both controllers write to Swedish readers first."""
    return Language.SV if value is None or value == "" else value


def _email(value: str) -> str:
    try:
        return normalise_email(value)
    except InvalidInput as exc:
        if str(exc) == "required":
            raise _refuse("email is required") from None
        raise _refuse("email is not a valid e-mail address") from None


def _notice_within_reach(value: str, info: ValidationInfo) -> str:
    """A loaded notice that the caller reaches (``context["notices"]``, all when not given).

    A notice outside the caller's reach gets the same answer as one that does not exist.
    """
    context = info.context if isinstance(info.context, dict) else {}
    reach = context.get("notices")
    if reach is None:
        reach = registered_notices()
    if get_notice(value) is None or value not in reach:
        known = ", ".join(sorted(reach)) or "(this token reaches no notice)"
        raise _refuse("notice must be one of: {known}", known=known)
    return value


class _LoadedNoticeSlugs:
    """The JSON Schema of a notice slug: an enum of the notices loaded when the document is built."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": sorted(registered_notices()), "description": "A notice's slug"}


def _instant(value: object) -> object:
    """An ISO 8601 date-time with or without an offset, as naive UTC (None when not given)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _refuse("last_contact_at must be a string")
    at = utc_naive(value)
    if at is None:
        raise _refuse("last_contact_at must be an ISO 8601 date-time")
    return at


_DIGITS = re.compile(r"[0-9]{1,18}")


def _cursor(value: object) -> object:
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise _refuse("after must be a whole number (the seq of the last event read, or 0)")


def _page_size(value: object) -> object:
    size = id_param(value) if isinstance(value, str) else None
    if size is None or not 1 <= size <= MAX_PAGE:
        raise _refuse("limit must be a whole number from 1 to {most}", most=str(MAX_PAGE))
    return size


Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema(
        {"type": "string", "format": "email", "maxLength": MAX_EMAIL_LENGTH, "examples": ["anna@example.com"]}
    ),
]
NoticeSlug = Annotated[str, AfterValidator(_notice_within_reach), _LoadedNoticeSlugs()]
RequiredEmail = Annotated[Email, BeforeValidator(_present)]
RequiredNotice = Annotated[NoticeSlug, BeforeValidator(_present)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- requests -------------------------------------------------------------------------------


class SubscriptionRequest(_Input):
    """Start double opt-in for an address: a confirmation mail is sent."""

    notice: RequiredNotice
    email: RequiredEmail
    name: Annotated[
        str | None,
        BeforeValidator(_blank_is_absent),
        Field(
            description="The person's name, kept by notices that collect names; runs of white space count as one",
            json_schema_extra={"maxLength": MAX_NAME_LENGTH},
        ),
    ] = None
    lang: Annotated[
        Language,
        BeforeValidator(_default_language),
        Field(description="The language of the mail and pages; one of the notice's"),
    ] = Language.SV

    @model_validator(mode="after")
    def _a_language_of_the_notice(self) -> Self:
        notice = get_notice(self.notice)
        if notice is not None and self.lang not in notice.languages:
            raise _refuse("lang must be one of: {languages}", languages=", ".join(notice.languages))
        return self


class OptOutRequest(_Input):
    """An opt-out by address (told by phone, at a meeting ...), under the notice's rule."""

    notice: RequiredNotice
    email: RequiredEmail


class ContactRequest(_Input):
    """A dialog with a held contact, and/or their relationship; at least one of the two."""

    notice: RequiredNotice
    email: RequiredEmail
    last_contact_at: Annotated[
        datetime | None,
        BeforeValidator(_instant),
        Field(description="When the dialog took place; a time without an offset is UTC. Only moves forward"),
    ] = None
    relationship: Annotated[Relationship | None, BeforeValidator(_blank_is_absent)] = None

    @model_validator(mode="after")
    def _something_to_record(self) -> Self:
        if self.last_contact_at is None and self.relationship is None:
            raise _refuse("give last_contact_at, relationship, or both")
        return self


class ConsentQuery(_Input):
    """The query of ``GET /consent``."""

    email: RequiredEmail


class EventsQuery(_Input):
    """The query of ``GET /events``: a page after a seq, of one notice or person if asked."""

    # The range (Field) applies to the number the before-validator reads from the query's digits.
    after: Annotated[
        int,
        Field(ge=0, le=MAX_AFTER, description="The seq of the last event read (next_after of the previous page)"),
        BeforeValidator(_cursor),
    ] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="Events per page"), BeforeValidator(_page_size)] = (
        DEFAULT_PAGE
    )
    notice: Annotated[NoticeSlug | None, BeforeValidator(_blank_is_absent)] = None
    email: Annotated[
        Email | None,
        BeforeValidator(_blank_is_absent),
        Field(description="Only this person's events, with their personal details"),
    ] = None


# --- answers --------------------------------------------------------------------------------


class Error(BaseModel):
    """Every JSON error of the service, under every prefix (built by ``app.errors.json_error``)."""

    error: str = Field(
        description="A stable English code to branch on, e.g. unauthorized, forbidden, invalid_json, invalid_field, "
        "not_found, method_not_allowed, payload_too_large, unsupported_media_type, rate_limited",
        examples=[INVALID],
    )
    detail: str = Field(description="What was wrong, in English, for a person")
    status: int = Field(description="The HTTP status, repeated")


class NoticeConsent(BaseModel):
    """May this controller e-mail the address, and on what grounds."""

    notice: str
    controller: str
    may_email: bool
    status: Status | Literal["suppressed", "unknown"] = Field(
        description="The subscription's status; suppressed: held only as a suppression entry; unknown: not held"
    )
    lawful_basis: LawfulBasis | None
    since: str | None = Field(description="When the consent was confirmed (while subscribed)")
    notice_version: str | None


class ConsentAnswer(BaseModel):
    email: str = Field(description="The address as normalised and looked up")
    notices: list[NoticeConsent]


class SignupAccepted(BaseModel):
    """The same answer whether the address was known."""

    status: Literal["confirmation_requested"]


class OptOutDone(BaseModel):
    status: Literal["opted_out", "already_opted_out"]
    rule: OptOutRule


class ContactRecorded(BaseModel):
    notice: str
    relationship: Relationship
    last_contact_at: str | None


class Event(BaseModel):
    """One evidence event (``app.events.serialize_event`` with its ``subscription_ref``)."""

    seq: int
    type: str
    at: str = Field(json_schema_extra={"format": "date-time"})
    notice: str | None
    notice_version: str | None
    subscription_ref: str | None
    channel: str
    facts: dict[str, Any]
    details: dict[str, Any] | None = Field(
        default=None, description="The person's own details; only when the page is asked for by email"
    )


class EventPage(BaseModel):
    events: list[Event]
    next_after: int | None = Field(description="Pass as after for the next page; null on the last one")


# --- a failed validation as the API's answer -------------------------------------------------


def first_problem(exc: ValidationError) -> str:
    """The first thing wrong with an input, as the detail of a 422 ``invalid_field`` answer."""
    problem = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in problem["loc"]) or "the body"
    kind = problem["type"]
    if kind == INVALID:
        return problem["msg"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "string_type":
        return f"{field} must be a string"
    if kind == "enum":
        return f"{field} must be {problem.get('ctx', {}).get('expected', 'one of the documented words')}"
    return f"{field}: {problem['msg']}"
