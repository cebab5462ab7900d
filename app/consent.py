"""The consent domain service: the one place notice rules are applied.

Routes, the CLI, and later webhooks and the API call these functions; none of
them touch subscriptions, evidence or suppressions directly. Each function is
one unit of work: the state change, its evidence and its outbox jobs commit
together, and mail goes out only after the commit.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from flask_babel import force_locale, gettext
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from . import ledger, mail, outbox, provider_sync
from .addresses import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, InvalidInput, clean_name, email_hash, normalise_email
from .database import Prepared, UnitOfWork, unit_of_work, wipe_free_space
from .extensions import db
from .ledger import Evidence
from .models import ConsentEvent, EventDetail, OutboxJob, ProviderDelivery, Subscription, Suppression, utcnow
from .notices import Notice, get_notice, notice_for_provider, notices

log = logging.getLogger(__name__)

# Re-exported: callers that take addresses or notices from here keep working.
__all__ = [
    "MAX_EMAIL_LENGTH",
    "MAX_NAME_LENGTH",
    "InvalidInput",
    "clean_name",
    "email_hash",
    "get_notice",
    "normalise_email",
    "notice_for_provider",
    "notices",
]

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
CONFIRMATION_EVENTS = ("signup_requested", "confirmation_resent")


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


def _subscription(uow: UnitOfWork, notice: str, ehash: str) -> Subscription | None:
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


def _subscription_row(uow: UnitOfWork, target: Target) -> Any:
    """The subscription as a plain row (locked), for paths that only read it and write by id."""
    slug = target.notice.slug
    if target.ref is None:
        found = uow.run(_SUBSCRIPTION_ROW, {"notice": slug, "h": target.email_hash})
        return found[0] if found else None
    found = uow.run(_SUBSCRIPTION_ROW_BY_REF, {"notice": slug, "ref": target.ref})
    if not found and target.tag is not None:
        # Deleted since the link was mailed: the same address may have signed up again.
        tagged = uow.run(_SUBSCRIPTION_ROW_BY_TAG, {"notice": slug, **tag_range(target.tag)})
        found = [row for row in tagged if row.email_hash.startswith(target.tag)]
    return found[0] if len(found) == 1 else None


def _target_subscription(uow: UnitOfWork, target: Target) -> Subscription | None:
    if target.ref is not None:
        found = uow.session.execute(_SUBSCRIPTION_BY_REF, {"notice": target.notice.slug, "ref": target.ref})
        return found.scalar_one_or_none()
    return _subscription(uow, target.notice.slug, target.email_hash or "")


# A loaded subscription: the ORM object, or its plain row (a named tuple of its columns)
# where building the object costs more than the work.
Held = Subscription | Any


def _write(uow: UnitOfWork, sub: Held, **values: Any) -> None:
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
_SUBSCRIPTION_ROW_BY_TAG = Prepared(
    select(_SUBSCRIPTIONS)
    .where(
        _SUBSCRIPTIONS.c.notice == bindparam("notice"),
        _SUBSCRIPTIONS.c.email_hash >= bindparam("lo"),
        _SUBSCRIPTIONS.c.email_hash < bindparam("hi"),
    )
    .limit(2)
    .with_for_update()
)
_UPDATE_SUBSCRIPTION = Prepared(update(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == bindparam("sub_id")))
_DELETE_SUBSCRIPTION = Prepared(delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == bindparam("sub_id")))
_DELETE_DETAILS = Prepared(
    delete(EventDetail.__table__).where(EventDetail.__table__.c.subscription_ref == bindparam("ref"))
)


def _suppress(uow: UnitOfWork, notice: str, ehash: str, reason: str) -> bool:
    """Ensure a suppression entry; True when it is new (one statement: an existing one stays)."""
    statement = _INSERT_SUPPRESSION[uow.dialect.name]
    return bool(uow.run(statement, {"notice": notice, "email_hash": ehash, "reason": reason}))


def _keep_suppressed(uow: UnitOfWork, notice: str, ehash: str, reason: str) -> None:
    """``_suppress`` where nobody reads the answer: the statement need not wait for one."""
    uow.send(_INSERT_SUPPRESSION[uow.dialect.name], {"notice": notice, "email_hash": ehash, "reason": reason})


def _insert_if_new(table: Any, *key: str) -> dict[str, Prepared]:
    """Per dialect, an insert that writes nothing when ``key`` is taken and answers the new
    row's id only when it wrote one (rowcount differs by driver)."""
    return {
        name: Prepared(dialect.insert(table).on_conflict_do_nothing(index_elements=list(key)).returning(table.c.id))
        for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
    }


# Every opt-out runs these; built once as Core statements (see bench/README.md).
_SUPPRESSIONS = Suppression.__table__
_INSERT_SUPPRESSION = _insert_if_new(_SUPPRESSIONS, "notice", "email_hash")


def _queue_mail(uow: UnitOfWork, sub: Subscription, template: str) -> None:
    outbox.run_after_commit(uow, "mail", notice=sub.notice, subscription_ref=sub.ref, payload={"template": template})


