"""The marketers' dashboard: consent at a glance, subjects, requests, sync health.

Every route needs a logged-in user; what a role may do is checked per route
(viewer reads, marketer acts, admin also manages API tokens).
"""

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

from . import auth, views  # noqa: E402,F401  (routes attach themselves to bp)
