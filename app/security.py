"""Response headers set in one place for every page.

No page loads anything from a third party, so the policy allows only our own
origin. Tokens travel in URLs, so the Referer never leaves the site.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, abort, request

CSP = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self'",
        "script-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ]
)


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` as a browser writes an Origin header: lower case, no default port."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing a browser sends for a page of ours
        return "invalid"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "invalid"  # "null", or nothing a browser would send for a page of ours
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address is written in brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a port at all: no origin of ours looks like this
        return "invalid"
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port is None or port == default else f"{scheme}://{host}:{port}"


def sent_from_another_site(public_url: str) -> bool:
    """Whether the browser says this request was started by a page of another site.

    For the public forms, which have no session cookie to protect but whose posts record
    the sender's IP address and browser as evidence of consent: a page elsewhere must not
    be able to post them through a visitor's browser. ``Sec-Fetch-Site: cross-site`` says
    so outright; otherwise, unless the browser says ``same-origin``, an Origin other than
    ``PUBLIC_URL``'s (``null`` included) says so too.
    A request with neither header (an old browser, a script) is not refused here; the
    form's signed token still has to be good.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site == "cross-site":
        return True
    if fetch_site == "same-origin":
        # The browser itself vouches that the form came from the page it posts to (a page
        # cannot set this header), e.g. the service opened as localhost rather than as
        # PUBLIC_URL's 127.0.0.1 during development.
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return _origin_of(origin.strip()) != _origin_of(public_url)


# The one form that takes a large file: the dashboard's contact import.
LARGE_BODY_ENDPOINTS = frozenset({"dashboard.import_upload"})


def _may_send_large_body(app: Flask) -> bool:
    """Whether this request may carry IMPORT_MAX_BYTES: on the import route, and only from a
    logged-in user with the role that route requires (its ``requires`` decorator), so a
    stranger's body is never read past MAX_CONTENT_LENGTH. Reads the session, not the body."""
    if request.endpoint not in LARGE_BODY_ENDPOINTS:
        return False
    from flask_login import current_user

    from .dashboard.auth import ROLE_RANK, session_is_live

    required = getattr(app.view_functions[request.endpoint], "required_role", None)
    if required is None or not session_is_live():  # an idle or expired session is a stranger's
        return False
    return ROLE_RANK.get(current_user.role, -1) >= ROLE_RANK[required]


def register_body_limit(app: Flask) -> None:
    """Refuse an oversized body before anything else looks at the request.

    Werkzeug enforces MAX_CONTENT_LENGTH only when the body is read; checking
    the declared length first means no token check or rate-limit count happens.
    The import's larger limit is for a marketer or admin only: anyone else's body
    stops at MAX_CONTENT_LENGTH, also when it comes chunked with no length declared
    (it is then read raw, up to the limit, before any form parser sees it).
    """

    @app.before_request
    def _too_large() -> None:
        if _may_send_large_body(app):
            request.max_content_length = app.config["IMPORT_MAX_BYTES"]
            if request.content_length is not None and request.content_length > request.max_content_length:
                abort(413)
            return
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None:
            if request.content_length > limit:
                abort(413)
        elif request.environ.get("wsgi.input_terminated"):
            # A chunked body declares no length: read it raw now, so no form parser spools any
            # of a body too large. Werkzeug's read-all stops quietly at the limit, so one byte
            # more is allowed to show whether the body goes past it.
            request.max_content_length = limit + 1
            if len(request.get_data(cache=True, parse_form_data=False)) > limit:
                abort(413)
            request.max_content_length = limit


def _holds_nul(value: object) -> bool:
    """Whether any text in ``value`` (a JSON document's strings and keys, at any depth) holds a NUL."""
    pending = [value]
    while pending:  # a loop, not recursion: a document may nest as deep as the parser allows
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


# Routes whose body is authenticated as the bytes received (a webhook signature): they take
# no multipart body, and refuse one before anything parses it (app/webhooks/routes.py), so
# the guard below must not parse it first.
RAW_BODY_BLUEPRINTS = frozenset({"webhooks"})


def register_input_guard(app: Flask) -> None:
    """Refuse a NUL character in any path part, query, form or JSON value with a 400.

    No field of the service takes one, PostgreSQL cannot store one, and a value
    that holds one is an attack or a broken client; refusing it here means no
    handler meets it.
    """

    @app.before_request
    def _no_nul() -> None:
        # The raw bytes first: a NUL reaches a decoded value only as %00 or as itself.
        if "\x00" in request.path or _may_hold_nul(request.query_string):
            abort(400)
        if request.mimetype == "application/x-www-form-urlencoded":
            # Keep the raw body readable (a webhook signature covers it); bodies are small here.
            if _may_hold_nul(request.get_data(cache=True, parse_form_data=False)):
                abort(400)
        elif request.mimetype == "multipart/form-data" and request.blueprint not in RAW_BODY_BLUEPRINTS:
            if _holds_nul([*request.form.keys(), *request.form.values()]):
                abort(400)
        if request.is_json:
            try:
                document = request.get_json(silent=True)  # parsed once: the handler gets this one
            except RecursionError:  # nested too deep to parse: no handler could read it either
                abort(400)
            body = request.get_data(cache=True)
            if (b"\x00" in body or b"\\u0000" in body) and _holds_nul(document):
                abort(400)


def _may_hold_nul(raw: bytes) -> bool:
    """Whether URL-encoded bytes decode to text holding a NUL: only ``%00`` or a raw NUL does."""
    return b"%00" in raw or b"\x00" in raw


# Where answers hold personal data or carry a token in their URL: staff pages, the API,
# the subscriber's own pages and the providers' webhooks. Matched on the path, not the
# endpoint, so a 404, a refusal or a redirect under these prefixes is covered too.
NO_STORE_PREFIXES = ("/dashboard", "/api/v1", "/manage", "/unsubscribe", "/confirm", "/webhooks")
# The API's description is public and the same for everyone: caches may keep it.
NO_STORE_EXEMPT = frozenset({"/api/v1/openapi.json"})


def _holds_personal_data(path: str) -> bool:
    if path in NO_STORE_EXEMPT:
        return False
    return any(path == prefix or path.startswith(prefix + "/") for prefix in NO_STORE_PREFIXES)


def register_security_headers(app: Flask) -> None:
    @app.after_request
    def _headers(response: Response) -> Response:
        if _holds_personal_data(request.path):
            # Whatever the view set: no browser or shared cache keeps these answers.
            response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if app.config["APP_ENV"] == "production":
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