def _erase_subscription(uow: UnitOfWork, sub: Held, reason: str) -> Evidence:
    """Delete one subscription's personal data; keep suppression and anonymous evidence.

    The caller registers ``_wipe_after_commit`` once for the unit of work.
    """
    if sub.confirmed_at is not None:  # only a once-confirmed person was ever sent to the provider
        provider_sync.enqueue_delete(uow, sub)
    uow.send(_DELETE_DETAILS, {"ref": sub.ref})
    _keep_suppressed(uow, sub.notice, sub.email_hash, reason)
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


def _wipe_after_commit(uow: UnitOfWork) -> None:
    uow.after_commit(wipe_free_space)


def _apply_opt_out(
    uow: UnitOfWork,
    notice: Notice,
    sub: Held,
    facts: Facts,
    reason: str,
    provider_knows: bool = False,
    extra_facts: dict[str, Any] | None = None,
) -> list[Evidence]:
    """The notice's opt-out rule, applied in one place.

    ``provider_knows``: the opt-out came from the provider itself, so under the
    rule ``unsubscribe`` there is nothing to tell it (a delete is still sent).
    ``extra_facts`` join the opt-out's own (where a provider's report came from).
    """
    opted_out = Evidence.under(
        "opted_out",
        notice,
        sub.ref,
        facts.channel,
        facts={"rule": notice.opt_out_rule, "previous_status": sub.status, "reason": reason, **(extra_facts or {})},
        # Under the delete rule the details would be deleted at once; record none.
        details=None if notice.deletes_on_opt_out else facts.details(),
    )
    if notice.deletes_on_opt_out:
        deleted = _erase_subscription(uow, sub, reason=reason)
        _wipe_after_commit(uow)
        return [opted_out, deleted]
    _keep_suppressed(uow, notice.slug, sub.email_hash, reason)
    outbox.cancel_pending(uow, sub.ref, ("mail",))
    _write(uow, sub, status="unsubscribed", unsubscribed_at=utcnow(), confirm_nonce=None)
    if sub.confirmed_at is not None and not provider_knows:
        provider_sync.enqueue_sync(uow, sub, opt_out=True)
    return [opted_out]


