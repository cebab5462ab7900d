"""The outbox handler that sends subscriber mail.

Mail is composed when it is sent, from the subscription as it is then, so a
job never holds an address and a person erased before the send gets nothing.
"""

from __future__ import annotations

from sqlalchemy import select

from . import ledger, mail, outbox, tokens
from .consent import get_notice
from .database import unit_of_work
from .extensions import db
from .ledger import Evidence
from .models import OutboxJob, Subscription, utcnow
from .notices import Notice

# Which status a subscription must still have for each mail to make sense.
STATUS_FOR = {"confirmation": "pending", "welcome": "subscribed", "art14": "subscribed"}


@outbox.handler("mail")
def send_subscriber_mail(job: OutboxJob) -> None:
    template = job.payload.get("template")
    if template not in STATUS_FOR:
        raise outbox.PermanentJobError(f"unknown mail template {template!r}")
    sub = db.session.execute(select(Subscription).where(Subscription.ref == job.subscription_ref)).scalar_one_or_none()
    notice = get_notice(sub.notice) if sub else None
    if sub is None or notice is None or sub.status != STATUS_FOR[template]:
        return  # the person is gone or moved on; nothing to send
    links = {}
    if template == "confirmation":
        token = tokens.make("confirm", {"n": sub.notice, "h": sub.email_hash, "r": sub.confirm_nonce})
        links["confirm"] = mail.public_link("/confirm/" + token)
    links["privacy"] = mail.public_link(f"/{notice.slug}/privacy")
    composed = mail.compose(
        template,
        notice=notice,
        to=sub.email,
        email_hash=sub.email_hash,
        lang=sub.lang,
        links=links,
        extra={"source": sub.source, "name": sub.name, "lawful_basis": sub.lawful_basis},
    )
    ref = sub.ref
    # End the read transaction before network I/O: an open SQLite snapshot
    # would hold back the WAL checkpoint that completes an erasure.
    db.session.rollback()
    try:
        mail.transport().send(composed)
    except mail.PermanentMailError as exc:
        raise outbox.PermanentJobError(str(exc)) from None
    except mail.TransientMailError as exc:
        raise outbox.RetryJob(str(exc)) from None
    if template == "confirmation":
        _record_sent(ref, notice)


def _record_sent(ref: str, notice: Notice) -> None:
    with unit_of_work() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.ref == ref).with_for_update()
        ).scalar_one_or_none()
        if sub is None:
            return
        sub.confirmation_sent_at = utcnow()
        ledger.append(uow.session, [Evidence.under("confirmation_sent", notice, ref, "mail")])
