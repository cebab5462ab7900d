"""The marketers' dashboard: consent at a glance, subjects, requests, sync health.

Every route needs a logged-in user; what a role may do is checked per route
(viewer reads, marketer acts, admin also manages API tokens).
"""

from typing import Any

from flask import Blueprint
from flask_babel import format_date, format_datetime

from ..i18n import remember_dashboard_language

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
# A language chosen once holds on every dashboard page until changed.
bp.before_request(remember_dashboard_language)


@bp.context_processor
def _in_words() -> dict[str, Any]:
    """What the dashboard's templates use to show stored values in the reader's language."""
    from . import queries, words

    return {
        "words": words,
        "format_date": format_date,
        "format_datetime": format_datetime,
        "empty_counts": queries.Counts(),
    }

from . import auth, views  # noqa: E402,F401  (routes attach themselves to bp)
