"""Self-service data rights: the person's own page and the mailed export and erasure links.

The manage link (in every mail and on the unsubscribe page) was mailed for one
notice, and shows and acts on that notice's data only: a newsletter of one
controller never opens what another controller holds. It lets the person see
what is held there, correct their name and withdraw - as easy as consenting
was, with no login and no extra mail. An export or an erasure needs more: a
forwarded newsletter would leak the manage link, so they go through a fresh link
mailed to the address, which works once and only for ``DATA_LINK_MAX_AGE``
seconds. That link, read only in the person's own mailbox, covers everything
held about the address, each controller named separately.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from babel import Locale
from babel.lists import format_list
from flask import current_app
from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import func, or_, select

from . import consent, labels, ledger, outbox
from .consent import Facts
from .database import UnitOfWork, unit_of_work
from .extensions import db
from .i18n import DEFAULT_LANGUAGE
from .ledger import Evidence
from .models import DataRequest, Subscription, utcnow
from .notices import Notice, get_notice
from .vocabulary import LawfulBasis

DATA_KINDS = ("export", "erase")
# However many links ask, no address gets more data-request mails than this a day.
DATA_REQUESTS_CEILING = 10


@dataclass(frozen=True)
class Person:
    """Whom a manage link speaks for: an address hash, the notice whose mail carried the
    link, and a digest of the link itself (each link has its own daily allowance).

    ``email_hash`` is None when the link's subscription is no longer held (its ref then
    names nobody): the page shows that nothing is held.
    """

    email_hash: str | None
    origin: Notice
    link: str | None = None


def link_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def person_of(payload: dict[str, Any], token: str | None = None) -> Person | None:
    found = _person_of(payload)
    return replace(found, link=link_digest(token)) if found is not None and token is not None else found


def _person_of(payload: dict[str, Any]) -> Person | None:
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
    # Under every notice, the link's kept below: see _SUBSCRIPTION_ROWS_BY_TAG in consent/records.py.
    rows = db.session.execute(
        select(Subscription.email_hash, Subscription.notice).where(
            or_(Subscription.ref == target.ref, Subscription.email_hash.between(bounds["lo"], bounds["hi"])),
        )
    )
    held_now = {ehash for ehash, notice in rows if notice == target.notice.slug and ehash.startswith(target.tag)}
    return Person(held_now.pop() if len(held_now) == 1 else None, target.notice)


def held(person: Person) -> list[Subscription]:
    """What the link's notice holds for the address (one subscription at most)."""
    if person.email_hash is None:
        return []
    return list(
        db.session.execute(
            select(Subscription)
            .where(Subscription.email_hash == person.email_hash, Subscription.notice == person.origin.slug)
            .order_by(Subscription.id)
        ).scalars()
    )


def holders(email_hash: str | None) -> list[tuple[Notice, Subscription]]:
    """Every notice holding the address, for the page of a data link mailed to it."""
    if not isinstance(email_hash, str):
        return []
    subs = db.session.execute(
        select(Subscription).where(Subscription.email_hash == email_hash).order_by(Subscription.id)
    ).scalars()
    return [(notice, sub) for sub in subs if (notice := get_notice(sub.notice)) is not None]


def controller_names(email_hash: str | None) -> list[str]:
    """The controllers holding the address, each once, in the order they first got it.

    A data link covers all of them, so the mail that carries it names every one.
    """
    names: list[str] = []
    for notice, _sub in holders(email_hash):
        if notice.controller["name"] not in names:
            names.append(notice.controller["name"])
    return names


def joined(names: list[str]) -> str:
    """Names as a list in running text, in the reader's language ("A, B och C")."""
    locale = get_locale() or Locale.parse(DEFAULT_LANGUAGE)
    return format_list(names, locale=locale) if names else ""


def consented(sub: Subscription) -> bool:
    """Whether the person gave consent here (not a pending sign-up, nor a contact on legitimate interest)."""
    return sub.lawful_basis == LawfulBasis.CONSENT and sub.confirmed_at is not None


