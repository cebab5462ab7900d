"""Language choice for pages: Swedish unless the visitor asks for English.

An explicit ``?lang=`` wins (the language switch on every page), then the
browser's Accept-Language; Swedish is the default for these Swedish controllers.
"""

from __future__ import annotations

from flask import has_request_context, request
from flask_babel import get_locale

from .notices import LANGUAGES, Notice

DEFAULT_LANGUAGE = "sv"


def select_locale() -> str:
    if not has_request_context():
        return DEFAULT_LANGUAGE
    asked = request.args.get("lang", "")
    if asked in LANGUAGES:
        return asked
    return request.accept_languages.best_match(LANGUAGES, default=DEFAULT_LANGUAGE) or DEFAULT_LANGUAGE


def current_language(notice: Notice | None = None) -> str:
    lang = str(get_locale() or DEFAULT_LANGUAGE)
    if notice is not None and lang not in notice.languages:
        return notice.languages[0]
    return lang
