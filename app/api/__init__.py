"""The CRM's JSON API, ``/api/v1``: consent status, sign-ups, opt-outs, evidence.

Bearer tokens (``tokens create`` or the dashboard) carry scopes: ``read``,
``subscribe``, ``opt_out``. Only ``/api/v1/openapi.json`` is public.
"""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from . import routes  # noqa: E402,F401  (routes attach themselves to bp)
