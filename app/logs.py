"""Logging: to stderr (commands keep stdout for their data), as text or one JSON object a line.

Every record made while a request is served carries that request's id (``X-Request-ID``
from the proxy when it is a plain token, a new one otherwise), and each request ends with
one ``request finished`` line naming its route *template* (``/unsubscribe/<token>``), never
its path: paths carry link tokens and webhook secrets.

What never reaches a log line, at any level: an address, a name, a token or a secret. Code
logs ids, slugs, counts and class names; ``tests/log_audit.py`` reads every line the test
suite produces and fails the run on any of them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

log = logging.getLogger(__name__)

# nginx's $request_id is 32 hex characters; anything else plain and short is kept too.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Probes and scrapes come every few seconds; their lines would drown the ones that matter.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestContext(logging.Filter):
    """Puts the current request's id (or None) on every record, so both formats can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and what the record carries.

    An exception is given by its class and the frames it passed through (file, line,
    function), not by its message: messages of exceptions raised by libraries and providers
    may quote what they were given, an address included.
    """

    FIELDS = ("request_id", "route", "method", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            kind, _exc, tb = record.exc_info
            entry["exc_type"] = kind.__name__
            entry["exc_frames"] = [
                f"{frame.filename}:{frame.lineno} {frame.name}" for frame in traceback.extract_tb(tb)
            ]
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable line, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        # Another handler may have cached the exception's full text on the record; never reuse it.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei: Any) -> str:
        # As in JSON: the frames and the class, not the message (it may quote personal data).
        kind, _exc, tb = ei
        frames = "".join(traceback.format_list(traceback.extract_tb(tb)))
        return f"Traceback (most recent call last):\n{frames}{kind.__name__} (message not logged)"


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_stderr(log_format: str) -> None:
    """Send the root logger to stderr once per process, at INFO, in ``log_format``."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_consent_service", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._consent_service = True  # type: ignore[attr-defined]
        handler.addFilter(RequestContext())
        root.addHandler(handler)
    handler.setFormatter(formatter_for(log_format))
    root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The development server logs each request line, path and all (tokens ride in paths);
    # the "request finished" line says the same with the route's template.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Flask-Limiter names the client's IP address in each refusal it logs at INFO; the
    # "request finished" line already shows the 429, and an IP address is personal data.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)


def configure(app: Flask) -> None:
    """The validated ``LOG_FORMAT`` for this process, and a line per request."""
    configure_stderr(app.config["LOG_FORMAT"])
    register_request_log(app)


def gunicorn_logconfig(log_format: str | None) -> dict[str, Any]:
    """Gunicorn's ``logconfig_dict``: its own lines (the master's too) in the service's format.

    Its access log is left off: the app's "request finished" line carries the route
    template where an access line would carry the path, and paths carry tokens.
    """
    formatter = "app.logs.JsonFormatter" if (log_format or "").strip().lower() == "json" else "app.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": formatter}},
        "filters": {"request": {"()": "app.logs.RequestContext"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "service",
                "filters": ["request"],
            }
        },
        # The app adds its own stderr handler to the root logger in each worker.
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def register_request_log(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        g.request_id = request_id
        g.request_started = time.perf_counter()
        g.request_id_token = _request_id.set(request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:
            return response
        response.headers["X-Request-ID"] = request_id
        route = request.url_rule.rule if request.url_rule is not None else "-"
        duration_ms = round((time.perf_counter() - g.request_started) * 1000, 1)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        log.log(
            level,
            "request finished: %s %s %s in %.1f ms",
            request.method,
            route,
            response.status_code,
            duration_ms,
            extra={"route": route, "method": request.method, "status": response.status_code,
                   "duration_ms": duration_ms},
        )
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:  # set in another context (a copied one): it ends with that context
                pass