def _retry_on_insert_race(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Two first sign-ups for one address may race to insert; the loser retries once."""
    try:
        return fn(*args, **kwargs)
    except IntegrityError:
        log.info("concurrent insert detected; retrying once")
        return fn(*args, **kwargs)


# --- use cases ---------------------------------------------------------------


SIGNUP_JOB = "signup"


def request_subscription(notice: Notice, email_raw: str | None, name_raw: str | None, facts: Facts) -> None:
    """Start double opt-in. Says nothing about whether the address was known, not even by
    the time it takes: only the input is checked here, and the same one write (a ``signup``
    outbox job) is made for every address. What the address's state calls for, a new
    pending subscription, a fresh confirmation mail or nothing, is done by that job, which
    runs right after the answer (or, if this process dies first, in the outbox worker).
    """
    email = normalise_email(email_raw)
    name = clean_name(name_raw) if "name" in notice.fields else None
    if "name" in notice.required and not name:
        raise InvalidInput("name", "required")
    payload = {
        "channel": facts.channel,
        "lang": facts.lang,
        "actor": facts.actor,
        # Wiped by the outbox once the job is done (the subscription then holds what it keeps).
        "personal_email": email,
        "personal_name": name,
        "personal_ip": facts.ip,
        "personal_user_agent": facts.user_agent,
    }
    with unit_of_work() as uow:
        outbox.run_after_commit(uow, SIGNUP_JOB, notice=notice.slug, subscription_ref=None, payload=payload)


@outbox.handler(SIGNUP_JOB, personal_copy=True)
def _signup_job(job: Any) -> None:
    notice = get_notice(job.notice)
    payload = job.payload
    email = payload.get("personal_email")
    if notice is None or not isinstance(email, str):
        raise outbox.PermanentJobError("sign-up job without its notice or address")
    facts = Facts(
        channel=str(payload.get("channel") or "form"),
        ip=payload.get("personal_ip"),
        user_agent=payload.get("personal_user_agent"),
        lang=str(payload.get("lang") or notice.languages[0]),
        actor=payload.get("actor"),
    )
    db.session.rollback()  # the job's own read ends here; the sign-up is a unit of work of its own
    _retry_on_insert_race(_request_subscription, notice, email, payload.get("personal_name"), facts)


def _request_subscription(notice: Notice, email: str, name: str | None, facts: Facts) -> None:
    ehash = email_hash(email)
    with unit_of_work() as uow:
        sub = _subscription(uow, notice.slug, ehash)
        if sub is not None and sub.status == "subscribed":
            return  # nothing to do; the response is the same either way
        if sub is None:
            sub = Subscription(
                notice=notice.slug,
                email=email,
                email_hash=ehash,
                name=name,
                status="pending",
                lang=facts.lang,
                source=f"sign-up form {current_app.config['PUBLIC_URL']}/{notice.slug}/subscribe",
                lawful_basis=notice.lawful_basis,
                notice_version=notice.version,
                confirm_nonce=secrets.token_hex(8),
            )
            uow.session.add(sub)
            uow.session.flush()
        else:
            if sub.status == "unsubscribed":
                sub.status = "pending"
                sub.confirm_nonce = secrets.token_hex(8)
                sub.unsubscribed_at = None
            elif name:
                sub.name = name  # still unconfirmed: the latest request wins
            sub.lang = facts.lang
            sub.notice_version = notice.version
        if not _under_confirmation_limit(uow, sub):
            log.info("confirmation limit reached for one address; no mail sent")
            return
        signup_facts = {"consent_checkbox": True, "fields": list(notice.fields), "lawful_basis": notice.lawful_basis}
        ledger.append(
            uow,
            [
                Evidence.under(
                    "signup_requested",
                    notice,
                    sub.ref,
                    facts.channel,
                    signup_facts,
                    details=facts.details(email=email, name=name),
                )
            ],
        )
        _queue_mail(uow, sub, "confirmation")


def _under_confirmation_limit(uow: UnitOfWork, sub: Subscription) -> bool:
    since = utcnow() - timedelta(hours=24)
    sent = uow.session.execute(
        select(func.count())
        .select_from(ConsentEvent)
        .where(
            ConsentEvent.subscription_ref == sub.ref,
            ConsentEvent.type.in_(CONFIRMATION_EVENTS),
            ConsentEvent.at > since,
        )
    ).scalar_one()
    return sent < current_app.config["CONFIRMATIONS_PER_ADDRESS"]


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
    (notice, email_hash) index in any collation, as hex digits all sort below "g"."""
    return {"lo": tag, "hi": tag + "g"}


def _pending_for(uow: UnitOfWork, target: Target, payload: dict[str, Any]) -> Subscription | None:
    """The subscription a confirmation token still speaks for, if any."""
    sub = _target_subscription(uow, target)
    if sub is None or sub.status != "pending" or sub.confirm_nonce != payload.get("r"):
        return None
    return sub


def confirm(payload: dict[str, Any], facts: Facts) -> str:
    """Confirm a sign-up: 'confirmed', 'already' (harmless repeat) or 'stale'."""
    target = token_target(payload)
    if target is None:
        return "stale"
    notice = target.notice
    with unit_of_work() as uow:
        sub = _target_subscription(uow, target)
        if sub is not None and sub.status == "subscribed":
            return "already"
        sub = _pending_for(uow, target, payload)
        if sub is None:
            return "stale"
        now = utcnow()
        seconds = (now - sub.confirmation_sent_at).total_seconds() if sub.confirmation_sent_at else None
        window = current_app.config["SCANNER_WINDOW_SECONDS"]
        lifted = uow.session.execute(
            delete(Suppression).where(Suppression.notice == notice.slug, Suppression.email_hash == sub.email_hash)
        ).rowcount
        sub.status, sub.confirmed_at, sub.confirm_nonce = "subscribed", now, None
        sub.notice_version = notice.version
        confirm_facts = {
            "seconds_since_sent": round(seconds, 3) if seconds is not None else None,
            "likely_scanner": seconds is not None and seconds < window,
            "suppression_lifted": bool(lifted),
        }
        ledger.append(
            uow,
            [
                Evidence.under(
                    "consent_confirmed", notice, sub.ref, facts.channel, confirm_facts, details=facts.details()
                )
            ],
        )
        provider_sync.enqueue_sync(uow, sub, opt_out=False)
        _queue_mail(uow, sub, "welcome")
    return "confirmed"


def resend_confirmation(payload: dict[str, Any], facts: Facts) -> None:
    """From an expired link's page: send a fresh confirmation if still pending."""
    target = token_target(payload)
    if target is None:
        return
    with unit_of_work() as uow:
        sub = _pending_for(uow, target, payload)
        if sub is None or not _under_confirmation_limit(uow, sub):
            return
        ledger.append(
            uow,
            [Evidence.under("confirmation_resent", target.notice, sub.ref, facts.channel, details=facts.details())],
        )
        _queue_mail(uow, sub, "confirmation")


def unsubscribe(payload: dict[str, Any], facts: Facts) -> bool:
    """Opt out under the notice's rule. Works after deletion; repeats are harmless.

    Returns False when the token names no known notice (a bad link).
    """
    target = token_target(payload)
    if target is None:
        return False
    notice = target.notice
    with unit_of_work(orm=False) as uow:
        sub = _subscription_row(uow, target)
        if sub is None or sub.status == "unsubscribed":
            # Already gone or already out: make sure the address stays suppressed. A link by
            # ref whose subscription is gone names no address; its deletion kept the entry.
            ehash = sub.email_hash if sub is not None else target.email_hash
            if ehash is not None and _suppress(uow, notice.slug, ehash, "opt_out"):
                anonymous = {"rule": notice.opt_out_rule, "previous_status": None, "reason": "opt_out"}
                ledger.append(uow, [Evidence.under("opted_out", notice, None, facts.channel, anonymous)])
            return True
        ledger.append(uow, _apply_opt_out(uow, notice, sub, facts, reason="opt_out"))
    return True


def erase_subject(email_raw: str, facts: Facts) -> list[str]:
    """Full erasure regardless of notice; returns the notices that held data."""
    return erase_by_hash(email_hash(normalise_email(email_raw)), facts)


def erase_by_hash(ehash: str, facts: Facts, uow: UnitOfWork | None = None) -> list[str]:
    """Full erasure of one address, known by its keyed hash (a signed link carries only that)."""
    if uow is None:
        with unit_of_work() as own:
            return erase_by_hash(ehash, facts, own)
    subs = (
        uow.session.execute(select(Subscription).where(Subscription.email_hash == ehash).with_for_update())
        .scalars()
        .all()
    )
    evidence = []
    for sub in subs:
        notice = get_notice(sub.notice)
        evidence.append(
            Evidence(
                type="erasure_requested",
                channel=facts.channel,
                notice=sub.notice,
                notice_version=notice.version if notice else None,
                subscription_ref=sub.ref,
                facts={"actor": facts.actor} if facts.actor else {},
            )
        )
        evidence.append(_erase_subscription(uow, sub, reason="erasure_request"))
    if _cancel_queued_signups(uow, ehash) or subs:
        _wipe_after_commit(uow)
    ledger.append(uow, evidence)
    return sorted(sub.notice for sub in subs)


def _cancel_queued_signups(uow: UnitOfWork, ehash: str) -> bool:
    """A sign-up of the address still waiting in the outbox goes with the erasure: it would
    otherwise hold the address and, once run, mail the person who just asked to be erased."""
    waiting = uow.session.execute(
        select(OutboxJob).where(OutboxJob.kind == SIGNUP_JOB, OutboxJob.state == "pending")
    ).scalars()
    cancelled = False
    for job in waiting:
        address = job.payload.get("personal_email")
        if isinstance(address, str) and email_hash(address) == ehash:
            job.state, job.finished_at, job.last_error, job.payload = "done", utcnow(), "cancelled", {}
            cancelled = True
    return cancelled


# --- events reported by a provider (webhooks, report polling) ---------------

OPT_OUT_EVENTS = {"unsubscribe": "provider_unsubscribe", "complaint": "complaint", "bounce": "bounce"}
# "provider_delete": staff deleted the contact in the provider's own screens (Mailchimp's
# unsubscribe with data[action]=delete). Not the person's opt-out: it is recorded, and
# their consent here is left as it is.
PROVIDER_EVENT_KINDS = (*OPT_OUT_EVENTS, "subscribe", "profile", "address_change", "provider_delete")


@dataclass(frozen=True)
class ProviderEvent:
    """One event a provider reported about a person on one notice's list.

    ``identity`` is what makes this delivery unique (the provider's event id,
    or its whole content); only a keyed hash of it is stored.
    """

    provider: str
    kind: str  # one of PROVIDER_EVENT_KINDS
    notice: Notice
    email: str  # normalised
    identity: str
    channel: str  # "webhook" or "report"
    reason: str | None = None
    name: str | None = None
    new_email: str | None = None
    occurred_at: datetime | None = None


def apply_provider_event(event: ProviderEvent) -> str:
    """Apply what a provider reports, under the notice's rules; once per delivery.

    Answers the outcome: "applied", "duplicate", "conflict" (an address change
    onto an address we already hold), "no_change" (our state already
    says so, as when our own API write echoes back), "stale" (we changed the
    person more recently than a sign-up or profile event happened; opt-outs are
    never stale) or "unknown_address".
    """
    return _retry_on_insert_race(_apply_provider_event, event)


def _apply_provider_event(event: ProviderEvent) -> str:
    key = email_hash(f"{event.provider}|delivery|{event.identity}")
    # An opt-out writes with prepared statements only; the other kinds build ORM objects.
    with unit_of_work(orm=event.kind not in OPT_OUT_EVENTS) as uow:
        # Recording the delivery first is the duplicate check: a repeat finds the key
        # taken and changes nothing (one statement, and no race between check and insert).
        record = {"key": key, "provider": event.provider, "kind": event.kind, "notice": event.notice.slug}
        delivery = uow.run(_RECORD_DELIVERY[uow.dialect.name], {**record, "outcome": ""})
        if not delivery:
            return "duplicate"
        outcome, evidence = _provider_event_effect(uow, event)
        uow.send(_DELIVERY_OUTCOME, {"delivery_id": delivery[0].id, "outcome": outcome})
        ledger.append(uow, evidence)
    log.info("%s %s event for %s: %s", event.provider, event.kind, event.notice.slug, outcome)
    return outcome


_DELIVERIES = ProviderDelivery.__table__
_RECORD_DELIVERY = _insert_if_new(_DELIVERIES, "key")
_DELIVERY_OUTCOME = Prepared(
    update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("delivery_id")).values(outcome=bindparam("outcome"))
)


