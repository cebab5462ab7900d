"""The outbox handler that brings a provider in line with our state.

A sync job names a subscription; the handler reads its state *now* and pushes
that: subscribed -> upsert, unsubscribed -> unsubscribe, gone -> delete (the
job then carries the address, wiped once the job is done). Jobs are written by
``app/consent.py`` in the same transaction as the change; only the worker
(``outbox run``) runs them, so no request ever waits on a provider.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app
from sqlalchemy import select

from . import ledger, mail, outbox
from .database import UnitOfWork, unit_of_work
from .extensions import db
from .ledger import Evidence
from .models import ConsentEvent, EventDetail, Subscription
from .notices import Notice
from .providers import Member, ProviderNotConfigured, ProviderPermanent, ProviderRetry, provider_for

CONSENT_JOB = "sync_consent"
OPT_OUT_JOB = "sync_optout"


def enqueue_sync(uow: UnitOfWork, sub: Subscription, *, opt_out: bool) -> None:
    outbox.enqueue(
        uow.session, OPT_OUT_JOB if opt_out else CONSENT_JOB, notice=sub.notice, subscription_ref=sub.ref, payload={}
    )


def enqueue_delete(uow: UnitOfWork, sub: Subscription) -> None:
    """The provider must delete the person; the job holds the address until done."""
    outbox.enqueue(
        uow.session,
        OPT_OUT_JOB,
        notice=sub.notice,
        subscription_ref=sub.ref,
        payload={"action": "delete", "personal_email": sub.email, "email_hash": sub.email_hash},
    )


def _stamp(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00") if value else None


def _member(sub: Subscription) -> Member:
    """Sign-up and opt-in facts from our own evidence, as Mailchimp wants them."""
    rows = db.session.execute(
        select(ConsentEvent.type, ConsentEvent.at, EventDetail.details)
        .join(EventDetail, EventDetail.seq == ConsentEvent.seq)
        .where(
            ConsentEvent.subscription_ref == sub.ref, ConsentEvent.type.in_(("signup_requested", "consent_confirmed"))
        )
        .order_by(ConsentEvent.seq.desc())
    ).all()
    latest: dict[str, tuple[Any, dict[str, Any]]] = {}
    for kind, at, details in rows:
        latest.setdefault(kind, (at, json.loads(details)))
    signup_at, signup = latest.get("signup_requested", (None, {}))
    opt_at, opt = latest.get("consent_confirmed", (sub.confirmed_at, {}))
    return Member(
        email=sub.email,
        name=sub.name,
        ip_signup=signup.get("ip"),
        timestamp_signup=_stamp(signup_at),
        ip_opt=opt.get("ip"),
        timestamp_opt=_stamp(opt_at),
        unsubscribe_url=mail.unsubscribe_link(sub.notice, sub.email_hash),
        language=sub.lang,
    )


def _record_pending(notice: Notice, ref: str) -> None:
    with unit_of_work() as uow:
        ledger.append(
            uow.session,
            [
                Evidence(
                    type="provider_confirmation_requested",
                    channel="system",
                    notice=notice.slug,
                    notice_version=notice.version,
                    subscription_ref=ref,
                    facts={"provider": notice.provider["kind"], "reason": "compliance state"},
                )
            ],
        )


def sync_subscription(job: Any) -> None:
    notice = current_app.extensions["notices"].get(job.notice)
    if notice is None:
        raise outbox.PermanentJobError(f"notice {job.notice!r} no longer exists")
    try:
        provider = provider_for(notice, current_app.config)
    except ProviderNotConfigured as exc:
        raise outbox.WaitForConfiguration(f"{notice.provider['kind']} not configured: {exc}") from None
    sub = db.session.execute(select(Subscription).where(Subscription.ref == job.subscription_ref)).scalar_one_or_none()
    action, member, email = "none", None, None
    if sub is not None and sub.status == "subscribed":
        action, member = "subscribe", _member(sub)
    elif sub is not None and sub.status == "unsubscribed":
        action, email = "unsubscribe", sub.email
    elif sub is None and job.payload.get("action") == "delete":
        newer = db.session.execute(
            select(Subscription.status).where(
                Subscription.notice == notice.slug, Subscription.email_hash == job.payload.get("email_hash")
            )
        ).scalar_one_or_none()
        # If the person has since subscribed again, that newer consent decides.
        if newer != "subscribed":
            action, email = "delete", job.payload["personal_email"]
    ref = job.subscription_ref
    db.session.rollback()  # no transaction stays open across network I/O
    try:
        if action == "subscribe" and member is not None:
            if provider.subscribe(notice, member) == "pending":
                _record_pending(notice, ref)
        elif action == "unsubscribe" and email:
            provider.unsubscribe(notice, email)
        elif action == "delete" and email:
            provider.delete(notice, email)
    except ProviderRetry as exc:
        raise outbox.RetryJob(str(exc), exc.retry_after) from None
    except ProviderPermanent as exc:
        raise outbox.PermanentJobError(str(exc)) from None
    finally:
        close = getattr(provider, "close", None)
        if close:
            close()


outbox.handler(CONSENT_JOB)(sync_subscription)
outbox.handler(OPT_OUT_JOB)(sync_subscription)
