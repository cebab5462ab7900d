"""Pages the subscriber sees: sign-up, privacy notice, confirm, unsubscribe, their own page."""

from flask import Blueprint

bp = Blueprint("public", __name__)

from . import manage, privacy, routes  # noqa: E402,F401  (routes attach themselves to bp)
