"""Language choice for pages: Swedish unless the visitor asks for English.

An explicit ``?lang=`` wins (the language switch on every page), then, on the
dashboard only, the choice remembered in its session, then the browser's
Accept-Language; Swedish is the default for these Swedish controllers.

Only the dashboard remembers: it has a session cookie anyway (the login), while
the subscribers' pages set no cookie at all (the notices promise it; they have no
session, see app/dashboard/auth.py).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from babel import Locale
from flask import has_request_context, request, session
from flask_babel import get_locale

from .notices import LANGUAGES, Notice

DEFAULT_LANGUAGE = "sv"
DASHBOARD_PREFIX = "/dashboard"
SESSION_KEY = "lang"


def on_dashboard(path: str) -> bool:
    """Whether ``path`` (a request's path) is one of the dashboard's."""
    return path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")


def _on_dashboard() -> bool:
    return on_dashboard(request.path)


def select_locale() -> Locale:
    """The request's language, as a parsed locale: parsing one costs more than choosing it."""
    return _LOCALES[_select_language()]


def _select_language() -> str:
    if not has_request_context():
        return DEFAULT_LANGUAGE
    asked = request.args.get("lang", "")
    if asked in LANGUAGES:
        return asked
    if _on_dashboard():
        remembered = session.get(SESSION_KEY)
        if remembered in LANGUAGES:
            return remembered
    return request.accept_languages.best_match(LANGUAGES, default=DEFAULT_LANGUAGE) or DEFAULT_LANGUAGE


_LOCALES = {code: Locale.parse(code) for code in {*LANGUAGES, DEFAULT_LANGUAGE}}


def remember_dashboard_language() -> None:
    """Keep a ``?lang=`` choice in the dashboard session (a ``before_request`` hook)."""
    asked = request.args.get("lang", "")
    if asked in LANGUAGES and session.get(SESSION_KEY) != asked:
        session[SESSION_KEY] = asked


def remembered_language() -> str | None:
    """The dashboard's remembered choice, to carry over a session that is being replaced."""
    found = session.get(SESSION_KEY)
    return found if found in LANGUAGES else None


def switch_url(lang: str) -> str:
    """This page in ``lang``: the same path and query, with only ``lang`` replaced."""
    args = [(key, value) for key, value in request.args.items(multi=True) if key != "lang"]
    # One leading slash: a path like ``//host`` must not become a link to another site.
    path = "/" + request.path.lstrip("/")
    return f"{request.script_root}{quote(path)}?{urlencode([*args, ('lang', lang)])}"


def current_language(notice: Notice | None = None) -> str:
    lang = str(get_locale() or DEFAULT_LANGUAGE)
    if notice is not None and lang not in notice.languages:
        return notice.languages[0]
    return lang