Effect = tuple[str, list[Evidence]]


@dataclass
class _Reported:
    """A provider's event with what it is about, as every effect below reads it."""

    uow: UnitOfWork
    event: ProviderEvent
    notice: Notice
    ehash: str
    sub: Held | None
    facts: Facts
    source: dict[str, Any]

    def evidence(self, kind: str, ref: str | None, facts: dict[str, Any], details: Any = None) -> Evidence:
        return Evidence.under(kind, self.notice, ref, self.event.channel, facts, details=details)


def _provider_event_effect(uow: UnitOfWork, event: ProviderEvent) -> Effect:
    notice = event.notice
    ehash = email_hash(event.email)
    # An opt-out only reads the subscription and writes by id: its plain row will do.
    if event.kind in OPT_OUT_EVENTS:
        sub = _subscription_row(uow, Target(notice, email_hash=ehash))
    else:
        sub = _subscription(uow, notice.slug, ehash)
    source = {"provider": event.provider, "event": event.kind, "provider_reason": event.reason}
    facts = Facts(channel=event.channel, actor=event.provider)
    return _EFFECTS[event.kind](_Reported(uow, event, notice, ehash, sub, facts, source))


def _contact_deleted(seen: _Reported) -> Effect:
    if seen.sub is None:
        return "unknown_address", []
    return "applied", [seen.evidence("provider_contact_deleted", seen.sub.ref, seen.source)]


