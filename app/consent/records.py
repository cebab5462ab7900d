"""What every consent path reads and writes: the facts of an action, the subscription a
link speaks for, and the statements built once for the paths every opt-out takes (prepared
for the driver: ``app/fastpath.py`` says when that is used and what it does not do)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from .. import mail, outbox, provider_sync
from ..database import UnitOfWork, wipe_free_space
from ..fastpath import Prepared
from ..ledger import Evidence
from ..models import EventDetail, Subscription, Suppression, utcnow
from ..notices import Notice, get_notice

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

HASH_RE = re.compile(r"^[0-9a-f]{64}$")

@dataclass(frozen=True)
class Facts:
    """Who acted, through which channel; personal parts go outside the chain."""

    channel: str
    ip: str | None = None
    user_agent: str | None = None
    lang: str = "sv"
    actor: str | None = None

    def details(self, **extra: Any) -> dict[str, Any]:
        found = {"ip": self.ip, "user_agent": (self.user_agent or "")[:300] or None, **extra}
        return {k: v for k, v in found.items() if v}


# --- helpers inside a unit of work ------------------------------------------


def find_subscription(uow: UnitOfWork, notice: str, ehash: str) -> Subscription | None:
    return uow.session.execute(_SUBSCRIPTION, {"notice": notice, "h": ehash}).scalar_one_or_none()


# Built once: every sign-up, confirmation and opt-out looks the person up this way.
_SUBSCRIPTION = (
    select(Subscription)
    .where(Subscription.notice == bindparam("notice"), Subscription.email_hash == bindparam("h"))
    .with_for_update()
)


_SUBSCRIPTION_BY_REF = (
    select(Subscription)
    .where(Subscription.notice == bindparam("notice"), Subscription.ref == bindparam("ref"))
    .with_for_update()
)


def subscription_row(uow: UnitOfWork, target: Target) -> Held | None:
    """The subscription as a plain row (locked), for paths that only read it and write by id."""
    slug = target.notice.slug
    if target.ref is None:
        found = uow.run(_SUBSCRIPTION_ROW, {"notice": slug, "h": target.email_hash})
        return found[0] if found else None
    found = uow.run(_SUBSCRIPTION_ROW_BY_REF, {"notice": slug, "ref": target.ref})
    if not found and target.tag is not None:
        # Deleted since the link was mailed: the same address may have signed up again.
        tagged = uow.run(_SUBSCRIPTION_ROWS_BY_TAG, tag_range(target.tag))
        found = [row for row in tagged if row.notice == slug and row.email_hash.startswith(target.tag)]
    return found[0] if len(found) == 1 else None


def target_subscription(uow: UnitOfWork, target: Target) -> Subscription | None:
    if target.ref is not None:
        found = uow.session.execute(_SUBSCRIPTION_BY_REF, {"notice": target.notice.slug, "ref": target.ref})
        return found.scalar_one_or_none()
    return find_subscription(uow, target.notice.slug, target.email_hash or "")


class Held(Protocol):
    """A loaded subscription as the opt-out helpers read it: the ORM ``Subscription``, or its
    plain row (``subscription_row``: a named tuple of every column) where building the object
    costs more than the work. Read only: a write goes through ``write_columns`` (or, for
    the ORM object alone, its attributes)."""

    @property
    def id(self) -> int: ...
    @property
    def ref(self) -> str: ...
    @property
    def notice(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def email_hash(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def confirmed_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime: ...


def write_columns(uow: UnitOfWork, sub: Held, **values: Any) -> None:
    """Change columns of a loaded subscription with one Core UPDATE.

    The object is given the same values as already committed, so the ORM does not
    write them again: its flush (change tracking, a statement built per call)
    costs more than the UPDATE itself on the paths every opt-out takes.
    """
    values["updated_at"] = utcnow()
    uow.send(_UPDATE_SUBSCRIPTION, {"sub_id": sub.id, **values})
    if isinstance(sub, Subscription):
        for key, value in values.items():
            set_committed_value(sub, key, value)


_SUBSCRIPTIONS = Subscription.__table__
# New subscriptions through the driver: a sign-up job's one, an import's thousands a call.
INSERT_SUBSCRIPTION = Prepared(insert(_SUBSCRIPTIONS))
_SUBSCRIPTION_ROW = Prepared(
    select(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.notice == bindparam("notice"), _SUBSCRIPTIONS.c.email_hash == bindparam("h"))
    .with_for_update()
)
_SUBSCRIPTION_ROW_BY_REF = Prepared(
    select(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.notice == bindparam("notice"), _SUBSCRIPTIONS.c.ref == bindparam("ref"))
    .with_for_update()
)
# The address's subscriptions under every notice (a range of the key, which leads with the
# hash); the caller keeps its notice's. With the notice in the condition, SQLite, which keeps
# no statistics, would rather walk all of that notice's subscriptions by ix_subscriptions_notice_id.
_SUBSCRIPTION_ROWS_BY_TAG = Prepared(
    select(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.email_hash >= bindparam("lo"), _SUBSCRIPTIONS.c.email_hash < bindparam("hi"))
    .with_for_update()
)
_UPDATE_SUBSCRIPTION = Prepared(update(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == bindparam("sub_id")))
_DELETE_SUBSCRIPTION = Prepared(delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == bindparam("sub_id")))
_DELETE_DETAILS = Prepared(
    delete(EventDetail.__table__).where(EventDetail.__table__.c.subscription_ref == bindparam("ref"))
)


def suppress(uow: UnitOfWork, notice: str, ehash: str, reason: str) -> bool:
    """Ensure a suppression entry; True when it is new (one statement: an existing one stays)."""
    statement = _INSERT_SUPPRESSION[uow.dialect.name]
    return bool(uow.run(statement, {"notice": notice, "email_hash": ehash, "reason": reason}))


def keep_suppressed(uow: UnitOfWork, notice: str, ehash: str, reason: str) -> None:
    """``suppress`` where nobody reads the answer."""
    uow.send(_INSERT_SUPPRESSION[uow.dialect.name], {"notice": notice, "email_hash": ehash, "reason": reason})


def insert_if_new(table: Any, *key: str) -> dict[str, Prepared]:
    """Per dialect, an insert that writes nothing when ``key`` is taken and answers the new
    row's id only when it wrote one (rowcount differs by driver)."""
    return {
        name: Prepared(dialect.insert(table).on_conflict_do_nothing(index_elements=list(key)).returning(table.c.id))
        for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
    }


