"""Addresses and names as the service takes them in, and the keyed hash of an address.

Every way in (the sign-up form, the manage page, the API, imports, webhooks, the
dashboard's accounts) reads addresses through ``normalise_email``, so one mailbox
has one stored form and one hash however it was written.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from email_validator import EmailNotValidError, validate_email
from flask import current_app

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 100


class InvalidInput(ValueError):
    """User input that cannot be accepted; ``field`` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def has_control_chars(value: str) -> bool:
    # A printable string holds no character of category C: the quick answer for nearly every value.
    return not value.isprintable() and any(unicodedata.category(ch).startswith("C") for ch in value)


def normalise_email(raw: str | None) -> str:
    """The address as stored and hashed: validated, IDNA domain, lower case."""
    value = (raw or "").strip()
    if not value:
        raise InvalidInput("email", "required")
    if len(value) > MAX_EMAIL_LENGTH or has_control_chars(value):
        raise InvalidInput("email", "invalid")
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise InvalidInput("email", "invalid") from None
    # Always the IDNA (ASCII) domain, so one mailbox has one hash however written.
    normalised = f"{checked.local_part}@{checked.ascii_domain}".lower()
    if len(normalised) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", "invalid")
    return normalised


def clean_name(raw: str | None) -> str | None:
    raw = raw or ""
    # Reject line breaks and other control characters outright (header
    # injection attempts), rather than folding them into spaces.
    if has_control_chars(raw):
        raise InvalidInput("name", "invalid")
    value = " ".join(raw.split())
    if not value:
        return None
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput("name", "invalid")
    return value


def email_hash(normalised_email: str) -> str:
    """Keyed hash of an address: the suppression key, stable across key rotation."""
    pepper = current_app.config["SUPPRESSION_PEPPER"].encode("utf-8")
    return hmac.new(pepper, normalised_email.encode("utf-8"), hashlib.sha256).hexdigest()
