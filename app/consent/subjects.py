"""The person as a data subject, and what staff do about them: status, export, erasure,
rectification, contacts and reviews."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from flask_babel import force_locale, gettext
from sqlalchemy import select

from .. import ledger, provider_sync
from ..addresses import InvalidInput, clean_name, email_hash, normalise_email
from ..database import UnitOfWork, unit_of_work
from ..events import events_of, serialize_event
from ..extensions import db
from ..ledger import Evidence
from ..models import Subscription, Suppression, utcnow
from ..notices import Notice, get_notice, notices
from ..vocabulary import Relationship, values
from .records import (
    Facts,
    delete_personal_data,
    find_subscription,
    iso,
    wipe_after_commit,
)
from .signup import cancel_queued_signups

log = logging.getLogger(__name__)

def erase_subject(email_raw: str, facts: Facts) -> list[str]:
    """Full erasure regardless of notice; returns the notices that held data."""
    return erase_by_hash(email_hash(normalise_email(email_raw)), facts)


def erase_by_hash(ehash: str, facts: Facts, uow: UnitOfWork | None = None) -> list[str]:
    """Full erasure of one address, known by its keyed hash (a signed link carries only that)."""
    if uow is None:
        with unit_of_work() as own:
            return erase_by_hash(ehash, facts, own)
    # The address's sign-ups still in the queue first (held there, under these notices): the
    # update of their jobs waits for a sign-up that is running now to commit, so the read of
    # the subscriptions below finds what it made (PostgreSQL reads anew at each statement),
    # and one not yet run finds its job cancelled and does nothing.
    waiting = cancel_queued_signups(uow, ehash)
    uow.flush()
    subs = (
        uow.session.execute(select(Subscription).where(Subscription.email_hash == ehash).with_for_update())
        .scalars()
        .all()
    )
    evidence = []
    for sub in subs:
        evidence.append(_erasure_requested(sub, facts))
        evidence.append(delete_personal_data(uow, sub, reason="erasure_request"))
    if waiting or subs:
        wipe_after_commit(uow)
    ledger.append(uow, evidence)
    return sorted({sub.notice for sub in subs} | (waiting - {""}))


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
                "since": iso(sub.confirmed_at if sub and sub.status == "subscribed" else None),
                "notice_version": sub.notice_version if sub else None,
            }
        )
    return answers

# --- marketer actions (dashboard) ---------------------------------------------


def rectify(ref: str, name_raw: str | None, email_raw: str | None, facts: Facts) -> list[str]:
    """Correct a subscription's name and/or address; answers the fields changed.

    Raises ``InvalidInput`` for a bad value, an address already held under the
    notice, or an address that has opted out (a typo fix must not re-add one).
    """
    with unit_of_work() as uow:
        sub = _locked(uow, ref)
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
                if find_subscription(uow, notice.slug, new_hash) is not None:
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
            wipe_after_commit(uow)
    return fields


RELATIONSHIPS = values(Relationship)
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
        sub = find_subscription(uow, notice.slug, ehash)
        if sub is None:
            return None
        changed: dict[str, Any] = {}
        if at is not None and (sub.last_contact_at is None or at > sub.last_contact_at):
            sub.last_contact_at = at
            changed["last_contact_at"] = iso(at)
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
        sub = _locked(uow, ref)
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
        sub = _locked(uow, ref)
        if sub is None:
            return False
        ledger.append(uow, [_erasure_requested(sub, facts), delete_personal_data(uow, sub, reason="erasure_request")])
        wipe_after_commit(uow)
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
    notice_of = {sub.ref: sub.notice for sub in subs}
    events = [
        serialize_event(event, detail, notice=notice_of.get(event.subscription_ref or ""))
        for event, detail in events_of(list(notice_of))
    ]
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
                "created_at": iso(sub.created_at),
                "confirmed_at": iso(sub.confirmed_at),
                "unsubscribed_at": iso(sub.unsubscribed_at),
                "last_contact_at": iso(sub.last_contact_at),
                "recipients": [{"name": provider[0], "role": provider[1]}] if provider else [],
                "retention": {"rules_in_days": dict(notice.retention), "summary": summaries[sub.ref]}
                if notice
                else None,
                "opt_out_rule": notice.opt_out_rule if notice else None,
            }
        )
    return {
        "email": subs[0].email,
        "generated_at": iso(utcnow()),
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


def _locked(uow: UnitOfWork, ref: str) -> Subscription | None:
    """The subscription ``ref`` names, locked for the unit of work's change."""
    return uow.session.execute(
        select(Subscription).where(Subscription.ref == ref).with_for_update()
    ).scalar_one_or_none()


def _erasure_requested(sub: Subscription, facts: Facts) -> Evidence:
    notice = get_notice(sub.notice)
    return Evidence(
        type="erasure_requested",
        channel=facts.channel,
        notice=sub.notice,
        notice_version=notice.version if notice else None,
        subscription_ref=sub.ref,
        facts={"actor": facts.actor} if facts.actor else {},
    )
