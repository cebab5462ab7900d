"""Double opt-in: the sign-up request, its confirmation mail and the confirmation."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, delete, func, or_, select

from .. import ledger, outbox, provider_sync
from ..addresses import InvalidInput, clean_name, email_hash, normalise_email
from ..database import UnitOfWork, rowcount, unit_of_work
from ..extensions import db
from ..failures import Permanent
from ..fastpath import Prepared
from ..ledger import Evidence
from ..models import ConsentEvent, EventDetail, OutboxJob, Subscription, Suppression, new_ref, utcnow
from ..notices import Notice, get_notice
from .records import (
    INSERT_SUBSCRIPTION,
    Facts,
    Target,
    queue_mail,
    retry_on_insert_race,
    subscription_row,
    target_subscription,
    token_target,
    write_columns,
)

log = logging.getLogger(__name__)

CONFIRMATION_EVENTS = ("signup_requested", "confirmation_resent")

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
    with unit_of_work(orm=False) as uow:
        outbox.run_after_commit(uow, SIGNUP_JOB, notice=notice.slug, subscription_ref=None, payload=payload)


@outbox.handler(SIGNUP_JOB, personal_copy=True)
def _signup_job(job: outbox.ClaimedJob) -> bool:
    notice = get_notice(job.notice)
    payload = job.payload
    email = payload.get("personal_email")
    if notice is None or not isinstance(email, str):
        raise Permanent("sign-up job without its notice or address")
    facts = Facts(
        channel=str(payload.get("channel") or "form"),
        ip=payload.get("personal_ip"),
        user_agent=payload.get("personal_user_agent"),
        lang=str(payload.get("lang") or notice.languages[0]),
        actor=payload.get("actor"),
    )
    db.session.rollback()  # the job's own read ends here; the sign-up is a unit of work of its own
    retry_on_insert_race(_request_subscription, job, notice, email, payload.get("personal_name"), facts)
    return True


def _request_subscription(job: outbox.ClaimedJob, notice: Notice, email: str, name: str | None, facts: Facts) -> None:
    """The sign-up job's work, in one unit of work without the ORM: every sign-up runs it, and
    the ORM's flush and bookkeeping cost more than its few statements (bench/README.md)."""
    ehash = email_hash(email)
    with unit_of_work(orm=False) as uow:
        # Whatever the address's state calls for, the job ends with it; an erasure may have
        # cancelled it since it was queued, and then it does nothing.
        if not outbox.finish_if_ours(uow, job):
            log.info("sign-up job %s was cancelled before it ran", job.id)
            return
        held = subscription_row(uow, Target(notice, email_hash=ehash))
        if held is not None and held.status == "subscribed":
            return  # nothing to do; the response is the same either way
        if held is None:
            ref = new_ref()
            uow.send(
                INSERT_SUBSCRIPTION,
                {
                    "ref": ref,
                    "notice": notice.slug,
                    "email": email,
                    "email_hash": ehash,
                    "name": name,
                    "status": "pending",
                    "lang": facts.lang,
                    "source": f"sign-up form {current_app.config['PUBLIC_URL']}/{notice.slug}/subscribe",
                    "lawful_basis": notice.lawful_basis,
                    "notice_version": notice.version,
                    "confirm_nonce": secrets.token_hex(8),
                },
            )
        else:
            ref = held.ref
            if held.status == "unsubscribed":
                again = {"status": "pending", "confirm_nonce": secrets.token_hex(8), "unsubscribed_at": None}
            else:  # still unconfirmed: the latest request's name wins
                again = {"name": name} if name else {}
            write_columns(uow, held, **again, lang=facts.lang, notice_version=notice.version)
            # A subscription made just now has had no confirmation mail to count.
            if not _under_confirmation_limit(uow, ref):
                log.info("confirmation limit reached for one address; no mail sent")
                return
        signup_facts = {"consent_checkbox": True, "fields": list(notice.fields), "lawful_basis": notice.lawful_basis}
        ledger.append(
            uow,
            [
                Evidence.under(
                    "signup_requested",
                    notice,
                    ref,
                    facts.channel,
                    signup_facts,
                    details=facts.details(email=email, name=name),
                )
            ],
        )
        queue_mail(uow, notice.slug, ref, "confirmation")


_EVENTS = ConsentEvent.__table__
_CONFIRMATIONS_SINCE = Prepared(
    select(func.count().label("sent"))
    .select_from(_EVENTS)
    .where(
        _EVENTS.c.subscription_ref == bindparam("ref"),
        or_(*(_EVENTS.c.type == kind for kind in CONFIRMATION_EVENTS)),
        _EVENTS.c.at > bindparam("since"),
    )
)


def _under_confirmation_limit(uow: UnitOfWork, ref: str) -> bool:
    """Whether the subscription has had fewer confirmation mails in the last 24 hours than
    ``CONFIRMATIONS_PER_ADDRESS``."""
    [found] = uow.run(_CONFIRMATIONS_SINCE, {"ref": ref, "since": utcnow() - timedelta(hours=24)})
    return int(found.sent) < current_app.config["CONFIRMATIONS_PER_ADDRESS"]


