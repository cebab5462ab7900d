"""The marketers' dashboard: consent at a glance, subjects, requests, sync health.

Every route needs a logged-in user; what a role may do is checked per route
(viewer reads, marketer acts, admin also manages API tokens).
"""

from flask import Blueprint

from ..i18n import remember_dashboard_language

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
# A language chosen once holds on every dashboard page until changed.
bp.before_request(remember_dashboard_language)

from . import auth, views  # noqa: E402,F401  (routes attach themselves to bp)