# Every opt-out runs these; built once as Core statements (see bench/README.md).
_SUPPRESSIONS = Suppression.__table__
_INSERT_SUPPRESSION = insert_if_new(_SUPPRESSIONS, "notice", "email_hash")


def queue_mail(uow: UnitOfWork, notice: str, ref: str, template: str) -> None:
    """A subscriber mail to the subscription ``ref``, sent once the unit of work has committed."""
    outbox.run_after_commit(uow, "mail", notice=notice, subscription_ref=ref, payload={"template": template})


def delete_personal_data(uow: UnitOfWork, sub: Held, reason: str) -> Evidence:
    """Delete one subscription's personal data; keep suppression and anonymous evidence.

    The caller registers ``wipe_after_commit`` once for the unit of work.
    """
    if sub.confirmed_at is not None:  # only a once-confirmed person was ever sent to the provider
        provider_sync.enqueue_delete(uow, sub)
    uow.send(_DELETE_DETAILS, {"ref": sub.ref})
    keep_suppressed(uow, sub.notice, sub.email_hash, reason)
    outbox.cancel_pending(uow, sub.ref, ("mail",))
    outbox.forget_finished(uow, sub.ref)
    ehash = sub.email_hash
    if isinstance(sub, Subscription):
        uow.session.delete(sub)
    else:
        uow.send(_DELETE_SUBSCRIPTION, {"sub_id": sub.id})
    uow.after_commit(lambda: mail.forget_folder_mail(ehash))
    notice = get_notice(sub.notice)
    return Evidence(
        type="personal_data_deleted",
        channel="system",
        notice=sub.notice,
        notice_version=notice.version if notice else None,
        subscription_ref=sub.ref,
        facts={"reason": reason},
    )


def wipe_after_commit(uow: UnitOfWork) -> None:
    uow.after_commit(wipe_free_space)

def retry_on_insert_race(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Two first sign-ups for one address may race to insert; the loser retries once."""
    try:
        return fn(*args, **kwargs)
    except IntegrityError:
        log.info("concurrent insert detected; retrying once")
        return fn(*args, **kwargs)

@dataclass(frozen=True)
class Target:
    """The one subscription a mailed link speaks for, under one notice.

    A link token names it by ``ref``, with a ``tag`` (the start of the address hash) of
    the address it was mailed to. The ref finds the subscription even after its address
    was corrected; the tag finds the person's newer subscription when the one the link
    was mailed for was deleted (the delete rule) and they signed up again. Links mailed
    before refs were used name the address hash itself.
    """

    notice: Notice
    ref: str | None = None
    tag: str | None = None
    email_hash: str | None = None


REF_RE = re.compile(r"^[0-9a-f]{32}$")
TAG_RE = re.compile(r"^[0-9a-f]{16}$")


def token_target(payload: dict[str, Any]) -> Target | None:
    notice = get_notice(payload.get("n"))
    if notice is None:
        return None
    ref, tag, ehash = payload.get("s"), payload.get("a"), payload.get("h")
    if isinstance(ref, str) and REF_RE.match(ref):
        return Target(notice, ref=ref, tag=tag if isinstance(tag, str) and TAG_RE.match(tag) else None)
    if isinstance(ehash, str) and HASH_RE.match(ehash):
        return Target(notice, email_hash=ehash)
    return None


def tag_range(tag: str) -> dict[str, str]:
    """Bounds of the address hashes that start with ``tag``: a range scan of the
    (email_hash, notice) key in any collation, as hex digits all sort below "g"."""
    return {"lo": tag, "hi": tag + "g"}

def iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


