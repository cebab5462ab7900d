"""Signed tokens, one serializer per purpose.

Each purpose has its own salt, so a token minted for one purpose never verifies
as another. All use ``URLSafeTimedSerializer``: the untimed serializer would
accept a ``max_age`` argument and silently ignore it. Signing uses
``SECRET_KEY``; tokens signed with a key listed in ``SECRET_KEY_FALLBACKS``
keep verifying until that key is dropped from the list.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import current_app
from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

SALTS = {
    "confirm": "newsletter-consent/confirm/v1",
    "unsubscribe": "newsletter-consent/unsubscribe/v1",
    "manage": "newsletter-consent/manage/v1",
    "data": "newsletter-consent/data-request/v1",  # a mailed export or erasure link
}
MAX_TOKEN_LENGTH = 1000


class TokenInvalid(Exception):
    """The token is malformed, tampered with, or meant for another purpose."""


class TokenExpired(Exception):
    """The signature is good but too old; ``payload`` is still trustworthy."""

    def __init__(self, payload: Any) -> None:
        super().__init__("token expired")
        self.payload = payload


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    config = current_app.config
    # itsdangerous signs with the last key and tries all of them, newest first.
    return _built(purpose, (*config["SECRET_KEY_FALLBACKS"], config["SECRET_KEY"]))


@functools.lru_cache(maxsize=64)
def _built(purpose: str, keys: tuple[str, ...]) -> URLSafeTimedSerializer:
    """One serializer per purpose and key list (building one costs more than a signature check)."""
    return URLSafeTimedSerializer(list(keys), salt=SALTS[purpose])


def make(purpose: str, payload: dict[str, Any]) -> str:
    return _serializer(purpose).dumps(payload)


def _canonical(token: str) -> bool:
    """Each part is base64 exactly as we write it. The decoder is lenient (it skips stray
    padding and ignores spare bits), so without this a changed link could still verify."""
    parts = token.removeprefix(".").split(".")  # a leading "." marks a compressed payload
    try:
        return len(parts) == 3 and all(base64_encode(base64_decode(part)).decode("ascii") == part for part in parts)
    except (BadData, UnicodeError, ValueError):
        return False


def read(purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
    if not token or len(token) > MAX_TOKEN_LENGTH or not _canonical(token):
        raise TokenInvalid("malformed token")
    serializer = _serializer(purpose)
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
