"""Inbound provider events: Mailchimp and APSIS webhooks.

Verify, record, apply the local change, answer: the provider-side work goes to
the outbox. A wrong secret is a 404; nothing here ever answers 410, which
would make Mailchimp disable the webhook for good.
"""

from flask import Blueprint

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

from . import routes  # noqa: E402,F401  (routes attach themselves to bp)
