"""The outbox handler that brings a provider in line with our state.

A sync job names a subscription; the handler reads its state *now* and pushes
that: subscribed -> upsert, unsubscribed -> unsubscribe, gone -> delete (the
job then carries the address, wiped once the job is done). Jobs are written by
``app/consent/`` in the same transaction as the change; only the worker
(``outbox run``) runs them, so no request ever waits on a provider.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import current_app
from sqlalchemy import select

from . import ledger, mail, outbox
from .database import UnitOfWork, unit_of_work
from .extensions import db
from .failures import Permanent, WaitForConfiguration
from .ledger import Evidence
from .models import ConsentEvent, EventDetail, Subscription
from .notices import Notice

if TYPE_CHECKING:
    from .consent.records import Held

from .providers import (
    Member,
    Operation,
    Outcome,
    ProviderNotConfigured,
    provider_for,
)

CONSENT_JOB = "sync_consent"
OPT_OUT_JOB = "sync_optout"


def enqueue_sync(uow: UnitOfWork, sub: Held, *, opt_out: bool) -> None:
    # Written as a Core row (no ORM object): every confirmation and opt-out queues one.
    job = {"kind": OPT_OUT_JOB if opt_out else CONSENT_JOB, "notice": sub.notice, "subscription_ref": sub.ref}
    outbox.enqueue_many(uow, [{**job, "payload": {}}])


def enqueue_delete(uow: UnitOfWork, sub: Held) -> None:
    """The provider must delete the person; the job holds the address until done."""
    enqueue_delete_address(uow, sub.notice, sub.email, sub.email_hash, sub.ref)


def delete_job(notice: str, email: str, email_hash: str, subscription_ref: str | None = None) -> dict[str, Any]:
    """The outbox job that has the provider delete a person, as the columns it is written with."""
    return {
        "kind": OPT_OUT_JOB,
        "notice": notice,
        "subscription_ref": subscription_ref,
        "payload": {"action": "delete", "personal_email": email, "email_hash": email_hash},
    }


def enqueue_delete_address(
    uow: UnitOfWork, notice: str, email: str, email_hash: str, subscription_ref: str | None = None
) -> None:
    outbox.enqueue_many(uow, [delete_job(notice, email, email_hash, subscription_ref)])


def _stamp(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00") if value else None


def _members(subs: list[Subscription]) -> dict[str, Member]:
    """Sign-up and opt-in facts from our own evidence, as Mailchimp wants them (one query)."""
    refs = [sub.ref for sub in subs]
    rows = db.session.execute(
        select(ConsentEvent.subscription_ref, ConsentEvent.type, ConsentEvent.at, EventDetail.details)
        .join(EventDetail, EventDetail.event_id == ConsentEvent.id)
        .where(
            ConsentEvent.subscription_ref.in_(refs),
            ConsentEvent.type.in_(("signup_requested", "consent_confirmed")),
        )
        .order_by(ConsentEvent.id.desc())
    ).all()
    latest: dict[tuple[str | None, str], tuple[Any, dict[str, Any]]] = {}
    for ref, kind, at, details in rows:
        latest.setdefault((ref, kind), (at, json.loads(details)))
    members = {}
    for sub in subs:
        signup_at, signup = latest.get((sub.ref, "signup_requested"), (None, {}))
        opt_at, opt = latest.get((sub.ref, "consent_confirmed"), (sub.confirmed_at, {}))
        members[sub.ref] = Member(
            email=sub.email,
            name=sub.name,
            ip_signup=signup.get("ip"),
            timestamp_signup=_stamp(signup_at),
            ip_opt=opt.get("ip"),
            timestamp_opt=_stamp(opt_at),
            unsubscribe_url=mail.unsubscribe_link(sub.notice, sub.ref, sub.email_hash),
            language=sub.lang,
            manage_url=mail.manage_link(sub.notice, sub.ref, sub.email_hash),
        )
    return members


def _plan(notice: Notice, jobs: list[outbox.ClaimedJob]) -> list[tuple[int, str | None, Operation | None]]:
    """What each job must do now, from the subscriptions' current state."""
    refs = [job.subscription_ref for job in jobs if job.subscription_ref]
    subs = {
        sub.ref: sub for sub in db.session.execute(select(Subscription).where(Subscription.ref.in_(refs))).scalars()
    }
    members = _members([sub for sub in subs.values() if sub.status == "subscribed"])
    # A person deleted here may have subscribed again since; that newer consent decides.
    delete_hashes = [job.payload.get("email_hash") for job in jobs if job.payload.get("action") == "delete"]
    # Looked up by address alone, through the (email_hash, notice) key: with the notice and
    # the status in the condition, SQLite, which keeps no statistics, walks every subscriber
    # of the notice by ix_subscriptions_notice_status_id instead.
    held = select(Subscription.email_hash, Subscription.notice, Subscription.status)
    resubscribed = {
        ehash
        for ehash, held_under, status in (
            db.session.execute(held.where(Subscription.email_hash.in_(delete_hashes))) if delete_hashes else []
        )
        if held_under == notice.slug and status == "subscribed"
    }
    plan: list[tuple[int, str | None, Operation | None]] = []
    for job in jobs:
        sub = subs.get(job.subscription_ref or "")
        op = None
        if sub is not None and sub.status == "subscribed":
            op = Operation("subscribe", sub.email, members[sub.ref])
        elif sub is not None and sub.status == "unsubscribed":
            op = Operation("unsubscribe", sub.email)
        elif sub is None and job.payload.get("action") == "delete":
            if job.payload.get("email_hash") not in resubscribed:
                op = Operation("delete", job.payload["personal_email"])
        plan.append((job.id, job.subscription_ref, op))
    return plan