def _opted_out(seen: _Reported) -> Effect:
    """An opt-out is honoured however late it arrives, unless the person has confirmed a new
    sign-up here since it happened (a report row read after the webhook, or a delayed echo,
    must not undo that newer consent)."""
    sub, event, notice = seen.sub, seen.event, seen.notice
    if sub is not None and sub.status == "subscribed" and _before(event.occurred_at, sub.confirmed_at):
        return "stale", []
    reason = "complaint" if event.reason == "abuse" else OPT_OUT_EVENTS[event.kind]
    if sub is None or sub.status == "unsubscribed":
        return _kept_out(seen, reason)
    if notice.deletes_on_opt_out and sub.confirmed_at is None:
        # Never confirmed here, yet the provider holds them: it must forget them too.
        provider_sync.enqueue_delete(seen.uow, sub)
    return "applied", _apply_opt_out(
        seen.uow, notice, sub, seen.facts, reason, provider_knows=True, extra_facts=seen.source
    )


def _before(occurred_at: datetime | None, then: datetime | None) -> bool:
    return occurred_at is not None and then is not None and occurred_at < then


def _kept_out(seen: _Reported, reason: str) -> Effect:
    """Someone we do not hold (or hold as unsubscribed) opted out at the provider: keep them
    out, and under "delete" make the provider forget them."""
    sub, notice = seen.sub, seen.notice
    if not _suppress(seen.uow, notice.slug, seen.ehash, reason):
        return "no_change", []
    if sub is None and notice.deletes_on_opt_out:
        provider_sync.enqueue_delete_address(seen.uow, notice.slug, seen.event.email, seen.ehash)
    anonymous = {"rule": notice.opt_out_rule, "previous_status": None, "reason": reason, **seen.source}
    return ("applied" if sub else "unknown_address"), [
        seen.evidence("opted_out", sub.ref if sub else None, anonymous)
    ]


def _stale_change(seen: _Reported) -> bool:
    """A change older than ours (e.g. a delayed "subscribe" from before an opt-out made here);
    with no time at all, the change made here stands. A repeated sign-up is never stale."""
    sub, event = seen.sub, seen.event
    if sub is None or (event.occurred_at is not None and event.occurred_at >= sub.updated_at):
        return False
    return not (event.kind == "subscribe" and sub.status == "subscribed")


def _subscribed(seen: _Reported) -> Effect:
    if _stale_change(seen):
        return "stale", []
    uow, notice, event = seen.uow, seen.notice, seen.event
    sub = seen.sub
    if sub is None:
        suppressed_at = uow.session.execute(
            select(Suppression.created_at).where(
                Suppression.notice == notice.slug, Suppression.email_hash == seen.ehash
            )
        ).scalar_one_or_none()
        if suppressed_at is not None and (event.occurred_at is None or event.occurred_at <= suppressed_at):
            return "stale", []  # a sign-up from before this person opted out and was deleted
        sub = _new_from_provider(seen)
    if sub.status == "subscribed":
        return "no_change", []
    sub.status, sub.confirmed_at, sub.unsubscribed_at, sub.confirm_nonce = "subscribed", utcnow(), None, None
    uow.session.execute(
        delete(Suppression).where(Suppression.notice == notice.slug, Suppression.email_hash == seen.ehash)
    )
    provider_sync.enqueue_sync(uow, sub, opt_out=False)  # carries our unsubscribe link to the provider
    return "applied", [seen.evidence("provider_subscribed", sub.ref, {**seen.source, "double_opt_in_by_us": False})]


def _new_from_provider(seen: _Reported) -> Subscription:
    notice, event = seen.notice, seen.event
    sub = Subscription(
        notice=notice.slug,
        email=event.email,
        email_hash=seen.ehash,
        name=event.name if "name" in notice.fields else None,
        status="pending",
        source=f"{event.provider} sign-up form (not double opt-in by this service)",
        lawful_basis="consent",
        notice_version=notice.version,
    )
    seen.uow.session.add(sub)
    seen.uow.session.flush()
    return sub


def _profile_changed(seen: _Reported) -> Effect:
    if seen.sub is None:
        return "unknown_address", []
    if _stale_change(seen):
        return "stale", []
    sub = seen.sub
    name = seen.event.name if "name" in seen.notice.fields else None
    if not name or name == sub.name:
        return "no_change", []
    sub.name = name
    rectified = {**seen.source, "field": "name"}
    return "applied", [seen.evidence("rectified", sub.ref, rectified, details={"name": name})]