def change_name(person: Person, notice_slug: str, name: str | None, facts: Facts) -> bool:
    """The person corrects their name under one notice; False if nothing is held there."""
    sub = next((s for s in held(person) if s.notice == notice_slug), None)
    if sub is None:
        return False
    consent.rectify(sub.ref, name or "", None, facts)
    return True


def withdraw(person: Person, facts: Facts) -> list[str]:
    """Opt out under the link's notice (the only one it may act on)."""
    slugs = [s.notice for s in held(person) if s.status != "unsubscribed"]
    for slug in slugs:
        consent.unsubscribe({"n": slug, "h": person.email_hash}, facts)
    return slugs


def request_link(person: Person, kind: str, facts: Facts) -> None:
    """Mail a fresh export or erasure link to the address, if anything is held.

    Silent about whether it did: the page answers "check your inbox" either way.
    ``DATA_REQUESTS_PER_ADDRESS`` mails a day are allowed per address and link, so
    a forwarded newsletter's link cannot use up what the person's other links may
    ask; ``DATA_REQUESTS_CEILING`` bounds the address's mail however many links ask.
    """
    assert kind in DATA_KINDS
    if person.email_hash is None:
        return
    with unit_of_work() as uow:
        # The link's own notice must hold the address; the mail goes out under it.
        sub = uow.session.execute(
            select(Subscription)
            .where(Subscription.email_hash == person.email_hash, Subscription.notice == person.origin.slug)
            .with_for_update()
        ).scalar_one_or_none()
        if sub is None:
            return
        since = utcnow() - timedelta(hours=24)
        recent = (DataRequest.email_hash == person.email_hash, DataRequest.created_at > since)
        asked = uow.session.execute(select(func.count()).select_from(DataRequest).where(*recent)).scalar_one()
        by_link = uow.session.execute(
            select(func.count()).select_from(DataRequest).where(*recent, DataRequest.link == person.link)
        ).scalar_one()
        if by_link >= current_app.config["DATA_REQUESTS_PER_ADDRESS"] or asked >= DATA_REQUESTS_CEILING:
            current_app.logger.info("data request limit reached for one address and link; no mail sent")
            return
        request = DataRequest(kind=kind, email_hash=person.email_hash, link=person.link)
        uow.session.add(request)
        uow.session.flush()
        notice = person.origin
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


def link_used(payload: dict[str, Any]) -> bool:
    """Whether a data link can no longer be redeemed; reads only (a GET of the link asks this)."""
    request_id = payload.get("i")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        return True
    request = db.session.get(DataRequest, request_id)
    return (
        request is None
        or request.kind != payload.get("k")
        or request.email_hash != payload.get("h")
        or request.used_at is not None
    )


def _redeem(uow: UnitOfWork, payload: dict[str, Any], kind: str) -> DataRequest:
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
    """Redeem an export link: the Art. 15/20 document, or None if nothing is held any more.

    The document is the one ``subjects export`` prints (its keys and codes fixed by the
    design), with the words a person reads added in the language of the page that
    downloads it: see ``localise``.
    """
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
    document = consent.export_by_hash(ehash)
    return localise(document, ehash) if document is not None else None


def _rights_text(subs: list[dict[str, Any]]) -> str:
    """The rights that apply to what is held, one sentence each (Art. 15(1)(e), 21)."""
    bases = {s.get("lawful_basis") for s in subs}
    # Data portability (Art. 20) covers data processed on consent (or a contract), not on
    # legitimate interest: "take it elsewhere" only where a subscription on consent is exported.
    if LawfulBasis.CONSENT in bases:
        first = _("You may see your data, have it corrected or erased, and take it elsewhere: this file is that copy.")
    else:
        first = _("You may see your data and have it corrected or erased: this file is a copy of it.")
    sentences = [first]
    if LawfulBasis.CONSENT in bases:
        sentences.append(_("Where we rely on your consent, you may withdraw it at any time, as easily as you gave it."))
    if LawfulBasis.LEGITIMATE_INTEREST in bases:
        sentences.append(
            _("Where we rely on our legitimate interest, you may object at any time, and we then stop at once.")
        )
    return " ".join(sentences)


