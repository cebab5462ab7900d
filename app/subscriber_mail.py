"""The outbox handler that sends subscriber mail.

Mail is composed when it is sent, from the subscription as it is then, so a
job never holds an address and a person erased before the send gets nothing.
The one exception is the last mail after a self-service erasure, which must
reach an address no longer held: its job carries the address as a
``personal_`` field, which the outbox wipes once the job is done.
"""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from sqlalchemy import bindparam, select, update

from . import ledger, mail, outbox, rights, tokens
from .database import unit_of_work
from .events import event_time
from .extensions import db
from .failures import Permanent
from .fastpath import Prepared, read
from .importer import ART14, ART14_INFORMED
from .ledger import Evidence
from .models import ConsentEvent, Subscription, utcnow
from .notices import Notice, get_notice

# Which status a subscription must still have for each mail to make sense (None: any).
STATUS_FOR = {
    "confirmation": "pending",
    "welcome": "subscribed",
    ART14: "subscribed",
    "data_export": None,
    "data_erase": None,
}


@outbox.handler("mail")
def send_subscriber_mail(job: outbox.ClaimedJob) -> bool | None:
    template = job.payload.get("template")
    if template == "erased":
        mail.transport().send(_last_mail(job))
        return None
    if template not in STATUS_FOR:
        raise Permanent(f"unknown mail template {template!r}")
    found = read(_SUBSCRIPTION, {"ref": job.subscription_ref})
    sub = found[0] if found else None
    notice = get_notice(sub.notice) if sub else None
    wanted = STATUS_FOR[template]
    if sub is None or notice is None or (wanted is not None and sub.status != wanted):
        return None  # the person is gone or moved on; nothing to send
    if template == ART14 and _informed(sub.ref):
        return None  # sent and recorded by an earlier run of this job that did not get to finish it
    links = {}
    extra: dict[str, object] = {"source": sub.source, "name": sub.name, "lawful_basis": sub.lawful_basis}
    if template == "confirmation":
        token = tokens.link("confirm", sub.notice, sub.ref, nonce=sub.confirm_nonce)
        links["confirm"] = mail.public_link("/confirm/" + token)
    if template in ("data_export", "data_erase"):
        kind = template.removeprefix("data_")
        token = tokens.make("data", {"i": job.payload.get("request"), "k": kind, "h": sub.email_hash})
        links["data"] = mail.public_link("/manage/data/" + token)
        extra["minutes"] = current_app.config["DATA_LINK_MAX_AGE"] // 60
        # The link covers every controller holding the address: the mail names them all.
        extra["controllers"] = rights.controller_names(sub.email_hash)
    links["privacy"] = mail.public_link(f"/{notice.slug}/privacy")
    composed = mail.compose(
        template,
        notice=notice,
        to=sub.email,
        email_hash=sub.email_hash,
        subscription_ref=sub.ref,
        lang=sub.lang,
        links=links,
        extra=extra,
    )
    ref = sub.ref
    # End any read transaction before network I/O: an open SQLite snapshot
    # would hold back the WAL checkpoint that completes an erasure.
    if db.session.registry.has() and db.session().in_transaction():
        db.session.rollback()
    transport = mail.transport()
    transport.send(composed)
    if template == "confirmation":
        return _record_sent(job, ref, notice)
    if template == ART14 and isinstance(transport, mail.SmtpTransport):
        # Evidence that the person was informed only when a mail server took the mail: one
        # written to the development folder (no SMTP_HOST) informs nobody, and the contact
        # stays on the dashboard's list of the uninformed.
        _record_informed(ref, notice, sent_at=utcnow())
    return None


def _last_mail(job: outbox.ClaimedJob) -> mail.Composed:
    """The mail confirming an erasure, to the address the job itself carries."""
    notice = get_notice(job.notice)
    to, ehash = job.payload.get("personal_email"), job.payload.get("email_hash")
    if notice is None or not isinstance(to, str) or not isinstance(ehash, str):
        raise Permanent("erasure mail without its notice or address")
    controllers = [str(c) for c in job.payload.get("controllers") or []]
    return mail.compose(
        "erased",
        notice=notice,
        to=to,
        email_hash=ehash,
        subscription_ref=None,  # the subscriptions are gone; this mail belongs to no list
        lang=str(job.payload.get("lang") or "sv"),
        links={"privacy": mail.public_link(f"/{notice.slug}/privacy")},
        # Evidence of a consent is mentioned only to someone who gave one; a job queued
        # before the flag existed gets the wording that is true of everyone.
        extra={"controllers": controllers, "consented": bool(job.payload.get("consented"))},
    )


def _record_sent(job: outbox.ClaimedJob, ref: str, notice: Notice) -> bool:
    """The evidence that the confirmation went out, committed with the job's end."""
    with unit_of_work(orm=False) as uow:
        finished = outbox.finish_in(uow, job)
        if not uow.run(_CONFIRMATION_SENT, {"sub_ref": ref, "sent_at": utcnow()}):
            return finished  # erased while the mail was on its way: nothing left to record it on
        ledger.append(uow, [Evidence.under("confirmation_sent", notice, ref, "mail")])
    return finished


# Every sign-up runs both (app/fastpath.py). What a mail needs of its subscription, read
# without the ORM: 0.04 ms instead of 0.43 ms on SQLite, 0.34 instead of 0.85 ms on
# PostgreSQL (bench/README.md, "The sign-up's own work").
_SUBSCRIPTIONS = Subscription.__table__
_SUBSCRIPTION = Prepared(
    select(
        _SUBSCRIPTIONS.c.ref,
        _SUBSCRIPTIONS.c.notice,
        _SUBSCRIPTIONS.c.status,
        _SUBSCRIPTIONS.c.email,
        _SUBSCRIPTIONS.c.email_hash,
        _SUBSCRIPTIONS.c.lang,
        _SUBSCRIPTIONS.c.source,
        _SUBSCRIPTIONS.c.name,
        _SUBSCRIPTIONS.c.lawful_basis,
        _SUBSCRIPTIONS.c.confirm_nonce,
    ).where(_SUBSCRIPTIONS.c.ref == bindparam("ref"))
)
# The row is locked by the update itself.
_CONFIRMATION_SENT = Prepared(
    update(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.ref == bindparam("sub_ref"))
    .values(confirmation_sent_at=bindparam("sent_at"))
    .returning(_SUBSCRIPTIONS.c.id)
)


def _informed(ref: str) -> bool:
    found = db.session.execute(
        select(ConsentEvent.id)
        .where(ConsentEvent.subscription_ref == ref, ConsentEvent.type == ART14_INFORMED)
        .limit(1)
    ).first()
    return found is not None


def _record_informed(ref: str, notice: Notice, sent_at: datetime) -> None:
    """The evidence that the Art. 14 information reached a mail server, once per subscription.

    Only after a send that did not raise: a failed send records nothing and is
    retried. The subscription row is locked, so two runs of the job (a lease taken
    over from a slow worker) cannot both append.
    """
    with unit_of_work() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.ref == ref).with_for_update()
        ).scalar_one_or_none()
        if sub is None or _informed(ref):
            return  # erased while the mail was on its way, or already recorded
        facts = {"sent_at": event_time(sent_at), "template": ART14}
        ledger.append(uow, [Evidence.under(ART14_INFORMED, notice, ref, "mail", facts)])