def _address_changed(seen: _Reported) -> Effect:
    if seen.sub is None:
        return "unknown_address", []
    if _stale_change(seen):
        return "stale", []
    uow, notice, event, sub = seen.uow, seen.notice, seen.event, seen.sub
    new_email = event.new_email or ""
    new_hash = email_hash(new_email)
    if new_hash == seen.ehash:
        return "no_change", []
    held = _subscription(uow, notice.slug, new_hash)
    if held is not None:
        # Two records would claim one provider member. Ours are left as they are,
        # and the provider is told the state we hold for the new address again.
        log.warning("%s address change onto an address already held for %s", event.provider, notice.slug)
        if held.confirmed_at is not None:
            provider_sync.enqueue_sync(uow, held, opt_out=held.status != "subscribed")
        return "conflict", []
    sub.email, sub.email_hash = new_email, new_hash
    details = {"old_email": event.email, "new_email": new_email}
    evidence = [seen.evidence("rectified", sub.ref, {**seen.source, "field": "email"}, details=details)]
    new_suppressed = uow.session.execute(
        select(Suppression.id).where(Suppression.notice == notice.slug, Suppression.email_hash == new_hash)
    ).first()
    if new_suppressed and sub.status != "unsubscribed":
        # Whoever holds the new address opted out earlier: that stands.
        evidence += _apply_opt_out(uow, notice, sub, seen.facts, "suppressed_address")
    return "applied", evidence


# What each kind of provider event does: one function each.
_EFFECTS: dict[str, Callable[[_Reported], Effect]] = {
    "provider_delete": _contact_deleted,
    **{kind: _opted_out for kind in OPT_OUT_EVENTS},
    "subscribe": _subscribed,
    "profile": _profile_changed,
    "address_change": _address_changed,
}


# --- the CRM's questions and requests (API) ----------------------------------


def consent_status(email_raw: str, within: Collection[str] | None = None) -> list[dict[str, Any]]:
    """May each controller e-mail this address? One answer per notice (of those ``within``, if given)."""
    email = normalise_email(email_raw)
    ehash = email_hash(email)
    subs = {
        sub.notice: sub
        for sub in db.session.execute(select(Subscription).where(Subscription.email_hash == ehash)).scalars()
    }
    suppressed = set(db.session.execute(select(Suppression.notice).where(Suppression.email_hash == ehash)).scalars())
    answers = []
    for notice in notices().values():
        if within is not None and notice.slug not in within:
            continue
        sub = subs.get(notice.slug)
        may = sub is not None and sub.status == "subscribed" and notice.slug not in suppressed
        answers.append(
            {
                "notice": notice.slug,
                "controller": notice.controller["name"],
                "may_email": may,
                "status": sub.status if sub else ("suppressed" if notice.slug in suppressed else "unknown"),
                "lawful_basis": sub.lawful_basis if sub else None,
                "since": _iso(sub.confirmed_at if sub and sub.status == "subscribed" else None),
                "notice_version": sub.notice_version if sub else None,
            }
        )
    return answers


def opt_out_address(notice: Notice, email_raw: str, facts: Facts) -> str:
    """An opt-out reported by address (a request by phone, say), under the notice's rule.

    Answers "opted_out", or "already_opted_out" when nothing was left to do.
    An address we do not hold is suppressed, so it is never added later.
    """
    email = normalise_email(email_raw)
    ehash = email_hash(email)
    with unit_of_work() as uow:
        sub = _subscription(uow, notice.slug, ehash)
        if sub is None or sub.status == "unsubscribed":
            if not _suppress(uow, notice.slug, ehash, "opt_out"):
                return "already_opted_out"
            anonymous = {
                "rule": notice.opt_out_rule,
                "previous_status": None,
                "reason": "opt_out",
                "actor": facts.actor,
            }
            ledger.append(
                uow, [Evidence.under("opted_out", notice, sub.ref if sub else None, facts.channel, anonymous)]
            )
            return "opted_out"
        evidence = _apply_opt_out(uow, notice, sub, facts, reason="opt_out")
        first = evidence[0]
        evidence[0] = Evidence.under(
            first.type,
            notice,
            first.subscription_ref,
            first.channel,
            {**first.facts, "actor": facts.actor},
            first.details,
        )
        ledger.append(uow, evidence)
    return "opted_out"


# --- marketer actions (dashboard) ---------------------------------------------


