"""Pages the subscriber sees: sign-up, privacy notice, confirm, unsubscribe."""

from flask import Blueprint

bp = Blueprint("public", __name__)

from . import routes  # noqa: E402,F401  (routes attach themselves to bp)
