"""The OpenAPI 3.1 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

The test suite runs schemathesis against it, so it stays true to the code.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..notices import notices as registered_notices

ERROR = {"$ref": "#/components/schemas/Error"}
EMAIL = {"type": "string", "format": "email", "maxLength": 254, "examples": ["anna@example.com"]}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Missing or invalid bearer token",
        403: "The token lacks the scope",
        413: "Body over 1 MB",
        404: "Not held",
        415: "Not JSON",
        422: "A field is missing or invalid",
        429: "Rate limited",
    }
    return {
        str(code): {"description": text[code], "content": {"application/json": {"schema": ERROR}}} for code in codes
    }


def document() -> dict[str, Any]:
    slugs = sorted(registered_notices())
    notice_slug = {"type": "string", "enum": slugs}
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
        "servers": [{"url": current_app.config["PUBLIC_URL"]}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/consent": {
                "get": {
                    "summary": "May each controller e-mail this address?",
                    "operationId": "consentStatus",
                    "parameters": [
                        {"name": "email", "in": "query", "required": True, "schema": EMAIL},
                    ],
                    "responses": {
                        "200": {
                            "description": "One answer per notice",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ConsentStatus"}}},
                        },
                        **_error_responses(400, 401, 403, 422, 429),
                    },
                }
            },
            "/api/v1/subscriptions": {
                "post": {
                    "summary": "Start double opt-in for an address (a confirmation mail is sent)",
                    "operationId": "subscribe",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["email", "notice"],
                                    "properties": {
                                        "email": EMAIL,
                                        "notice": notice_slug,
                                        "name": {"type": "string", "maxLength": 100},
                                        "lang": {"type": "string", "enum": ["sv", "en"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted; the same answer whether the address was known",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"const": "confirmation_requested"}},
                                    }
                                }
                            },
                        },
                        **_error_responses(400, 401, 403, 413, 415, 422, 429),
                    },
                }
            },
            "/api/v1/opt-outs": {
                "post": {
                    "summary": "Record an opt-out by address, under the notice's rule",
                    "operationId": "optOut",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["email", "notice"],
                                    "properties": {"email": EMAIL, "notice": notice_slug},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Done (or nothing was left to do)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status", "rule"],
                                        "properties": {
                                            "status": {"enum": ["opted_out", "already_opted_out"]},
                                            "rule": {"enum": ["unsubscribe", "delete"]},
                                        },
                                    }
                                }
                            },
                        },
                        **_error_responses(400, 401, 403, 413, 415, 422, 429),
                    },
                }
            },
            "/api/v1/contacts": {
                "post": {
                    "summary": "Record a dialog with a contact, or their relationship (prospect or customer)",
                    "description": (
                        "last_contact_at starts the notice's prospect-with-dialog retention period and only "
                        "moves forward; a customer is reviewed periodically instead of purged."
                    ),
                    "operationId": "recordContact",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["email", "notice"],
                                    "properties": {
                                        "email": EMAIL,
                                        "notice": notice_slug,
                                        "last_contact_at": {"type": "string", "format": "date-time"},
                                        "relationship": {"enum": ["subscriber", "prospect", "customer"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Recorded",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["notice", "relationship", "last_contact_at"],
                                        "properties": {
                                            "notice": {"type": "string"},
                                            "relationship": {"enum": ["subscriber", "prospect", "customer"]},
                                            "last_contact_at": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        **_error_responses(400, 401, 403, 404, 413, 415, 422, 429),
                    },
                }
            },
            "/api/v1/events": {
                "get": {
                    "summary": "Evidence events in ledger order, a page at a time",
                    "operationId": "events",
                    "parameters": [
                        {"name": "after", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
                        {"name": "limit", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,3}$"}},
                        {"name": "notice", "in": "query", "schema": notice_slug},
                        {"name": "email", "in": "query", "schema": EMAIL},
                    ],
                    "responses": {
                        "200": {
                            "description": "A page; pass next_after as after for the next one",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventPage"}}},
                        },
                        **_error_responses(400, 401, 403, 422, 429),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail", "status"],
                    "properties": {
                        "error": {
                            "type": "string",
                            "description": "A stable English code to branch on, e.g. unauthorized, forbidden, "
                            "invalid_json, invalid_field, not_found, method_not_allowed, payload_too_large, "
                            "unsupported_media_type, rate_limited",
                            "examples": ["invalid_field"],
                        },
                        "detail": {"type": "string", "description": "What was wrong, in English, for a person"},
                        "status": {"type": "integer"},
                    },
                },
                "ConsentStatus": {
                    "type": "object",
                    "required": ["email", "notices"],
                    "properties": {
                        "email": {"type": "string"},
                        "notices": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["notice", "controller", "may_email", "status"],
                                "properties": {
                                    "notice": {"type": "string"},
                                    "controller": {"type": "string"},
                                    "may_email": {"type": "boolean"},
                                    "status": {
                                        "enum": ["pending", "subscribed", "unsubscribed", "suppressed", "unknown"]
                                    },
                                    "lawful_basis": {"type": ["string", "null"]},
                                    "since": {"type": ["string", "null"]},
                                    "notice_version": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
                "EventPage": {
                    "type": "object",
                    "required": ["events", "next_after"],
                    "properties": {
                        "next_after": {"type": ["integer", "null"]},
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["seq", "type", "at", "channel", "facts"],
                                "properties": {
                                    "seq": {"type": "integer"},
                                    "type": {"type": "string"},
                                    "at": {"type": "string"},
                                    "notice": {"type": ["string", "null"]},
                                    "notice_version": {"type": ["string", "null"]},
                                    "subscription_ref": {"type": ["string", "null"]},
                                    "channel": {"type": "string"},
                                    "facts": {"type": "object"},
                                    "details": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
