"""The OpenAPI 3.1 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Built from the models of ``schemas.py`` (the ones the handlers validate with and answer
from) and the table of operations below; the test suite runs schemathesis against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flask import current_app
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from ..notices import notices as registered_notices
from .schemas import (
    ConsentAnswer,
    ConsentQuery,
    ContactRecorded,
    ContactRequest,
    Error,
    EventPage,
    EventsQuery,
    OptOutDone,
    OptOutRequest,
    SignupAccepted,
    SubscriptionRequest,
)

REF_TEMPLATE = "#/components/schemas/{model}"
PREFIX = "/api/v1"
ERROR_TEXT = {
    400: "Malformed request",
    401: "Missing or invalid bearer token",
    403: "The token lacks the scope",
    404: "Not held",
    413: "Body over 1 MB",
    415: "Not JSON",
    422: "A field is missing or invalid",
    429: "Rate limited",
}
QUERY_ERRORS = (400, 401, 403, 422, 429)
BODY_ERRORS = (400, 401, 403, 413, 415, 422, 429)


@dataclass(frozen=True)
class Operation:
    """One operation of the API: where it is, what it takes, what it answers."""

    method: str
    path: str
    operation_id: str
    summary: str
    answer: type[BaseModel]
    answered: str  # the description of the success answer
    errors: tuple[int, ...]
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    description: str | None = None


OPERATIONS = (
    Operation(
        method="get",
        path="/consent",
        operation_id="consentStatus",
        summary="May each controller e-mail this address?",
        query=ConsentQuery,
        answer=ConsentAnswer,
        answered="One answer per notice",
        errors=QUERY_ERRORS,
    ),
    Operation(
        method="post",
        path="/subscriptions",
        operation_id="subscribe",
        summary="Start double opt-in for an address (a confirmation mail is sent)",
        body=SubscriptionRequest,
        answer=SignupAccepted,
        status=202,
        answered="Accepted; the same answer whether the address was known",
        errors=BODY_ERRORS,
    ),
    Operation(
        method="post",
        path="/opt-outs",
        operation_id="optOut",
        summary="Record an opt-out by address, under the notice's rule",
        body=OptOutRequest,
        answer=OptOutDone,
        answered="Done (or nothing was left to do)",
        errors=BODY_ERRORS,
    ),
    Operation(
        method="post",
        path="/contacts",
        operation_id="recordContact",
        summary="Record a dialog with a contact, or their relationship (prospect or customer)",
        description="last_contact_at starts the notice's prospect-with-dialog retention period and only moves "
        "forward; a customer is reviewed periodically instead of purged.",
        body=ContactRequest,
        answer=ContactRecorded,
        answered="Recorded",
        errors=(*BODY_ERRORS, 404),
    ),
    Operation(
        method="get",
        path="/events",
        operation_id="events",
        summary="Evidence events in ledger order, a page at a time",
        query=EventsQuery,
        answer=EventPage,
        answered="A page; pass next_after as after for the next one",
        errors=QUERY_ERRORS,
    ),
)


class _Schemas(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title on every property (the property's name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


class _Components:
    """The document's ``components.schemas``: each model once, with the definitions it refers to."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def add(self, name: str, schema: dict[str, Any]) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are both named {name}")

    def schema_of(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=_Schemas, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self.add(name, definition)
        return schema

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, str]:
        self.add(model.__name__, self.schema_of(model, mode))
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _parameters(query: type[BaseModel], components: _Components) -> list[dict[str, Any]]:
    """A query model's fields as query parameters (an optional one is left out, never null)."""
    schema = components.schema_of(query, "validation")
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        field = dict(field)
        options = [option for option in field.pop("anyOf", ()) if option != {"type": "null"}]
        if len(options) == 1:
            field.update(options[0])
        elif options:
            field["anyOf"] = options
        if field.get("default", ...) is None:
            del field["default"]
        parameters.append({"name": name, "in": "query", "required": name in required, "schema": field})
    return parameters


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(operation: Operation, components: _Components) -> dict[str, Any]:
    error = components.ref(Error, "serialization")
    described: dict[str, Any] = {"summary": operation.summary, "operationId": operation.operation_id}
    if operation.description:
        described["description"] = operation.description
    if operation.query is not None:
        described["parameters"] = _parameters(operation.query, components)
    if operation.body is not None:
        described["requestBody"] = {"required": True, "content": _json(components.ref(operation.body, "validation"))}
    described["responses"] = {
        str(operation.status): {
            "description": operation.answered,
            "content": _json(components.ref(operation.answer, "serialization")),
        },
        **{str(code): {"description": ERROR_TEXT[code], "content": _json(error)} for code in sorted(operation.errors)},
    }
    return described


def document() -> dict[str, Any]:
    """The document for this application: its public URL and the notices it has loaded."""
    return _document(current_app.config["PUBLIC_URL"], tuple(sorted(registered_notices())))


@lru_cache(maxsize=8)
def _document(public_url: str, slugs: tuple[str, ...]) -> dict[str, Any]:
    """Built once per public URL and set of notices (the notice enums read the loaded notices,
    which ``slugs`` names): generating the schemas costs milliseconds, and the route is public.
    The answer is shared: read it, never change it."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(PREFIX + operation.path, {})[operation.method] = _operation(operation, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter consent API",
            "version": "1.0.0",
            "description": (
                "Consent status, sign-ups, opt-outs, contacts and evidence, for the CRM. A token reaches the "
                "people of its own notices only: any other notice is answered as an unknown one (422), and an "
                "address another controller holds is answered as one never seen."
            ),
        },
        "servers": [{"url": public_url}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(components.schemas.items())),
        },
    }
