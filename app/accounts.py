"""Dashboard users and API tokens: creating, checking, revoking.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes,
4 lanes, above OWASP's minimum). An unknown address costs the same hash as a
wrong password, so the login's timing does not tell which accounts exist. API
tokens are random; only their SHA-256 is stored, so a database leak yields no
usable token. Creating and revoking a token are evidence naming who did it:
a token is the CRM's power to opt people in and out.

Every user and token belongs to one or more notices' controllers and reaches
the people of those notices only. There is no implicit "all": an account made
without a notice is refused, and one that names none (from before notices were
recorded) sees nothing. Ending a user's sessions (logout, a new password,
deactivation) changes the user's session key, which every request checks.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update

from . import ledger
from .addresses import InvalidInput, normalise_email
from .database import unit_of_work
from .extensions import db
from .models import ApiToken, User, utcnow
from .notices import notices
from .vocabulary import Role, Scope, values

ROLES = values(Role)
SCOPES = values(Scope)
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "cst_"  # noqa: S105 - a public prefix that makes leaked tokens easy to spot

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why."""


def _normal_email(raw: str) -> str:
    try:
        return normalise_email(raw)
    except InvalidInput:
        raise AccountError("not a valid e-mail address") from None


def known_notices() -> frozenset[str]:
    return frozenset(notices())


def check_notices(slugs: list[str] | tuple[str, ...], allowed: frozenset[str] | None = None) -> tuple[str, ...]:
    """The notices an account is for, in a stable order; at least one, each known (and
    among ``allowed``: an admin hands on only the notices they hold themselves)."""
    wanted = {slug.strip() for slug in slugs if slug and slug.strip()}
    if not wanted:
        raise AccountError("name at least one notice (--notice SLUG); an account reaches only its notices")
    known = known_notices() if allowed is None else known_notices() & allowed
    unknown = wanted - known
    if unknown:
        raise AccountError(f"notice must be among {', '.join(sorted(known)) or '(none)'}")
    return tuple(sorted(wanted))


def notices_of(account: User | ApiToken) -> frozenset[str]:
    """The notices an account may reach, among those this service has now."""
    return frozenset(account.notices.split()) & known_notices()


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise AccountError("the password is too long")


def create_user(
    email: str, role: str, password: str, notices: list[str] | tuple[str, ...], allowed: frozenset[str] | None = None
) -> User:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    slugs = check_notices(notices, allowed)
    check_password_rules(password)
    address = _normal_email(email)
    with unit_of_work() as uow:
        if uow.session.execute(select(User.id).where(User.email == address)).first():
            raise AccountError("a user with that address exists already")
        user = User(email=address, role=role, notices=" ".join(slugs), password_hash=_hasher.hash(password))
        uow.session.add(user)
    return user


def _user_by_email(email: str) -> User:
    address = _normal_email(email)
    user = db.session.execute(select(User).where(User.email == address)).scalar_one_or_none()
    if user is None:
        raise AccountError("no user with that address")
    return user


def end_sessions(user_id: int, **changes: Any) -> None:
    """Change the user's row (if asked) and end every live session of theirs: each request
    checks the key its session was made with, and this gives the user a new one."""
    _write_row(User, user_id, {**changes, "session_key": uuid4().hex})


def set_password(email: str, password: str) -> User:
    """A new password for the user; every session made with the old one ends."""
    check_password_rules(password)
    user = _user_by_email(email)
    end_sessions(user.id, password_hash=_hasher.hash(password))
    return user


def set_notices(email: str, notices: list[str] | tuple[str, ...]) -> User:
    """The notices a user works for, replaced; their live sessions end so the change holds at once."""
    slugs = check_notices(notices)
    user = _user_by_email(email)
    end_sessions(user.id, notices=" ".join(slugs))
    db.session.refresh(user)
    return user


def deactivate_user(email: str) -> User:
    """The user can no longer log in, and every live session ends. The row stays: evidence names it."""
    user = _user_by_email(email)
    end_sessions(user.id, active=False)
    return user


def _within(account: User | ApiToken, within: frozenset[str] | None) -> bool:
    """Whether every notice of the account lies ``within`` these (always, when None): an admin
    sees and acts on only the accounts of their own controllers."""
    return within is None or (bool(account.notices) and set(account.notices.split()) <= within)


def list_users(within: frozenset[str]) -> list[User]:
    """The users whose notices all lie ``within`` these."""
    users = db.session.execute(select(User).order_by(User.id)).scalars()
    return [user for user in users if _within(user, within)]


def deactivate_user_within(user_id: int, within: frozenset[str]) -> bool:
    user = db.session.get(User, user_id)
    if user is None or not _within(user, within):
        return False
    end_sessions(user.id, active=False)
    return True


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
    notices: tuple[str, ...]
    secret: str  # shown once, never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(
    name: str,
    scopes: list[str],
    created_by: str,
    notices: list[str] | tuple[str, ...] = (),
    allowed: frozenset[str] | None = None,
) -> NewToken:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise AccountError("give the token a name of at most 100 characters")
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise AccountError(f"scopes must be among {', '.join(SCOPES)}")
    slugs = check_notices(notices, allowed)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ordered = tuple(s for s in SCOPES if s in scopes)
    with unit_of_work() as uow:
        token = ApiToken(
            name=name,
            token_hash=_digest(secret),
            scopes=" ".join(ordered),
            notices=" ".join(slugs),
            created_by=created_by,
        )
        uow.session.add(token)
        uow.session.flush()
        token_id = token.id
        facts = {"token": token_id, "scopes": list(ordered), "notices": list(slugs), "actor": created_by}
        ledger.append(uow, [_token_evidence("api_token_created", created_by, facts, {"name": name})])
    return NewToken(token_id, name, ordered, slugs, secret)


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


def revoke_token(token_id: int, revoked_by: str, within: frozenset[str] | None = None) -> bool:
    """Revoke a live token; with ``within``, only a token whose notices all lie within those."""
    with unit_of_work() as uow:
        token = uow.session.get(ApiToken, token_id, with_for_update=True)
        if token is None or token.revoked_at is not None or not _within(token, within):
            return False
        token.revoked_at = utcnow()
        facts = {"token": token_id, "actor": revoked_by}
        ledger.append(uow, [_token_evidence("api_token_revoked", revoked_by, facts)])
    return True


def list_tokens(within: frozenset[str] | None = None) -> list[ApiToken]:
    """Every token, or (``within``) those whose notices all lie within these notices."""
    tokens = db.session.execute(select(ApiToken).order_by(ApiToken.id)).scalars()
    return [token for token in tokens if _within(token, within)]
