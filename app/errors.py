"""Error answers: a clear page in the visitor's language, or one JSON shape for programs.

Pages are for people; under ``/api/`` and ``/webhooks/`` every error, whether a route
raises it or the framework does, is ``json_error``'s ``{"error", "detail", "status"}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, Response, jsonify, make_response, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from .extensions import db


def _messages() -> dict[int, tuple[str, str]]:
    return {
        400: (_("Something was wrong with the request"), _("Nothing was changed. Please go back and try again.")),
        404: (_("Page not found"), _("There is no page at this address.")),
        405: (_("Not allowed"), _("This page cannot be used that way.")),
        410: (_("This link is no longer valid"), _("Nothing was changed.")),
        413: (_("Too much data"), _("The request was too large. Nothing was changed.")),
        429: (
            _("Too many attempts"),
            _("You have made too many requests in a short time. Please wait a while and try again."),
        ),
        500: (_("Something went wrong on our side"), _("Nothing was changed. Please try again later.")),
    }


# The API's and the webhooks' answer to a failure the framework raises (no route, wrong method, a
# body too large, the rate limit): a stable English code a client can branch on,
# as the API's own errors have (app/api/routes.py), and an English detail like
# theirs. The page titles above are for people and change with the language.
API_ERRORS = {
    400: ("bad_request", "the request is malformed"),
    401: ("unauthorized", "a valid bearer token is required"),
    403: ("forbidden", "this is not allowed"),
    404: ("not_found", "there is no such endpoint"),
    405: ("method_not_allowed", "this endpoint does not take that method; see the Allow header"),
    413: ("payload_too_large", "the request body is too large"),
    415: ("unsupported_media_type", "send a JSON object with Content-Type: application/json"),
    429: ("rate_limited", "too many requests in a short time; wait a while and try again"),
    500: ("internal_error", "something went wrong on our side; nothing was changed"),
}
# Answered as JSON: read by programs, not people.
JSON_PREFIXES = ("/api/", "/webhooks/")


def json_error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The one JSON error answer of the service, under every prefix.

    ``{"error": <code>, "detail": <text>, "status": <int>}``: ``error`` is a stable
    English code to branch on (``invalid_field``, ``not_found`` ...), ``detail`` says
    what was wrong in English for a person, ``status`` repeats the HTTP status. The
    API's schema documents it as ``Error`` (app/api/schemas.py).
    """
    response = jsonify({"error": error, "detail": detail, "status": status})
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def render_error(code: int, detail: str | None = None) -> Response:
    if request.path.startswith(JSON_PREFIXES):
        error, text = API_ERRORS.get(code) or API_ERRORS[500 if code >= 500 else 400]
        return json_error(code, error, text)
    title, message = _messages().get(code, _messages()[400])
    page = render_template("errors/error.html", code=code, title=title, message=detail or message)
    return make_response(page, code)


def register_errorhandlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Response:
        return render_error(400, _("The form had expired. Please reload the page and submit it again."))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response | HTTPException:
        if exc.code is None or exc.code < 400:
            return exc
        response = render_error(exc.code)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(InternalServerError)
    def _internal(exc: InternalServerError) -> Response:
        db.session.rollback()
        return render_error(500)
