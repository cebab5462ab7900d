"""Retention: each notice's periods, applied by ``flask --app wsgi retention purge``.

The rules are data, in the notice file's ``[retention]`` table (days):

- ``unconfirmed_days``: a sign-up never confirmed, counted from its last
  confirmation mail (or its creation);
- ``unsubscribed_days``: an unsubscribed contact, from the opt-out (the
  suppression entry stays, so the address is not added again);
- ``prospect_without_dialog_days``: a prospect (a contact the controller
  added) with no recorded dialog, from being added;
- ``prospect_with_dialog_days``: a prospect with dialog, from the last contact;
- ``customer_review_days``: customers are never purged by a rule; they are
  listed for review once this long has passed since the last review;
- ``evidence_days``: after this long, an event's personal details (IP, user
  agent, old addresses) are deleted and only its anonymous chain entry stays -
  except the details that still prove a current subscription's consent.

Every purge runs in batches, each its own short transaction, so a purge of
100,000 rows never holds the database for long; every deleted subscription
leaves a ``personal_data_deleted`` event naming the rule, and each run that
changed anything leaves one ``retention_purged`` event per notice with counts.
Running it again changes nothing more: it is safe from cron.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from . import ledger, outbox, provider_sync, tallies
from .database import AnySession, rowcount, unit_of_work, wipe_free_space
from .extensions import Model, db
from .ledger import Evidence
from .models import (
    CUSTOMER,
    REVIEW_FROM,
    ConsentEvent,
    ContactImport,
    DataRequest,
    EventDetail,
    OutboxJob,
    ProviderDelivery,
    Subscription,
    utcnow,
)
from .notices import Notice, notices

log = logging.getLogger(__name__)

BATCH = 1000  # rows per read of the evidence reduction, and the most a purge batch takes
# A purge batch holds, until it commits, SQLite's write lock or, on PostgreSQL, the ledger
# head every evidence write takes, so an unsubscribe arriving meanwhile waits for it: each
# batch is sized from the last one's time to take about this long, within FIRST_BATCH/8
# and BATCH rows.
BATCH_SECONDS = 0.1
FIRST_BATCH = 200
PURGE_RULES = ("unconfirmed_days", "unsubscribed_days", "prospect_without_dialog_days", "prospect_with_dialog_days")
# Events whose details prove the consent a subscription rests on; kept while it does.
PROOF_EVENTS = ("signup_requested", "consent_confirmed", "imported", "provider_subscribed")
# Housekeeping that is not a notice's promise but keeps personal traces short-lived.
DELIVERY_KEEP_DAYS = 90  # webhook de-duplication keys (an HMAC, no address)
UPLOAD_KEEP_DAYS = 7  # dashboard import files never run for real
FINISHED_JOB_KEEP_DAYS = 30  # outbox jobs done, cancelled or discarded (payload already wiped)
DATA_REQUEST_KEEP_DAYS = 7  # export and erasure link requests: the per-address limit looks back 24 h


@dataclass
class Report:
    """What a purge did, or with ``dry_run`` would do."""

    dry_run: bool
    purged: dict[str, dict[str, int]] = field(default_factory=dict)  # notice -> rule -> rows
    review_due: dict[str, int] = field(default_factory=dict)
    evidence_reduced: dict[str, int] = field(default_factory=dict)
    housekeeping: dict[str, int] = field(default_factory=dict)
    would_purge: list[dict[str, Any]] = field(default_factory=list)  # dry run: each row, and why

    def add(self, notice: str, rule: str, count: int) -> None:
        if count:
            rules = self.purged.setdefault(notice, {})
            rules[rule] = rules.get(rule, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "purged": self.purged,
            "review_due": self.review_due,
            "evidence_reduced": self.evidence_reduced,
            "housekeeping": self.housekeeping,
            **({"would_purge": self.would_purge} if self.dry_run else {}),
        }


def _condition(rule: str, cutoff: datetime) -> ColumnElement[bool]:
    s = Subscription
    if rule == "unconfirmed_days":
        return and_(s.status == "pending", func.coalesce(s.confirmation_sent_at, s.created_at) < cutoff)
    if rule == "unsubscribed_days":
        return and_(s.status == "unsubscribed", s.unsubscribed_at < cutoff)
    if rule == "prospect_without_dialog_days":
        return and_(
            s.relationship == "prospect", s.status != "pending", s.last_contact_at.is_(None), s.created_at < cutoff
        )
    assert rule == "prospect_with_dialog_days"
    return and_(s.relationship == "prospect", s.status != "pending", s.last_contact_at < cutoff)


def _due(notice: Notice, rule: str, now: datetime) -> Select[Any] | None:
    days = notice.retention.get(rule)
    if days is None:
        return None
    cutoff = now - timedelta(days=days)
    return select(Subscription).where(Subscription.notice == notice.slug, _condition(rule, cutoff))


def review_due_query(notice: Notice, now: datetime | None = None) -> Select[Any] | None:
    """Customers whose yearly (or other) review is due, for the dashboard."""
    days = notice.retention.get("customer_review_days")
    if days is None:
        return None
    cutoff = (now or utcnow()) - timedelta(days=days)
    # Read through the customers' own index (``models.CUSTOMER``).
    return select(Subscription).where(Subscription.notice == notice.slug, CUSTOMER, REVIEW_FROM < cutoff)


def due_count(now: datetime | None = None) -> int:
    """How many subscriptions the next purge removes: the total of its progress bar."""
    now = now or utcnow()
    queries = (_due(notice, rule, now) for notice in notices().values() for rule in PURGE_RULES)
    return sum(_count(query) for query in queries if query is not None)


def purge(
    dry_run: bool = False, now: datetime | None = None, progress: Callable[[int], None] | None = None
) -> Report:
    """Apply every notice's rules; ``progress`` is told each batch's count as it goes."""
    now = now or utcnow()
    report = Report(dry_run=dry_run)
    for notice in notices().values():
        for rule in PURGE_RULES:
            query = _due(notice, rule, now)
            if query is None:
                continue
            if dry_run:
                for sub in db.session.execute(query.order_by(Subscription.id)).scalars():
                    report.add(notice.slug, rule, 1)
                    report.would_purge.append(_why(notice, rule, sub, now))
                continue
            started = time.perf_counter()
            for count in _purge_batches(notice, rule, query):
                report.add(notice.slug, rule, count)
                if progress is not None:
                    progress(count)
            done = report.purged.get(notice.slug, {}).get(rule, 0)
            log.info("retention: %s %s purged %d in %.1f s", notice.slug, rule, done, time.perf_counter() - started)
        review = review_due_query(notice, now)
        if review is not None:
            report.review_due[notice.slug] = _count(review)
        started = time.perf_counter()
        report.evidence_reduced[notice.slug] = _reduce_evidence(notice, now, dry_run)
        log.info(
            "retention: %s evidence reduced %d in %.1f s",
            notice.slug,
            report.evidence_reduced[notice.slug],
            time.perf_counter() - started,
        )
        if not dry_run and (report.purged.get(notice.slug) or report.evidence_reduced[notice.slug]):
            with unit_of_work() as uow:
                facts = {
                    "purged": report.purged.get(notice.slug, {}),
                    "evidence_reduced": report.evidence_reduced[notice.slug],
                }
                ledger.append(uow, [Evidence.under("retention_purged", notice, None, "system", facts)])
    started = time.perf_counter()
    report.housekeeping = _housekeeping(now, dry_run)
    if not dry_run:
        tallies.fold_if_many()  # on SQLite, a row of tallies for each subscription removed
    log.info("retention: housekeeping in %.1f s", time.perf_counter() - started)
    if not dry_run and any(report.purged.values()):
        started = time.perf_counter()
        wipe_free_space()
        log.info("retention: the database files wiped in %.1f s", time.perf_counter() - started)
    return report


def _count(query: Select[Any]) -> int:
    return db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()


def _why(notice: Notice, rule: str, sub: Subscription, now: datetime) -> dict[str, Any]:
    since = {
        "unconfirmed_days": sub.confirmation_sent_at or sub.created_at,
        "unsubscribed_days": sub.unsubscribed_at,
        "prospect_without_dialog_days": sub.created_at,
        "prospect_with_dialog_days": sub.last_contact_at,
    }[rule]
    return {
        "notice": notice.slug,
        "subscription": sub.id,
        "email": sub.email,
        "status": sub.status,
        "rule": rule,
        "limit_days": notice.retention[rule],
        "age_days": (now - since).days if since else None,
    }


def _purge_batches(notice: Notice, rule: str, query: Select[Any]) -> Iterator[int]:
    """Delete the rows a rule selects, a batch per transaction; yields each batch's size.

    Plain rows and multi-row statements, not ORM objects: a purge may touch
    hundreds of thousands of subscriptions.
    """
    s = Subscription
    columns = query.with_only_columns(s.id, s.ref, s.email, s.email_hash, s.confirmed_at)
    facts = {"reason": "retention", "rule": rule, "days": notice.retention[rule]}
    after, size = 0, min(FIRST_BATCH, BATCH)
    while True:
        started = time.perf_counter()
        with unit_of_work() as uow:
            rows = uow.session.execute(columns.where(s.id > after).order_by(s.id).limit(size).with_for_update()).all()
            if not rows:
                return
            after = rows[-1].id
            refs = [row.ref for row in rows]
            # The provider holds everyone who ever confirmed: it must forget them too.
            deletes = [
                provider_sync.delete_job(notice.slug, row.email, row.email_hash, row.ref)
                for row in rows
                if row.confirmed_at is not None
            ]
            uow.session.execute(delete(EventDetail).where(EventDetail.subscription_ref.in_(refs)))
            outbox.cancel_pending(uow, refs, ("mail",))
            uow.session.execute(delete(s).where(s.id.in_([row.id for row in rows])))
            outbox.enqueue_many(uow, deletes)
            ledger.append(
                uow,
                [Evidence.under("personal_data_deleted", notice, ref, "system", facts) for ref in refs],
            )
            prefixes = {row.email_hash[:16] for row in rows}
            uow.after_commit(functools.partial(_forget_folder_mail, prefixes))
        yield len(rows)
        size = next_batch_size(size, time.perf_counter() - started)


def next_batch_size(size: int, seconds: float) -> int:
    """The next batch's rows: scaled to take ``BATCH_SECONDS``, at most doubling at a step."""
    wanted = int(size * BATCH_SECONDS / max(seconds, 1e-3))
    return max(min(FIRST_BATCH // 8, BATCH), min(wanted, 2 * size, BATCH))


def _forget_folder_mail(prefixes: set[str]) -> None:
    """Delete mail the folder transport wrote to purged addresses (one pass over the folder)."""
    folder = Path(current_app.config["MAIL_DIR"])
    if not folder.is_dir():
        return
    for path in folder.glob("*.eml"):
        if path.name[:16] in prefixes:
            path.unlink(missing_ok=True)


def _reduce_evidence(notice: Notice, now: datetime, dry_run: bool) -> int:
    """Delete personal details of old events, keeping those that prove a current consent."""
    days = notice.retention.get("evidence_days")
    if days is None:
        return 0
    cutoff = now - timedelta(days=days)
    reduced, after = 0, 0
    while True:
        # Read in a plain transaction: on SQLite a unit of work holds the write lock,
        # and this scan also passes over the proofs it keeps, run after run.
        rows = db.session.execute(
            select(EventDetail.event_id, ConsentEvent.subscription_ref, ConsentEvent.type)
            .join(ConsentEvent, ConsentEvent.id == EventDetail.event_id)
            .where(ConsentEvent.notice == notice.slug, ConsentEvent.at < cutoff, EventDetail.event_id > after)
            .order_by(EventDetail.event_id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].event_id
        kept = _proof_events(db.session, {row.subscription_ref for row in rows if row.type in PROOF_EVENTS})
        doomed = [row.event_id for row in rows if row.event_id not in kept]
        db.session.rollback()  # end the read before taking the write lock
        if doomed and not dry_run:
            with unit_of_work() as uow:
                # A detail another process deleted meanwhile is simply not there to delete.
                uow.session.execute(delete(EventDetail).where(EventDetail.event_id.in_(doomed)))
        reduced += len(doomed)
    db.session.remove()
    return reduced


def _proof_events(session: AnySession, refs: set[str | None]) -> set[int]:
    """The latest proof event of each kind for those refs that are still subscribed."""
    refs.discard(None)
    if not refs:
        return set()
    subscribed = select(Subscription.ref).where(Subscription.ref.in_(refs), Subscription.status == "subscribed")
    latest = session.execute(
        select(func.max(ConsentEvent.id))
        .where(ConsentEvent.subscription_ref.in_(subscribed), ConsentEvent.type.in_(PROOF_EVENTS))
        .group_by(ConsentEvent.subscription_ref, ConsentEvent.type)
    ).scalars()
    return set(latest)


def _housekeeping(now: datetime, dry_run: bool) -> dict[str, int]:
    """Short-lived traces no notice speaks of: old delivery keys, abandoned uploads, finished jobs."""
    from .import_jobs import upload_path  # import_jobs registers an outbox handler; keep it lazy

    old_deliveries = ProviderDelivery.received_at < now - timedelta(days=DELIVERY_KEEP_DAYS)
    old_jobs = and_(
        OutboxJob.state.in_(("done", "discarded")),
        OutboxJob.finished_at < now - timedelta(days=FINISHED_JOB_KEEP_DAYS),
    )
    old_requests = DataRequest.created_at < now - timedelta(days=DATA_REQUEST_KEEP_DAYS)
    done: dict[str, int] = {}
    with unit_of_work() as uow:

        def clear(model: type[Model], where: ColumnElement[bool]) -> int:
            if dry_run:
                return uow.session.execute(select(func.count()).select_from(model).where(where)).scalar_one()
            return rowcount(uow.session.execute(delete(model).where(where)))

        done["provider_deliveries"] = clear(ProviderDelivery, old_deliveries)
        done["finished_jobs"] = clear(OutboxJob, old_jobs)
        done["data_requests"] = clear(DataRequest, old_requests)
        stale = (
            uow.session.execute(
                select(ContactImport.id).where(
                    ContactImport.state.in_(("uploaded", "checked", "failed")),
                    ContactImport.created_at < now - timedelta(days=UPLOAD_KEEP_DAYS),
                )
            )
            .scalars()
            .all()
        )
        files = [path for path in map(upload_path, stale) if path.exists()]
        done["import_uploads"] = len(files)
        if not dry_run and files:
            uow.session.execute(
                update(ContactImport)
                .where(ContactImport.id.in_(stale), ContactImport.state.in_(("uploaded", "checked")))
                .values(state="failed", error=f"abandoned: the file was deleted after {UPLOAD_KEEP_DAYS} days")
            )
            uow.after_commit(lambda: _delete_files(files))
    return done


def _delete_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
