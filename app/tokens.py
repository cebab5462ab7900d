"""Signed tokens, one signer per purpose.

Each purpose has its own salt, so a token minted for one purpose never verifies
as another. Signing uses ``SECRET_KEY``; tokens signed with a key listed in
``SECRET_KEY_FALLBACKS`` keep verifying until that key is dropped from the list.

Two formats are read:

* **Link tokens** (confirm, unsubscribe, manage), written since links had to
  fit in a ``List-Unsubscribe`` header: ``<notice>~<ref + tag>[~<time>]~<mac>``.
  The ref is the subscription's own random reference (16 bytes); unsubscribe and
  manage tokens add a tag of the address (the first 8 bytes of its keyed hash),
  the confirm token the sign-up's nonce and a timestamp. The MAC is HMAC-SHA256
  truncated to 128 bits. With a 30-character host an unsubscribe URL is about
  114 characters and a confirm URL under 120, so mail headers never need folding.
  The ref names one notice's subscription only; the tag says which address the
  link was mailed to (see ``consent.token_target``).
* **Serialized tokens** (the old link format, and the mailed data links):
  ``URLSafeTimedSerializer`` JSON. Links already sitting in inboxes keep working.
* **Form tokens** (the public sign-up form's hidden field): a serialized token of
  the notice the form was served for, good for ``FORM_MAX_AGE``. The public pages
  set no cookie, so the form proves itself instead of a session: see ``form_token``.

Both are itsdangerous signers: key derivation, rotation and the constant-time
comparison are the library's.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from flask import current_app
from itsdangerous import BadData, BadSignature, SignatureExpired, Signer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

SALTS = {
    "confirm": "newsletter-consent/confirm/v1",
    "unsubscribe": "newsletter-consent/unsubscribe/v1",
    "manage": "newsletter-consent/manage/v1",
    "data": "newsletter-consent/data-request/v1",  # a mailed export or erasure link
    "form": "newsletter-consent/subscribe-form/v1",  # the sign-up form's hidden token
}
LINK_SALTS = {
    "confirm": "newsletter-consent/confirm/v2",
    "unsubscribe": "newsletter-consent/unsubscribe/v2",
    "manage": "newsletter-consent/manage/v2",
}
MAX_TOKEN_LENGTH = 1000
LINK_SEP = "~"  # not in the base64 alphabet, and never in a serialized token
MAC_BYTES = 16
REF_BYTES = 16  # Subscription.ref: a uuid4 as 32 hex digits
NONCE_BYTES = 8  # Subscription.confirm_nonce: 16 hex digits
TAG_BYTES = 8  # the start of the address's keyed hash: 64 bits, so two addresses never share one in practice
# How long a served sign-up form may be sent: time to read the notice, not to keep a token for days.
FORM_MAX_AGE = 2 * 3600


class TokenInvalid(Exception):
    """The token is malformed, tampered with, or meant for another purpose."""


class TokenExpired(Exception):
    """The signature is good but too old; ``payload`` is still trustworthy."""

    def __init__(self, payload: Any) -> None:
        super().__init__("token expired")
        self.payload = payload


class _TruncatedHMAC(HMACAlgorithm):
    """HMAC-SHA256 cut to 128 bits: as strong against forgery as a link needs, half the length."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:MAC_BYTES]


def _keys() -> tuple[str, ...]:
    config = current_app.config
    # itsdangerous signs with the last key and tries all of them, newest first.
    return (*config["SECRET_KEY_FALLBACKS"], config["SECRET_KEY"])


@functools.lru_cache(maxsize=64)
def _built(purpose: str, keys: tuple[str, ...]) -> URLSafeTimedSerializer:
    """One serializer per purpose and key list (building one costs more than a signature check)."""
    return URLSafeTimedSerializer(list(keys), salt=SALTS[purpose])


@functools.lru_cache(maxsize=64)
def _link_signer(purpose: str, keys: tuple[str, ...]) -> Signer:
    kind = TimestampSigner if purpose == "confirm" else Signer
    return kind(
        list(keys),
        salt=LINK_SALTS[purpose],
        sep=LINK_SEP,
        key_derivation="hmac",
        digest_method=hashlib.sha256,
        algorithm=_TruncatedHMAC(hashlib.sha256),
    )


def make(purpose: str, payload: dict[str, Any]) -> str:
    """A serialized token (data links)."""
    return _built(purpose, _keys()).dumps(payload)