def rectify(ref: str, name_raw: str | None, email_raw: str | None, facts: Facts) -> list[str]:
    """Correct a subscription's name and/or address; answers the fields changed.

    Raises ``InvalidInput`` for a bad value, an address already held under the
    notice, or an address that has opted out (a typo fix must not re-add one).
    """
    with unit_of_work() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.ref == ref).with_for_update()
        ).scalar_one_or_none()
        if sub is None:
            raise InvalidInput("ref", "unknown")
        notice = get_notice(sub.notice)
        if notice is None:
            raise InvalidInput("ref", "unknown")
        changed: dict[str, Any] = {}
        if name_raw is not None and "name" in notice.fields:
            name = clean_name(name_raw)
            if name != sub.name:
                changed["name"] = name
        if email_raw:
            email = normalise_email(email_raw)
            new_hash = email_hash(email)
            if new_hash != sub.email_hash:
                if _subscription(uow, notice.slug, new_hash) is not None:
                    raise InvalidInput("email", "held")
                if uow.session.execute(
                    select(Suppression.id).where(Suppression.notice == notice.slug, Suppression.email_hash == new_hash)
                ).first():
                    raise InvalidInput("email", "suppressed")
                changed["email"] = email
                details_old = {"old_email": sub.email}
                old_hash = sub.email_hash
                sub.email, sub.email_hash = email, new_hash
        if not changed:
            return []
        if "name" in changed:
            sub.name = changed["name"]
        details = {**changed, **(details_old if "email" in changed else {})}
        fields = sorted(changed)
        ledger.append(
            uow,
            [
                Evidence.under(
                    "rectified",
                    notice,
                    sub.ref,
                    facts.channel,
                    {"fields": fields, "actor": facts.actor},
                    details=details,
                )
            ],
        )
        if sub.status == "subscribed":
            if "email" in changed:
                # The provider knows the person by the old address: it forgets that
                # one, and hears of the new one through the next sync.
                provider_sync.enqueue_delete_address(uow, notice.slug, details_old["old_email"], old_hash)
            provider_sync.enqueue_sync(uow, sub, opt_out=False)
        if "email" in changed:
            _wipe_after_commit(uow)
    return fields


RELATIONSHIPS = ("subscriber", "prospect", "customer")
EARLIEST_CONTACT = datetime(2000, 1, 1)


def record_contact(
    notice: Notice, email_raw: str, at: datetime | None, relationship: str | None, facts: Facts
) -> Subscription | None:
    """A dialog with the person (a call, a meeting, a reply), and/or their relationship.

    ``last_contact_at`` only moves forward; it starts the prospect-with-dialog
    retention period. None when the address is not held under the notice.
    """
    if relationship is not None and relationship not in RELATIONSHIPS:
        raise InvalidInput("relationship", "invalid")
    now = utcnow()
    if at is not None and at > now + timedelta(minutes=5):
        raise InvalidInput("last_contact_at", "future")
    if at is not None and at < EARLIEST_CONTACT:  # a typo such as 0202 would purge the contact at once
        raise InvalidInput("last_contact_at", "invalid")
    ehash = email_hash(normalise_email(email_raw))
    with unit_of_work() as uow:
        sub = _subscription(uow, notice.slug, ehash)
        if sub is None:
            return None
        changed: dict[str, Any] = {}
        if at is not None and (sub.last_contact_at is None or at > sub.last_contact_at):
            sub.last_contact_at = at
            changed["last_contact_at"] = _iso(at)
        if relationship is not None and relationship != sub.relationship:
            sub.relationship = relationship
            changed["relationship"] = relationship
        if changed:
            ledger.append(
                uow,
                [Evidence.under("contact_recorded", notice, sub.ref, facts.channel, {**changed, "actor": facts.actor})],
            )
        uow.session.flush()
        uow.session.expunge(sub)
    return sub


def mark_reviewed(ref: str, facts: Facts) -> bool:
    """A customer's periodic review is done (the retention rule ``customer_review_days``)."""
    with unit_of_work() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.ref == ref).with_for_update()
        ).scalar_one_or_none()
        notice = get_notice(sub.notice) if sub else None
        if sub is None or notice is None:
            return False
        sub.reviewed_at = utcnow()
        ledger.append(
            uow, [Evidence.under("customer_reviewed", notice, sub.ref, facts.channel, {"actor": facts.actor})]
        )
    return True


def erase_subscription(ref: str, facts: Facts) -> bool:
    """Erase one subscription (one controller's data about the person)."""
    with unit_of_work() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.ref == ref).with_for_update()
        ).scalar_one_or_none()
        if sub is None:
            return False
        notice = get_notice(sub.notice)
        requested = Evidence(
            type="erasure_requested",
            channel=facts.channel,
            notice=sub.notice,
            notice_version=notice.version if notice else None,
            subscription_ref=sub.ref,
            facts={"actor": facts.actor} if facts.actor else {},
        )
        ledger.append(uow, [requested, _erase_subscription(uow, sub, reason="erasure_request")])
        _wipe_after_commit(uow)
    return True


def record_action(kind: str, ref: str | None, notice_slug: str | None, facts: Facts, **extra: Any) -> None:
    """Evidence of a marketer's action that changes no consent (an export, a retry)."""
    notice = get_notice(notice_slug) if notice_slug else None
    with unit_of_work() as uow:
        ledger.append(
            uow,
            [
                Evidence(
                    type=kind,
                    channel=facts.channel,
                    notice=notice_slug,
                    notice_version=notice.version if notice else None,
                    subscription_ref=ref,
                    facts={"actor": facts.actor, **extra},
                )
            ],
        )


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


PROVIDERS = {
    "mailchimp": ("Mailchimp (Intuit Inc.)", "processor: sends the newsletter"),
    "apsis": ("APSIS International AB", "processor: sends the newsletter"),
}