def _pending_for(uow: UnitOfWork, target: Target, payload: dict[str, Any]) -> Subscription | None:
    """The subscription a confirmation token still speaks for, if any."""
    sub = target_subscription(uow, target)
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
        sub = target_subscription(uow, target)
        if sub is not None and sub.status == "subscribed":
            return "already"
        sub = _pending_for(uow, target, payload)
        if sub is None:
            return "stale"
        now = utcnow()
        seconds = (now - sub.confirmation_sent_at).total_seconds() if sub.confirmation_sent_at else None
        window = current_app.config["SCANNER_WINDOW_SECONDS"]
        asked = _asked_from(uow, sub.ref)
        same_ip, same_browser = _same(asked, facts, "ip"), _same(asked, facts, "user_agent")
        lifted = rowcount(
            uow.session.execute(
                delete(Suppression).where(Suppression.notice == notice.slug, Suppression.email_hash == sub.email_hash)
            )
        )
        sub.status, sub.confirmed_at, sub.confirm_nonce = "subscribed", now, None
        sub.notice_version = notice.version
        confirm_facts = {
            "seconds_since_sent": round(seconds, 3) if seconds is not None else None,
            "likely_scanner": likely_scanner(seconds, window, same_ip),
            "same_ip_as_signup": same_ip,
            "same_browser_as_signup": same_browser,
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
        queue_mail(uow, sub.notice, sub.ref, "welcome")
    return "confirmed"


def likely_scanner(seconds: float | None, window: float, same_ip: bool | None) -> bool:
    """Whether a confirmation was probably pressed by a mail scanner rather than the person.

    Speed alone does not tell: someone who signs up and has the mail open in the next tab
    confirms within seconds. What does is where the press came from. A scanner (a mail
    gateway following links for the recipient) presses from its own network, so the rule is:
    the confirmation came within ``SCANNER_WINDOW_SECONDS`` of the mail being sent AND from
    another IP address than the request that asked for the mail (``same_ip`` False). The
    browser (user agent) is recorded beside it but does not decide: browsers now send
    reduced, shared user-agent strings, so a scanner running a current browser matches most
    people's. From the same address it is the person, however fast; with nothing to compare
    (a sign-up through the API, details erased) there is no signal, and it is not labelled.
    The button is a POST from the page a GET shows, so a scanner that only follows links
    never confirms at all.
    """
    return seconds is not None and seconds < window and same_ip is False


def _asked_from(uow: UnitOfWork, ref: str) -> dict[str, Any]:
    """The IP address and user agent of the request that asked for the latest confirmation mail."""
    found = uow.session.execute(
        select(EventDetail.details)
        .join(ConsentEvent, ConsentEvent.id == EventDetail.event_id)
        .where(ConsentEvent.subscription_ref == ref, ConsentEvent.type.in_(CONFIRMATION_EVENTS))
        .order_by(ConsentEvent.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    try:
        details = json.loads(found) if found else {}
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def _same(asked: dict[str, Any], facts: Facts, key: str) -> bool | None:
    """Whether the confirmation came with the same ``key`` (``ip``, ``user_agent``) as the request
    that asked for the mail; None when either is unknown. Only this yes/no enters the chain."""
    before, after = asked.get(key), facts.details().get(key)
    if not before or not after:
        return None
    return bool(before == after)


def resend_confirmation(payload: dict[str, Any], facts: Facts) -> None:
    """From an expired link's page: send a fresh confirmation if still pending."""
    target = token_target(payload)
    if target is None:
        return
    with unit_of_work() as uow:
        sub = _pending_for(uow, target, payload)
        if sub is None or not _under_confirmation_limit(uow, sub.ref):
            return
        ledger.append(
            uow,
            [Evidence.under("confirmation_resent", target.notice, sub.ref, facts.channel, details=facts.details())],
        )
        queue_mail(uow, sub.notice, sub.ref, "confirmation")

def cancel_queued_signups(uow: UnitOfWork, ehash: str) -> set[str]:
    """A sign-up of the address still waiting in the outbox goes with the erasure: it would
    otherwise hold the address and, once run, mail the person who just asked to be erased.
    Answers the notices of those cancelled. The waiting sign-ups are found by their kind
    (``ix_outbox_jobs_kind_state_notice``), not among every pending job. A running one is cancelled
    too (its process may have died, and the worker would run it once its lease ends): its run,
    if still to come, finds the job no longer its own and does nothing (``finish_if_ours``)."""
    waiting = uow.session.execute(
        select(OutboxJob).where(OutboxJob.kind == SIGNUP_JOB, OutboxJob.state.in_(("pending", "running")))
    ).scalars()
    cancelled = set()
    for job in waiting:
        address = job.payload.get("personal_email")
        if isinstance(address, str) and email_hash(address) == ehash:
            job.state, job.finished_at, job.last_error, job.payload = "done", utcnow(), "cancelled", {}
            cancelled.add(job.notice or "")
    return cancelled