def link(purpose: str, notice: str, ref: str, *, nonce: str | None = None, email_hash: str | None = None) -> str:
    """A link token for one notice's subscription: a confirm link carries the sign-up's
    ``nonce``, the others a tag of the ``email_hash`` of the address they are mailed to."""
    if purpose == "confirm":
        if nonce is None or len(nonce) != 2 * NONCE_BYTES:
            raise ValueError("a confirm link carries the sign-up's nonce")
        extra = bytes.fromhex(nonce)
    else:
        if email_hash is None or len(email_hash) < 2 * TAG_BYTES:
            raise ValueError(f"a {purpose} link carries a tag of the address's hash")
        extra = bytes.fromhex(email_hash[: 2 * TAG_BYTES])
    raw = bytes.fromhex(ref) + extra
    value = notice + LINK_SEP + base64_encode(raw).decode("ascii")
    return _link_signer(purpose, _keys()).sign(value).decode("ascii")


def _b64_canonical(part: str) -> bytes | None:
    """The bytes of a base64 part written exactly as we write it, else None. The decoder is
    lenient (it skips stray padding and ignores spare bits), so without this check a changed
    link could still verify."""
    try:
        raw = base64_decode(part)
    except (BadData, ValueError):
        return None
    return raw if base64_encode(raw).decode("ascii") == part else None


def _canonical(token: str) -> bool:
    """A serialized token: three parts, each canonical base64."""
    parts = token.removeprefix(".").split(".")  # a leading "." marks a compressed payload
    return len(parts) == 3 and all(_b64_canonical(part) is not None for part in parts)


def _read_link(purpose: str, token: str, max_age: int | None) -> dict[str, Any]:
    parts = token.split(LINK_SEP)
    if purpose not in LINK_SALTS or len(parts) != (4 if purpose == "confirm" else 3):
        raise TokenInvalid("malformed token")
    if not all(_b64_canonical(part) is not None for part in parts[1:]):
        raise TokenInvalid("malformed token")
    signer = _link_signer(purpose, _keys())
    expired = False
    try:
        if isinstance(signer, TimestampSigner):
            value = signer.unsign(token, max_age=max_age)
        else:
            value = signer.unsign(token)
    except SignatureExpired as exc:
        if not isinstance(exc.payload, bytes):
            raise TokenInvalid("bad signature") from None
        expired, value = True, exc.payload
    except BadSignature:
        raise TokenInvalid("bad signature") from None
    notice, _, body = value.decode("ascii").partition(LINK_SEP)
    raw = _b64_canonical(body) or b""
    want = REF_BYTES + (NONCE_BYTES if purpose == "confirm" else TAG_BYTES)
    if len(raw) != want:
        raise TokenInvalid("unexpected payload")
    payload: dict[str, Any] = {"n": notice, "s": raw[:REF_BYTES].hex()}
    payload["r" if purpose == "confirm" else "a"] = raw[REF_BYTES:].hex()
    if expired:
        raise TokenExpired(payload)
    return payload


def read(purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
    """The payload of a token: ``{"n": notice, "s": ref, "r" | "a": nonce | address tag}`` for a link token,
    or what a serialized token holds (``{"n", "h"}`` for an old link, by address hash)."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise TokenInvalid("malformed token")
    if LINK_SEP in token:
        return _read_link(purpose, token, max_age)
    if not _canonical(token):
        raise TokenInvalid("malformed token")
    serializer = _built(purpose, _keys())
    try:
        payload = serializer.loads(token, max_age=max_age)
    except SignatureExpired as exc:
        try:
            expired = serializer.load_payload(exc.payload) if exc.payload is not None else None
        except BadSignature:
            expired = None
        if not isinstance(expired, dict):
            raise TokenInvalid("malformed token") from None
        raise TokenExpired(expired) from None
    except (BadSignature, UnicodeError, ValueError):
        raise TokenInvalid("bad signature") from None
    if not isinstance(payload, dict):
        raise TokenInvalid("unexpected payload")
    return payload


def form_token(notice: str) -> str:
    """The hidden token of a sign-up form served for ``notice``.

    Signed and dated, bound to the notice, held by no cookie: the form carries it and
    ``check_form_token`` reads it back. It shows that a post comes from a form this
    service served lately for this notice; that the post comes from the person's own
    visit to our page is the job of the Origin check (app/security.py).
    """
    return make("form", {"n": notice})


def check_form_token(token: str | None, notice: str, max_age: int = FORM_MAX_AGE) -> None:
    """Raise ``TokenInvalid`` unless ``token`` is a form token for ``notice``, or
    ``TokenExpired`` when it is one but older than ``max_age`` seconds."""
    payload = read("form", token or "", max_age=max_age)  # raises TokenExpired with a good payload
    if payload.get("n") != notice:
        raise TokenInvalid("a form token of another notice")