def export_subject(email_raw: str, notices: Collection[str] | None = None) -> dict[str, Any] | None:
    """All we hold about one address (GDPR Art. 15/20) under every notice or those given, or None if nothing."""
    return export_by_hash(email_hash(normalise_email(email_raw)), notices)


def export_by_hash(ehash: str, notices: Collection[str] | None = None) -> dict[str, Any] | None:
    """The access and portability document for one address, known by its keyed hash.

    Per subscription: the data, purpose, lawful basis, source (Art. 15(1)(g)),
    recipients, retention and the controller; then every evidence event with
    the notice version it happened under.
    """
    query = select(Subscription).where(Subscription.email_hash == ehash)
    if notices is not None:
        query = query.where(Subscription.notice.in_(list(notices)))
    subs = db.session.execute(query.order_by(Subscription.id)).scalars().all()
    if not subs:
        return None
    refs = [sub.ref for sub in subs]
    rows = db.session.execute(
        select(ConsentEvent, EventDetail)
        .outerjoin(EventDetail, EventDetail.seq == ConsentEvent.seq)
        .where(ConsentEvent.subscription_ref.in_(refs))
        .order_by(ConsentEvent.seq)
    ).all()
    notice_of = {sub.ref: sub.notice for sub in subs}
    events = []
    for event, detail in rows:
        item: dict[str, Any] = {
            "type": event.type,
            "at": event.at.isoformat(timespec="microseconds") + "Z",
            "notice": notice_of.get(event.subscription_ref, event.notice),
            "notice_version": event.notice_version,
            "channel": event.channel,
            "seq": event.seq,
            "facts": ledger_facts(event),
        }
        if detail is not None:
            item["details"] = ledger_details(detail)
        events.append(item)
    with force_locale("en"):  # the document is in English, whatever the page's language
        summaries = {sub.ref: retention_summary(n, sub) for sub in subs if (n := get_notice(sub.notice)) is not None}
    public_url = current_app.config["PUBLIC_URL"]
    subscriptions = []
    for sub in subs:
        notice = get_notice(sub.notice)
        provider = PROVIDERS.get(notice.provider["kind"]) if notice else None
        subscriptions.append(
            {
                "notice": sub.notice,
                "controller": notice.controller["name"] if notice else None,
                "controller_contact": dict(notice.controller) if notice else None,
                "status": sub.status,
                "data": {"email": sub.email, "name": sub.name, "language": sub.lang},
                "email": sub.email,
                "name": sub.name,
                "purpose": notice.purpose if notice else None,
                "source": sub.source,
                "lawful_basis": sub.lawful_basis,
                "notice_version": sub.notice_version,
                "privacy_notice": f"{public_url}/{sub.notice}/privacy?version={sub.notice_version}",
                "language": sub.lang,
                "relationship": sub.relationship,
                "created_at": _iso(sub.created_at),
                "confirmed_at": _iso(sub.confirmed_at),
                "unsubscribed_at": _iso(sub.unsubscribed_at),
                "last_contact_at": _iso(sub.last_contact_at),
                "recipients": [{"name": provider[0], "role": provider[1]}] if provider else [],
                "retention": {"rules_in_days": dict(notice.retention), "summary": summaries[sub.ref]}
                if notice
                else None,
                "opt_out_rule": notice.opt_out_rule if notice else None,
            }
        )
    return {
        "email": subs[0].email,
        "generated_at": _iso(utcnow()),
        "subscriptions": subscriptions,
        "events": events,
        "rights": (
            "You may access, rectify and erase your data, withdraw consent at any time, object to "
            "processing on legitimate interest, and take your data elsewhere (this file)."
        ),
        "complaints": "Integritetsskyddsmyndigheten (IMY), https://www.imy.se",
    }


def retention_summary(notice: Notice, sub: Subscription) -> str:
    """How long this subscription's data is kept, in words, from the notice's rules (current language)."""
    r = notice.retention
    if sub.status == "pending" and "unconfirmed_days" in r:
        return gettext(
            "an unconfirmed sign-up is deleted %(days)s days after the last confirmation mail",
            days=r["unconfirmed_days"],
        )
    if notice.deletes_on_opt_out:
        return gettext("kept until you unsubscribe; then deleted")
    if sub.status == "unsubscribed" and "unsubscribed_days" in r:
        return gettext(
            "kept as unsubscribed for %(days)s days after the opt-out, then deleted", days=r["unsubscribed_days"]
        )
    if sub.relationship == "customer" and "customer_review_days" in r:
        return gettext("as a customer: reviewed every %(days)s days", days=r["customer_review_days"])
    if sub.relationship == "prospect" and "prospect_without_dialog_days" in r and "prospect_with_dialog_days" in r:
        return gettext(
            "as a prospect: %(added)s days from being added without dialog, %(contact)s days from the last contact",
            added=r["prospect_without_dialog_days"],
            contact=r["prospect_with_dialog_days"],
        )
    return gettext("kept while you subscribe")


def ledger_facts(event: ConsentEvent) -> dict[str, Any]:
    return json.loads(event.facts or "{}")


def ledger_details(detail: EventDetail) -> dict[str, Any]:
    return json.loads(detail.details)