def localise(document: dict[str, Any], ehash: str) -> dict[str, Any]:
    """The export in the reader's language, beside its codes.

    Codes and ISO 8601 times stay as they are (scripts read them); each code gets a
    ``*_text`` companion in words, the prose (retention summary, recipients' roles,
    rights, where to complain) is written in the current language, and each
    subscription gains the notice's title and its transfers outside the EU/EEA.
    """
    lang = str(get_locale() or DEFAULT_LANGUAGE)
    locale = Locale.parse(lang)
    # One subscription per notice and address: the rows the document was made from.
    found = db.session.execute(select(Subscription).where(Subscription.email_hash == ehash)).scalars()
    rows = {sub.notice: sub for sub in found}
    subscriptions = []
    for item in document["subscriptions"]:
        item = dict(item)
        notice = get_notice(item.get("notice"))
        held_now = rows.get(str(item.get("notice")))
        item["status_text"] = labels.status(item.get("status"))
        item["lawful_basis_text"] = labels.lawful_basis(item.get("lawful_basis"))
        item["relationship_text"] = labels.relationship(item.get("relationship"))
        item["source_text"] = labels.source(item.get("source"))
        item["language_text"] = _language_name(item.get("language"), locale)
        if notice is not None:
            item["notice_title"] = notice.text(lang)["title"]
            role = _("processor: sends the newsletter for %(controller)s", controller=notice.controller["name"])
            item["recipients"] = [{**recipient, "role": role} for recipient in item.get("recipients") or []]
            if held_now is not None and isinstance(item.get("retention"), dict):
                item["retention"] = {**item["retention"], "summary": consent.retention_summary(notice, held_now)}
            # A notice that states nothing about transfers gets no claim in the export either.
            if notice.transfers_stated:
                item["transfers"] = [
                    {
                        "recipient": t.recipient,
                        "country": t.country,
                        "safeguard": t.safeguard,
                        "fallback": t.fallback,
                        "text": labels.transfer(t),
                    }
                    for t in notice.transfers
                ]
                item["transfers_text"] = " ".join(t["text"] for t in item["transfers"]) or labels.no_transfer()
        subscriptions.append(item)
    events = [{**event, "type_text": labels.event(event.get("type"))} for event in document["events"]]
    return {
        **document,
        "language": lang,
        "subscriptions": subscriptions,
        "events": events,
        "rights": _rights_text(subscriptions),
        "complaints": _(
            "You may complain to the Swedish Authority for Privacy Protection, Integritetsskyddsmyndigheten (IMY), "
            "https://www.imy.se"
        ),
    }


def _language_name(code: object, locale: Locale) -> str:
    if not isinstance(code, str) or not code:
        return ""
    try:
        return Locale.parse(code).get_language_name(locale) or code
    except (ValueError, TypeError):
        return code


@dataclass(frozen=True)
class Erased:
    """What an erasure link did: the controllers that erased the address, and whether any
    of them held it on the person's consent (only then is there evidence of a consent to keep)."""

    controllers: list[str]
    consented: bool


def erase(payload: dict[str, Any], facts: Facts) -> Erased:
    """Redeem an erasure link: full erasure, then a last mail saying so."""
    with unit_of_work() as uow:
        request = _redeem(uow, payload, "erase")
        subs = (
            uow.session.execute(select(Subscription).where(Subscription.email_hash == request.email_hash))
            .scalars()
            .all()
        )
        if not subs:
            return Erased([], consented=False)
        first = subs[0]
        notice = get_notice(first.notice)
        controllers = sorted({n.controller["name"] for n in map(get_notice, [s.notice for s in subs]) if n})
        gave_consent = any(consented(s) for s in subs)
        last_mail = {
            "template": "erased",
            "lang": first.lang,
            "controllers": controllers,
            "consented": gave_consent,
            "personal_email": first.email,
            "email_hash": first.email_hash,
        }
        consent.erase_by_hash(request.email_hash, facts, uow)
        # The one mail that may still carry the address: the outbox wipes it once sent.
        outbox.run_after_commit(
            uow, "mail", notice=notice.slug if notice else None, subscription_ref=None, payload=last_mail
        )
    return Erased(controllers, consented=gave_consent)
