"""Self-service data rights: the person's own page and the mailed export and erasure links.

The manage link (in every mail and on the unsubscribe page) names an address
by its keyed hash. It lets the person see what is held, correct their name and
withdraw - as easy as consenting was, with no login and no extra mail. An
export or an erasure needs more: a forwarded newsletter would leak the manage
link, so they go through a fresh link mailed to the address, which works once
and only for ``DATA_LINK_MAX_AGE`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, or_, select

from . import consent, ledger, outbox
from .consent import Facts, get_notice
from .database import unit_of_work
from .extensions import db
from .ledger import Evidence
from .models import DataRequest, Subscription, utcnow
from .notices import Notice

DATA_KINDS = ("export", "erase")


@dataclass(frozen=True)
class Person:
    """Whom a manage link speaks for: an address hash, and the notice whose mail carried it.

    ``email_hash`` is None when the link's subscription is no longer held (its ref then
    names nobody): the page shows that nothing is held.
    """

    email_hash: str | None
    origin: Notice


def person_of(payload: dict[str, Any]) -> Person | None:
    """Whom a manage link speaks for: the address it was mailed to, while that address is held.

    A link token's subscription counts only while it still has the address the link was
    mailed to (the token's tag): after a corrected address, whoever reads the old mailbox
    must not see the new one. A deleted subscription's link finds the same address's newer
    subscription under that notice, if there is one.
    """
    target = consent.token_target(payload)
    if target is None:
        return None
    if target.ref is None:
        return Person(target.email_hash, target.notice)
    if target.tag is None:
        return Person(None, target.notice)
    bounds = consent.tag_range(target.tag)
    hashes = db.session.execute(
        select(Subscription.email_hash).where(
            Subscription.notice == target.notice.slug,
            or_(Subscription.ref == target.ref, Subscription.email_hash.between(bounds["lo"], bounds["hi"])),
        )
    ).scalars()
    held_now = {ehash for ehash in hashes if ehash.startswith(target.tag)}
    return Person(held_now.pop() if len(held_now) == 1 else None, target.notice)


def held(person: Person) -> list[Subscription]:
    """Every subscription held for the address, in a stable order."""
    if person.email_hash is None:
        return []
    return list(
        db.session.execute(
            select(Subscription).where(Subscription.email_hash == person.email_hash).order_by(Subscription.id)
        ).scalars()
    )


def change_name(person: Person, notice_slug: str, name: str | None, facts: Facts) -> bool:
    """The person corrects their name under one notice; False if nothing is held there."""
    sub = next((s for s in held(person) if s.notice == notice_slug), None)
    if sub is None:
        return False
    consent.rectify(sub.ref, name or "", None, facts)
    return True


def withdraw(person: Person, notice_slug: str | None, facts: Facts) -> list[str]:
    """Opt out under one notice, or under every notice holding the address (``None``)."""
    slugs = [s.notice for s in held(person) if s.status != "unsubscribed"]
    if notice_slug is not None:
        slugs = [slug for slug in slugs if slug == notice_slug]
    for slug in slugs:
        consent.unsubscribe({"n": slug, "h": person.email_hash}, facts)
    return slugs


def request_link(person: Person, kind: str, facts: Facts) -> None:
    """Mail a fresh export or erasure link to the address, if anything is held.

    Silent about whether it did: the page answers "check your inbox" either way,
    and a per-address daily limit bounds the mail sent.
    """
    assert kind in DATA_KINDS
    if person.email_hash is None:
        return
    with unit_of_work() as uow:
        subs = (
            uow.session.execute(
                select(Subscription)
                .where(Subscription.email_hash == person.email_hash)
                .order_by(Subscription.id)
                .with_for_update()
            )
            .scalars()
            .all()
        )
        if not subs:
            return
        since = utcnow() - timedelta(hours=24)
        asked = uow.session.execute(
            select(func.count())
            .select_from(DataRequest)
            .where(DataRequest.email_hash == person.email_hash, DataRequest.created_at > since)
        ).scalar_one()
        if asked >= current_app.config["DATA_REQUESTS_PER_ADDRESS"]:
            current_app.logger.info("data request limit reached for one address; no mail sent")
            return
        request = DataRequest(kind=kind, email_hash=person.email_hash)
        uow.session.add(request)
        uow.session.flush()
        # The mail goes out under the notice whose link was used, if it holds the address.
        sub = next((s for s in subs if s.notice == person.origin.slug), subs[0])
        notice = get_notice(sub.notice) or person.origin
        ledger.append(
            uow,
            [
                Evidence.under(
                    "data_request_received",
                    notice,
                    sub.ref,
                    facts.channel,
                    {"kind": kind, "request": request.id},
                    details=facts.details(),
                )
            ],
        )
        outbox.run_after_commit(
            uow,
            "mail",
            notice=sub.notice,
            subscription_ref=sub.ref,
            payload={"template": f"data_{kind}", "request": request.id},
        )


class LinkUsed(Exception):
    """The data link was already used, or its request is unknown."""


def _redeem(uow, payload: dict[str, Any], kind: str) -> DataRequest:  # type: ignore[no-untyped-def]
    request_id = payload.get("i")
    if payload.get("k") != kind or not isinstance(request_id, int) or isinstance(request_id, bool):
        raise LinkUsed
    request = uow.session.execute(
        select(DataRequest).where(DataRequest.id == request_id).with_for_update()
    ).scalar_one_or_none()
    if request is None or request.kind != kind or request.email_hash != payload.get("h") or request.used_at:
        raise LinkUsed
    request.used_at = utcnow()
    return request


def export(payload: dict[str, Any], facts: Facts) -> dict[str, Any] | None:
    """Redeem an export link: the Art. 15/20 document, or None if nothing is held any more."""
    with unit_of_work() as uow:
        request = _redeem(uow, payload, "export")
        ehash = request.email_hash
        subs = uow.session.execute(select(Subscription).where(Subscription.email_hash == ehash)).scalars().all()
        evidence = []
        for sub in subs:
            notice = get_notice(sub.notice)
            if notice is not None:
                evidence.append(
                    Evidence.under("subject_exported", notice, sub.ref, facts.channel, {"request": request.id})
                )
        ledger.append(uow, evidence)
    return consent.export_by_hash(ehash)


def erase(payload: dict[str, Any], facts: Facts) -> list[str]:
    """Redeem an erasure link: full erasure, then a last mail saying so. Answers the controllers."""
    with unit_of_work() as uow:
        request = _redeem(uow, payload, "erase")
        subs = (
            uow.session.execute(select(Subscription).where(Subscription.email_hash == request.email_hash))
            .scalars()
            .all()
        )
        if not subs:
            return []
        first = subs[0]
        notice = get_notice(first.notice)
        controllers = sorted({n.controller["name"] for n in map(get_notice, [s.notice for s in subs]) if n})
        last_mail = {
            "template": "erased",
            "lang": first.lang,
            "controllers": controllers,
            "personal_email": first.email,
            "email_hash": first.email_hash,
        }
        consent.erase_by_hash(request.email_hash, facts, uow)
        # The one mail that may still carry the address: the outbox wipes it once sent.
        outbox.run_after_commit(
            uow, "mail", notice=notice.slug if notice else None, subscription_ref=None, payload=last_mail
        )
    return controllers
