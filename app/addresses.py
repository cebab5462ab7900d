"""Addresses and names as the service takes them in, and the keyed hash of an address.

Every way in (the sign-up form, the manage page, the API, imports, webhooks, the
dashboard's accounts) reads addresses through ``normalise_email``, so one mailbox
has one stored form and one hash however it was written.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Callable

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
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


# The common address in its plainest form: ASCII letters, digits and ``_+-`` in dot-separated
# atoms before the @, a host name of letter-digit-hyphen labels with an alphabetic top-level
# label after it. Deliberately narrower than what email-validator accepts; written with
# explicit ASCII classes and no IGNORECASE, under which [a-z] would match the Kelvin sign.
_PLAIN_ADDRESS = re.compile(
    r"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_SUFFIXES = tuple("." + name for name in _SPECIAL_USE)


def _plain_address(value: str) -> str | None:
    """``normalise_email``'s answer for a plain address, without email-validator; None when the
    address is not plain (email-validator then decides).

    An import of a million contacts validates a million addresses, and email-validator takes
    about 0.1 ms for each (IDNA and Unicode checks a plain ASCII address cannot fail). On what
    this accepts, email-validator answers the same, lower-cased (``tests/test_addresses.py``
    compares the two on generated addresses): the lengths, the reserved names, and no ``--``
    in the host name, which leaves Punycode and RFC 5890's reserved labels to it.
    """
    found = _PLAIN_ADDRESS.fullmatch(value)
    if found is None:
        return None
    local, domain = found.group(1), found.group(2).lower()
    if len(value) > MAX_EMAIL_LENGTH or len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    if domain in _SPECIAL_USE or domain.endswith(_SPECIAL_USE_SUFFIXES):
        return None
    return value.lower()


def normalise_email(raw: str | None) -> str:
    """The address as stored and hashed: validated, IDNA domain, lower case."""
    value = (raw or "").strip()
    if not value:
        raise InvalidInput("email", "required")
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", "invalid")
    plain = _plain_address(value)
    if plain is not None:
        return plain
    return _validated(value)


def _validated(value: str) -> str:
    """``normalise_email`` by email-validator, for a stripped value of at most MAX_EMAIL_LENGTH."""
    if has_control_chars(value):
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
    return hmac.digest(_pepper(), normalised_email.encode("utf-8"), "sha256").hex()


def _pepper() -> bytes:
    return current_app.config["SUPPRESSION_PEPPER"].encode("utf-8")


def email_hasher() -> Callable[[str], str]:
    """``email_hash`` for many addresses (a file's): the HMAC keyed with the running app's pepper
    once, and copied for each address, which costs less than keying it again each time."""
    keyed = hmac.new(_pepper(), digestmod="sha256")

    def hashed(normalised_email: str) -> str:
        one = keyed.copy()
        one.update(normalised_email.encode("utf-8"))
        return one.hexdigest()

    return hashed
