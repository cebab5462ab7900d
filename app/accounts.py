"""Dashboard users and API tokens: creating, checking, revoking.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes,
4 lanes, above OWASP's minimum). An unknown address costs the same hash as a
wrong password, so the login's timing does not tell which accounts exist. API
tokens are random; only their SHA-256 is stored, so a database leak yields no
usable token. Creating and revoking a token are evidence naming who did it:
a token is the CRM's power to opt people in and out.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update

from . import ledger
from .database import unit_of_work
from .extensions import db
from .models import ApiToken, User, utcnow

ROLES = ("admin", "marketer", "viewer")
SCOPES = ("read", "subscribe", "opt_out", "contact")
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "cst_"  # noqa: S105 - a public prefix that makes leaked tokens easy to spot

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why."""


def _normal_email(raw: str) -> str:
    from .consent import InvalidInput, normalise_email

    try:
        return normalise_email(raw)
    except InvalidInput:
        raise AccountError("not a valid e-mail address") from None


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise AccountError("the password is too long")


def create_user(email: str, role: str, password: str) -> User:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    check_password_rules(password)
    address = _normal_email(email)
    with unit_of_work() as uow:
        if uow.session.execute(select(User.id).where(User.email == address)).first():
            raise AccountError("a user with that address exists already")
        user = User(email=address, role=role, password_hash=_hasher.hash(password))
        uow.session.add(user)
    return user


def authenticate(email: str, password: str) -> User | None:
    """The active user with these credentials, or None (same cost either way)."""
    try:
        address = _normal_email(email)
    except AccountError:
        address = ""
    user = db.session.execute(select(User).where(User.email == address)).scalar_one_or_none() if address else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password[:1024])
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    values: dict[str, Any] = {"last_login_at": utcnow()}
    if _hasher.check_needs_rehash(user.password_hash):
        values["password_hash"] = _hasher.hash(password)
    _write_row(User, user.id, values)
    return user


def _write_row(model: Any, row_id: int, values: dict[str, Any]) -> None:
    """Update one row read earlier in the request. In a unit of work of its own, not by
    committing the read: on SQLite a read transaction cannot become a write once another
    writer has committed since it began ("database is locked" at once, whatever the busy
    timeout), and the hash check or the request's work lies between the two."""
    with unit_of_work() as uow:
        uow.session.execute(update(model).where(model.id == row_id).values(**values))


def note_token_use(token: ApiToken, at: datetime) -> None:
    _write_row(ApiToken, token.id, {"last_used_at": at})


@dataclass(frozen=True)
class NewToken:
    id: int
    name: str
    scopes: tuple[str, ...]
    secret: str  # shown once, never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(name: str, scopes: list[str], created_by: str) -> NewToken:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise AccountError("give the token a name of at most 100 characters")
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise AccountError(f"scopes must be among {', '.join(SCOPES)}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ordered = tuple(s for s in SCOPES if s in scopes)
    with unit_of_work() as uow:
        token = ApiToken(name=name, token_hash=_digest(secret), scopes=" ".join(ordered), created_by=created_by)
        uow.session.add(token)
        uow.session.flush()
        token_id = token.id
        facts = {"token": token_id, "scopes": list(ordered), "actor": created_by}
        ledger.append(uow, [_token_evidence("api_token_created", created_by, facts, {"name": name})])
    return NewToken(token_id, name, ordered, secret)


def _token_evidence(
    kind: str, actor: str, facts: dict[str, Any], details: dict[str, Any] | None = None
) -> ledger.Evidence:
    # The name is free text an admin typed (it may name a person), so it sits with
    # the erasable details, not in the chained facts.
    return ledger.Evidence(type=kind, channel="cli" if actor == "cli" else "dashboard", facts=facts, details=details)


def token_for(secret: str) -> ApiToken | None:
    """The live token with this secret, or None."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = db.session.execute(
        select(ApiToken).where(ApiToken.token_hash == _digest(secret), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    return token


def revoke_token(token_id: int, revoked_by: str) -> bool:
    with unit_of_work() as uow:
        token = uow.session.get(ApiToken, token_id, with_for_update=True)
        if token is None or token.revoked_at is not None:
            return False
        token.revoked_at = utcnow()
        facts = {"token": token_id, "actor": revoked_by}
        ledger.append(uow, [_token_evidence("api_token_revoked", revoked_by, facts)])
    return True


def list_tokens() -> list[ApiToken]:
    return list(db.session.execute(select(ApiToken).order_by(ApiToken.id)).scalars())
