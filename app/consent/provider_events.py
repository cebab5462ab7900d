"""Events a provider reports about a person (webhooks, report polling), applied once each."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from .. import ledger, provider_sync
from ..addresses import email_hash
from ..database import UnitOfWork, unit_of_work
from ..fastpath import Prepared
from ..ledger import Evidence
from ..models import ProviderDelivery, Subscription, Suppression, utcnow
from ..notices import Notice
from .opt_out import apply_opt_out
from .records import (
    Facts,
    Held,
    Target,
    find_subscription,
    insert_if_new,
    retry_on_insert_race,
    subscription_row,
    suppress,
)

log = logging.getLogger(__name__)

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
    return retry_on_insert_race(_apply_provider_event, event)


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
_RECORD_DELIVERY = insert_if_new(_DELIVERIES, "key")
_DELIVERY_OUTCOME = Prepared(
    update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("delivery_id")).values(outcome=bindparam("outcome"))
)


Effect = tuple[str, list[Evidence]]


@dataclass
class _Reported:
    """A provider's event with what it is about, as every effect below reads it. ``sub`` is
    the plain row for an opt-out (it reads the row and writes by id, on the fast path) and
    the ORM object for every other kind, whose effect changes its attributes."""

    uow: UnitOfWork
    event: ProviderEvent
    notice: Notice
    ehash: str
    sub: Held | None
    facts: Facts
    source: dict[str, Any]

    def evidence(self, kind: str, ref: str | None, facts: dict[str, Any], details: Any = None) -> Evidence:
        return Evidence.under(kind, self.notice, ref, self.event.channel, facts, details=details)

    @property
    def loaded(self) -> Subscription | None:
        """``sub`` as the ORM object the kinds that change a subscription load."""
        assert self.sub is None or isinstance(self.sub, Subscription)
        return self.sub


def _provider_event_effect(uow: UnitOfWork, event: ProviderEvent) -> Effect:
    notice = event.notice
    ehash = email_hash(event.email)
    # An opt-out only reads the subscription and writes by id: its plain row will do.
    if event.kind in OPT_OUT_EVENTS:
        sub = subscription_row(uow, Target(notice, email_hash=ehash))
    else:
        sub = find_subscription(uow, notice.slug, ehash)
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
    return "applied", apply_opt_out(
        seen.uow, notice, sub, seen.facts, reason, provider_knows=True, extra_facts=seen.source
    )


def _before(occurred_at: datetime | None, then: datetime | None) -> bool:
    return occurred_at is not None and then is not None and occurred_at < then


def _kept_out(seen: _Reported, reason: str) -> Effect:
    """Someone we do not hold (or hold as unsubscribed) opted out at the provider: keep them
    out, and under "delete" make the provider forget them."""
    sub, notice = seen.sub, seen.notice
    if not suppress(seen.uow, notice.slug, seen.ehash, reason):
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
    sub = seen.loaded
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
    sub = seen.loaded
    if sub is None:
        return "unknown_address", []
    if _stale_change(seen):
        return "stale", []
    name = seen.event.name if "name" in seen.notice.fields else None
    if not name or name == sub.name:
        return "no_change", []
    sub.name = name
    rectified = {**seen.source, "field": "name"}
    return "applied", [seen.evidence("rectified", sub.ref, rectified, details={"name": name})]


def _address_changed(seen: _Reported) -> Effect:
    uow, notice, event, sub = seen.uow, seen.notice, seen.event, seen.loaded
    if sub is None:
        return "unknown_address", []
    if _stale_change(seen):
        return "stale", []
    new_email = event.new_email or ""
    new_hash = email_hash(new_email)
    if new_hash == seen.ehash:
        return "no_change", []
    held = find_subscription(uow, notice.slug, new_hash)
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
        evidence += apply_opt_out(uow, notice, sub, seen.facts, "suppressed_address")
    return "applied", evidence


# What each kind of provider event does: one function each.
_EFFECTS: dict[str, Callable[[_Reported], Effect]] = {
    "provider_delete": _contact_deleted,
    **{kind: _opted_out for kind in OPT_OUT_EVENTS},
    "subscribe": _subscribed,
    "profile": _profile_changed,
    "address_change": _address_changed,
}