def _record_pending(notice: Notice, refs: list[str]) -> None:
    facts = {"provider": notice.provider["kind"], "reason": "compliance state"}
    with unit_of_work() as uow:
        ledger.append(
            uow,
            [Evidence.under("provider_confirmation_requested", notice, ref, "system", facts) for ref in refs],
        )


def _as_job_error(outcome: Outcome) -> Exception | None:
    return outcome if isinstance(outcome, Exception) else None


def _sync_notice(slug: str | None, jobs: list[outbox.ClaimedJob]) -> dict[int, Exception | None]:
    notice = current_app.extensions["notices"].get(slug)
    if notice is None:
        return {job.id: Permanent(f"notice {slug!r} no longer exists") for job in jobs}
    try:
        provider = provider_for(notice, current_app.config)
    except ProviderNotConfigured as exc:
        wait = f"{notice.provider['kind']} not configured: {exc}"
        return {job.id: WaitForConfiguration(wait) for job in jobs}
    plan = _plan(notice, jobs)
    db.session.rollback()  # no transaction stays open across network I/O
    work = [(job_id, ref, op) for job_id, ref, op in plan if op is not None]
    results: dict[int, Exception | None] = {job_id: None for job_id, _, op in plan if op is None}
    # Several jobs for one person in a batch (a quick opt-in and opt-out, say)
    # plan the same current state: the provider is told once.
    slots: dict[tuple[str, str], int] = {}
    operations: list[Operation] = []
    for _, _, op in work:
        if slots.setdefault((op.action, op.email.lower()), len(operations)) == len(operations):
            operations.append(op)
    try:
        outcomes = provider.apply_many(notice, operations) if operations else []
    finally:
        close = getattr(provider, "close", None)
        if close:
            close()
    pending: dict[str, None] = {}
    for job_id, ref, op in work:
        outcome = outcomes[slots[(op.action, op.email.lower())]]
        if outcome == "pending" and ref:
            pending[ref] = None
        results[job_id] = _as_job_error(outcome)
    if pending:
        _record_pending(notice, list(pending))
    return results


@outbox.batch_handler(CONSENT_JOB, OPT_OUT_JOB)
def sync_jobs(jobs: list[outbox.ClaimedJob]) -> dict[int, Exception | None]:
    """Bring the providers in line with our state for many jobs at once."""
    by_notice: dict[str | None, list[outbox.ClaimedJob]] = {}
    for job in jobs:
        by_notice.setdefault(job.notice, []).append(job)
    results: dict[int, Exception | None] = {}
    for slug, group in by_notice.items():
        results.update(_sync_notice(slug, group))
    return results
