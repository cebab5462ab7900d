"""The plain-address shortcut answers exactly as email-validator does, or stands aside.

``normalise_email`` takes a plain ASCII address (most of any import) without email-validator.
Here both are given the same values: addresses built near every edge the shortcut's pattern
draws (dots, hyphens, lengths, reserved names, Punycode, digits at the end, characters
outside its classes) and plain ones. Wherever the shortcut answers, email-validator must give
that same address; wherever email-validator refuses, the shortcut must not answer.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from app.addresses import InvalidInput, _plain_address, _validated, email_hash, email_hasher, normalise_email


def slow(value: str) -> str | None:
    try:
        return _validated(value)
    except InvalidInput:
        return None


def agrees(value: str) -> None:
    fast = _plain_address(value)
    if fast is not None:
        assert slow(value) == fast, value


# Pieces chosen at the edges: the pattern's own characters, ones just outside it, a Kelvin
# sign (K under IGNORECASE), full-width and dotless forms, Punycode and reserved labels.
ATOMS = st.sampled_from(
    ["a", "Z", "0", "9", "_", "+", "-", ".", "..", "xn--", "ab--", "--", "K", "ſ", "ａ", "é", "ı", "!", "#", "'",
     "=", "~", " ", '"', "@", "localhost", "local", "test", "arpa", "onion", "invalid", "example", "com", "se", "1",
     "x" * 63, "y" * 64]
)
PIECE = st.lists(ATOMS, min_size=1, max_size=6).map("".join)


@settings(max_examples=4000, deadline=None)
@given(local=PIECE, labels=st.lists(PIECE, min_size=1, max_size=4))
def test_the_shortcut_never_answers_other_than_email_validator(local: str, labels: list[str]) -> None:
    agrees(f"{local}@{'.'.join(labels)}")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09_+-.@xnK~ é"), min_size=3, max_size=40))
def test_any_short_text_of_those_characters_agrees(value: str) -> None:
    agrees(value)


@pytest.mark.parametrize(
    "value",
    [
        "Anna.Svensson@Example.COM",
        "first+tag@mail.munkeby.se",
        "a_b-c@sub-domain.example.org",
        "x" * 64 + "@example.com",
        "a@" + ".".join(["b" * 63] * 3) + ".se",
    ],
)
def test_plain_addresses_take_the_shortcut_and_match(value: str) -> None:
    assert _plain_address(value) is not None
    assert _plain_address(value) == slow(value) == normalise_email(value)


@pytest.mark.parametrize(
    "value",
    [
        "x" * 65 + "@example.com",  # local part over 64
        "a@" + "b" * 64 + ".se",  # a label over 63
        "x" * 63 + "@" + ".".join(["x" * 63] * 3),  # each part within its limit, 255 in all
        "a@mail.localhost",  # reserved
        "a@printer.local",
        "a@shop.onion",
        "a@xn--mnkeby-2ya.se",  # Punycode: email-validator checks it
        "a@ab--cd.se",  # RFC 5890's reserved label form
        "a@example.123",  # numeric top level
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@-example.com",
        "a@example-.com",
        "a@\u212aexample.com",  # the Kelvin sign
        "\"a b\"@example.com",
        "anna@munkebý.se",
    ],
)
def test_anything_else_is_left_to_email_validator(value: str) -> None:
    assert _plain_address(value) is None
    agrees(value)


def test_a_files_hasher_gives_each_address_its_own_keyed_hash() -> None:
    """The import's hasher (keyed once, copied per address) gives what ``email_hash`` gives: the
    HMAC-SHA256 of the address under the pepper, for each address in turn, however many."""
    app = Flask(__name__)
    pepper = "pepper-" + "å" * 40  # longer than SHA-256's block once encoded: the key is hashed first
    app.config["SUPPRESSION_PEPPER"] = pepper
    addresses = ["a@firma.se", "b@firma.se", "a@firma.se", "åsa@exempel.se", ""]
    with app.app_context():
        hasher = email_hasher()
        hashed = [hasher(address) for address in addresses]
        assert hashed == [email_hash(address) for address in addresses]
    expected = [hmac.new(pepper.encode(), a.encode(), hashlib.sha256).hexdigest() for a in addresses]
    assert hashed == expected and hashed[0] == hashed[2] != hashed[1]
