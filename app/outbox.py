"""The transactional outbox: work written with a state change, done after commit.

A job is written in the same transaction as the change that needs it. The web
process tries it right after the commit (``run_after_commit``); ``outbox run``
retries what failed. A job is claimed by setting a lease (``locked_until``):
on PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` so several workers
share the queue, and a worker killed mid-job leaves a lease that expires, after
which the job is claimed again. Failures back off with full jitter; permanent
errors and jobs past ``OUTBOX_MAX_ATTEMPTS`` become dead letters with a reason.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, case, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from . import after_response, ledger
from .database import UnitOfWork, unit_of_work, wipe_free_space
from .extensions import db
from .failures import Failure, Permanent, RetryLater, WaitForConfiguration
from .fastpath import Prepared
from .models import OutboxJob, utcnow

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0
# No retry sooner than this: an answer such as Mailchimp's "signed up to a lot of lists very
# recently" or a connection refused does not change within milliseconds, and a zero wait would
# let one worker pass (or one `outbox run --once`) call again at once.
BACKOFF_FLOOR_SECONDS = 1.0


WAIT_FOR_CONFIGURATION_SECONDS = 60
# Opt-outs are legally urgent (Gmail and Yahoo expect them honoured within 48 h):
# they are claimed before anything else that is due.
URGENT_KINDS = ("sync_optout",)

# A handler answers True when it marked its job done itself (``finish_in``), else None.
Handler = Callable[["ClaimedJob"], bool | None]
HANDLERS: dict[str, Handler] = {}
# A batch handler takes many jobs at once and answers, per job id, None (done)
# or the exception that says why not. Provider sync uses it to batch calls.
BatchHandler = Callable[[list["ClaimedJob"]], dict[int, Exception | None]]
BATCH_HANDLERS: dict[str, BatchHandler] = {}


# Kinds whose personal fields are a copy of what the job itself writes into a subscription
# (a sign-up). Wiping them when the job is done needs no WAL checkpoint of its own: the
# erasure or purge that later deletes those rows runs one. A job of such a kind that fails
# for good keeps none of them: nothing would be left to erase them by.
PERSONAL_COPY_KINDS: set[str] = set()


def handler(kind: str, *, personal_copy: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        if personal_copy:
            PERSONAL_COPY_KINDS.add(kind)
        return fn

    return register


def batch_handler(*kinds: str) -> Callable[[BatchHandler], BatchHandler]:
    def register(fn: BatchHandler) -> BatchHandler:
        for kind in kinds:
            BATCH_HANDLERS[kind] = fn
        return fn

    return register


def enqueue(
    session: Session, kind: str, *, notice: str | None, subscription_ref: str | None, payload: dict[str, Any]
) -> OutboxJob:
    job = OutboxJob(kind=kind, notice=notice, subscription_ref=subscription_ref, payload=payload)
    session.add(job)
    return job


def run_after_commit(
    uow: UnitOfWork, kind: str, *, notice: str | None, subscription_ref: str | None, payload: dict[str, Any]
) -> None:
    """A job this process runs once the unit of work has committed (a subscriber's mail, so
    sign-up works with no worker running): in a request, after its answer (``after_response``);
    elsewhere at once. If that attempt fails or never comes, ``outbox run`` does the job.

    A job run at once (the confirmation mail of a sign-up job, run by the thread that ran
    that job) is written already claimed, leased to this process as ``run_now``'s claim
    would: that saves the claim's transaction. If the process dies before it has run the
    job, the worker takes it once the lease has run out (``OUTBOX_LEASE_SECONDS``), where it
    would take a job left pending at its next round.
    """
    values = {"kind": kind, "notice": notice, "subscription_ref": subscription_ref, "payload": payload}
    if after_response.later():
        [row] = uow.run(_INSERT_ONE, values)
        job_id = row.id
        uow.after_commit(lambda: after_response.schedule(job_id, run_now))
        return
    [row] = uow.run(_INSERT_ONE, {**values, "state": "running", "attempts": 1, "locked_until": lease_end()})
    job = ClaimedJob(row.id, kind, notice, subscription_ref, payload, 1)
    uow.after_commit(lambda: _process(job))


def enqueue_many(uow: UnitOfWork, jobs: list[dict[str, Any]]) -> None:
    """Write jobs in one driver call (columns as ``enqueue`` takes them; the same keys in each)."""
    uow.send_many(_INSERT, jobs)  # no ORM bookkeeping per row or per call


_INSERT = Prepared(insert(OutboxJob.__table__))
_INSERT_ONE = Prepared(insert(OutboxJob.__table__).returning(OutboxJob.__table__.c.id))


def lease_end(now: datetime | None = None) -> datetime:
    """Until when a job taken now is this process's (``OUTBOX_LEASE_SECONDS`` from ``now``)."""
    return (now or utcnow()) + timedelta(seconds=current_app.config["OUTBOX_LEASE_SECONDS"])


def backoff_seconds(attempts: int) -> float:
    """Full jitter above a floor: uniform between ``BACKOFF_FLOOR_SECONDS`` and the exponential ceiling."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return random.uniform(BACKOFF_FLOOR_SECONDS, max(ceiling, BACKOFF_FLOOR_SECONDS))


@dataclass(frozen=True)
class ClaimedJob:
    """What a handler needs of a job, as the claim returned it (no second read)."""

    id: int
    kind: str
    notice: str | None
    subscription_ref: str | None
    payload: dict[str, Any]
    attempts: int

    @classmethod
    def of(cls, row: Any) -> ClaimedJob:
        """From a claim's returned row (id, kind, notice, subscription_ref, payload, attempts)."""
        return cls(row.id, row.kind, row.notice, row.subscription_ref, row.payload or {}, row.attempts)


def _claim(limit: int) -> list[ClaimedJob]:
    """Lease due jobs to this worker in one statement; answers them in claim order.

    The due jobs are picked in a subquery (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL, so concurrent workers take disjoint sets) and leased by an
    ``UPDATE ... RETURNING`` that hands back every column a handler needs.
    """
    now = utcnow()
    due = select(OutboxJob.id).where(
        or_(
            (OutboxJob.state == "pending") & (OutboxJob.next_attempt_at <= now),
            (OutboxJob.state == "running") & (OutboxJob.locked_until < now),
        )
    )
    urgent_first = case((OutboxJob.kind.in_(URGENT_KINDS), 0), else_=1)
    due = due.order_by(urgent_first, OutboxJob.next_attempt_at, OutboxJob.id).limit(limit)
    statement = (
        update(OutboxJob)
        .where(OutboxJob.id.in_(due.with_for_update(skip_locked=True).scalar_subquery()))
        .values(state="running", locked_until=lease_end(now), attempts=OutboxJob.attempts + 1)
        .returning(
            OutboxJob.id,
            OutboxJob.kind,
            OutboxJob.notice,
            OutboxJob.subscription_ref,
            OutboxJob.payload,
            OutboxJob.attempts,
            urgent_first.label("urgency"),
            OutboxJob.next_attempt_at,
        )
        .execution_options(synchronize_session=False)
    )
    with unit_of_work() as uow:
        rows = sorted(uow.session.execute(statement).all(), key=lambda row: (row.urgency, row.next_attempt_at, row.id))
    return [ClaimedJob.of(row) for row in rows]


_ADDRESS = re.compile(r"[^\s<>()\[\]{}'\",;:]+@[^\s<>()\[\]{}'\",;:]+")


def describe(error: Exception) -> str:
    """What a dead letter or a retry shows as its reason: never an address, never a provider's free text."""
    kind = type(error).__name__
    if not isinstance(error, Failure):  # see app/failures.py: only the service's own words are kept
        return kind
    text = _ADDRESS.sub("(address)", str(error))
    return f"{kind}: {text}"[:1000] if text else kind


def reason_code(last_error: str | None) -> str | None:
    """The part of a stored reason fit for a chained record: the error's kind, which this service names."""
    if not last_error:
        return None
    return last_error.split(":", 1)[0][:60]


def _without_personal(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload minus what identifies a person (e.g. an address to delete)."""
    return {k: v for k, v in payload.items() if not k.startswith("personal_")}


def _finish(job: ClaimedJob, error: Exception | None) -> None:
    if error is None:
        _finish_done(job)
    else:
        _finish_failed(job.id, error)


def _finish_failed(job_id: int, error: Exception) -> None:
    """A failed job: retried later with backoff, or a dead letter."""
    with unit_of_work() as uow:
        job = uow.session.get(OutboxJob, job_id)
        if job is None or job.state != "running":
            return
        now = utcnow()
        job.locked_until = None
        job.last_error = describe(error)
        if isinstance(error, WaitForConfiguration):
            job.state, job.attempts = "pending", max(job.attempts - 1, 0)
            job.next_attempt_at = now + timedelta(seconds=WAIT_FOR_CONFIGURATION_SECONDS)
            return
        if isinstance(error, Permanent) or job.attempts >= current_app.config["OUTBOX_MAX_ATTEMPTS"]:
            job.state, job.finished_at = "dead", now
            kept = _without_personal(job.payload)
            if job.kind in PERSONAL_COPY_KINDS and kept != job.payload:
                job.payload = kept
                uow.after_commit(wipe_free_space)
            log.warning("outbox job %s (%s) is a dead letter: %s", job.id, job.kind, job.last_error)
            return
        delay = (
            error.retry_after if isinstance(error, RetryLater) and error.retry_after else backoff_seconds(job.attempts)
        )
        job.state, job.next_attempt_at = "pending", now + timedelta(seconds=delay)


def _finish_done(job: ClaimedJob) -> None:
    """A job done, in one statement (unless it is no longer ours: cancelled, discarded).

    A finished job keeps no personal data (e.g. an address to delete); the old row image
    must then leave the SQLite files too. Nothing changes a running job's payload but the
    job's end, so the claimed copy is the stored one.
    """
    with unit_of_work(orm=False) as uow:
        finish_in(uow, job)


def finish_in(uow: UnitOfWork, job: ClaimedJob) -> bool:
    """Mark ``job`` done within the unit of work that does its work; True, for the handler to answer.

    The work and the job's end then commit together: a process that dies between the two
    cannot leave work done with its job still running, which the worker would do again
    once the lease ends (a second sign-up event, a second mail). It also saves the
    transaction of ``_finish_done``. If the unit of work rolls back, the job is still
    running and the failure is handled as any other.
    """
    return _mark_done(uow, job, answered=False)


def finish_if_ours(uow: UnitOfWork, job: ClaimedJob) -> bool:
    """``finish_in``, answering whether the job was still ours to finish: False when it was
    cancelled (an erasure cancels a waiting sign-up, running or not) or finished meanwhile,
    and the handler must then do nothing. One statement that answers, where ``finish_in``'s
    may ride along with the next one (PostgreSQL)."""
    return _mark_done(uow, job, answered=True)


def _mark_done(uow: UnitOfWork, job: ClaimedJob, answered: bool) -> bool:
    kept = _without_personal(job.payload)
    params = {"job_id": job.id, "at": utcnow(), "payload": kept}
    if answered:
        if not uow.run(_DONE_ANSWERED, params):
            return False
    else:
        uow.send(_DONE, params)
    if kept != job.payload and job.kind not in PERSONAL_COPY_KINDS:
        uow.after_commit(wipe_free_space)
    return True


def _process(job: ClaimedJob) -> None:
    """Run a claimed job's handler with the job as the claim answered it (no second read)."""
    fn = HANDLERS.get(job.kind)
    error: Exception | None
    try:
        if fn is None:
            raise Permanent(f"no handler for job kind {job.kind!r}")
        if fn(job):
            db.session.rollback()
            return  # done, and marked so, in the handler's own transaction
        error = None
    except Failure as exc:
        error = exc
    except Exception as exc:  # unknown failures are retried, never dropped
        log.exception("outbox job %s (%s) failed", job.id, job.kind)
        error = exc
    db.session.rollback()
    _finish(job, error)


def run_now(job_id: int) -> None:
    """Claim and run a job this process has just committed, unless a worker took it first.

    The claim is one prepared statement on the job's key: the due-jobs query of ``_claim``
    (its ordering and its subquery) has nothing to choose between here.
    """
    with unit_of_work(orm=False) as uow:
        rows = uow.run(_CLAIM_ONE, {"job_id": job_id, "until": lease_end()})
    for row in rows:  # none if a worker took it first
        _process(ClaimedJob.of(row))


def _finish_many(results: dict[int, Exception | None], personal: set[int]) -> None:
    """Mark the successes done in one statement; failures one by one.

    ``personal`` names the jobs whose payload identifies a person; when one of
    them is done, its old row image must leave the SQLite files too.
    """
    done = [job_id for job_id, error in results.items() if error is None]
    if done:
        with unit_of_work() as uow:
            uow.session.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_(done), OutboxJob.state == "running")
                .values(state="done", finished_at=utcnow(), locked_until=None, last_error=None, payload={})
            )
            if personal.intersection(done):
                uow.after_commit(wipe_free_space)
    for job_id, error in results.items():
        if error is not None:
            _finish_failed(job_id, error)


def _process_batch(fn: BatchHandler, jobs: list[ClaimedJob]) -> None:
    personal = {job.id for job in jobs if _without_personal(job.payload) != job.payload}
    try:
        results = fn(jobs)
    except Exception as exc:  # unknown failures are retried, never dropped
        log.exception("outbox batch of %d jobs failed", len(jobs))
        results = {job.id: exc for job in jobs}
    db.session.rollback()
    _finish_many({job.id: results.get(job.id, RetryLater("no outcome reported")) for job in jobs}, personal)


def run_due(limit: int | None = None) -> int:
    claimed = _claim(limit or current_app.config["OUTBOX_CLAIM_SIZE"])
    batches: dict[BatchHandler, list[ClaimedJob]] = {}
    for job in claimed:
        fn = BATCH_HANDLERS.get(job.kind)
        if fn is None:
            _process(job)
        else:
            batches.setdefault(fn, []).append(job)
    for fn, jobs in batches.items():
        _process_batch(fn, jobs)
    return len(claimed)


def run_forever(stop: threading.Event, poll_seconds: float = 1.0, every_pass: Callable[[], None] | None = None) -> None:
    """Work until ``stop`` is set; ``every_pass`` runs after each pass (housekeeping)."""
    while not stop.is_set():
        try:
            done = run_due()
            if every_pass:
                every_pass()
        except Exception:
            log.exception("outbox pass failed; trying again")
            db.session.rollback()
            done = 0
        if not done:
            stop.wait(poll_seconds)


def cancel_pending(uow: UnitOfWork, subscription_ref: str | list[str], kinds: tuple[str, ...]) -> None:
    """Drop queued jobs that no longer make sense (mail to a deleted person); one ref or many."""
    refs = [subscription_ref] if isinstance(subscription_ref, str) else subscription_ref
    # Core does not autoflush, so jobs added earlier in this unit of work go first.
    uow.flush()
    if len(refs) == 1 and kinds == ("mail",):  # every opt-out: a statement with nothing to expand
        uow.send(_CANCEL_MAIL, {"ref": refs[0], "at": utcnow()})
        return
    # The jobs of those refs first, by the ref alone: given the state too, SQLite (which keeps
    # no statistics) walks every pending job by ix_outbox_jobs_due instead, and a purge met a
    # hundred thousand of them at every batch (bench/README.md, retention purge).
    found = uow.conn.execute(_JOBS_OF, {"refs": refs})
    ids = [job.id for job in found if job.kind in kinds and job.state in _OPEN]
    if ids:
        uow.conn.execute(_CANCEL, {"ids": ids, "at": utcnow()})


def forget_finished(uow: UnitOfWork, subscription_ref: str) -> None:
    """At erasure: the person's finished jobs keep no reason text (a dead letter keeps its own, which
    this service wrote and which names nobody: an operator still has to act on it)."""
    uow.send(_FORGET_FINISHED, {"ref": subscription_ref})


# Every opt-out runs this. A Core statement built once: the ORM's bulk-update path
# (session synchronisation, per-call option handling) costs more than the UPDATE.
_JOBS = OutboxJob.__table__.c
_CANCELLED = {"state": "done", "finished_at": bindparam("at"), "last_error": "cancelled", "payload": {}}
_OPEN = ("pending", "running")
_JOBS_OF = select(_JOBS.id, _JOBS.kind, _JOBS.state).where(
    _JOBS.subscription_ref.in_(bindparam("refs", expanding=True))
)
_CANCEL = (
    update(OutboxJob.__table__)
    .where(_JOBS.id.in_(bindparam("ids", expanding=True)), _JOBS.state.in_(_OPEN))  # still open, as read
    .values(_CANCELLED)
)
_FORGET_FINISHED = Prepared(
    update(OutboxJob.__table__)
    .where(
        _JOBS.subscription_ref == bindparam("ref"),
        or_(_JOBS.state == "done", _JOBS.state == "discarded"),
        _JOBS.last_error.is_not(None),
        _JOBS.last_error != "cancelled",
    )
    .values(last_error=None)
)
# A job done (``finish_in``), and a job this process has just written claimed (``run_now``).
_DONE_STATEMENT = (
    update(OutboxJob.__table__)
    .where(_JOBS.id == bindparam("job_id"), _JOBS.state == "running")
    .values(state="done", finished_at=bindparam("at"), locked_until=None, last_error=None, payload=bindparam("payload"))
)
_DONE = Prepared(_DONE_STATEMENT)
_DONE_ANSWERED = Prepared(_DONE_STATEMENT.returning(_JOBS.id))
_CLAIM_ONE = Prepared(
    update(OutboxJob.__table__)
    .where(_JOBS.id == bindparam("job_id"), _JOBS.state == "pending")
    .values(state="running", locked_until=bindparam("until"), attempts=_JOBS.attempts + 1)
    .returning(_JOBS.id, _JOBS.kind, _JOBS.notice, _JOBS.subscription_ref, _JOBS.payload, _JOBS.attempts)
)
_CANCEL_MAIL = Prepared(
    update(OutboxJob.__table__)
    .where(
        _JOBS.subscription_ref == bindparam("ref"),
        _JOBS.kind == "mail",
        or_(_JOBS.state == "pending", _JOBS.state == "running"),
    )
    .values(_CANCELLED)
)


# The dashboard's queue figures count at most this many jobs of a notice, then say "more than".
# An import queues a sync job for each contact (850,000 for a million-row file): counted
# exactly, the overview walked them all at every visit, half a second on SQLite.
DASHBOARD_COUNT_CAP = 10_000
_WAITING = WaitForConfiguration.__name__  # how ``describe`` starts such a job's reason


def status(notices: Collection[str] | None = None, cap: int | None = None) -> dict[str, Any]:
    """The queue's health: all of it (the operator's CLI), or only the jobs of these notices (a dashboard user).

    With ``cap`` (the dashboard) every figure is read through an index and stops counting at
    ``cap`` + 1 jobs a notice: ``over`` names the counts that reached it, and a waiting line's
    ``more`` says its notice's did.
    """
    if cap is not None and notices is not None:
        return _bounded_status(sorted(notices), cap)

    def scoped(query: Any) -> Any:
        return query if notices is None else query.where(OutboxJob.notice.in_(list(notices)))

    counts = dict(
        db.session.execute(scoped(select(OutboxJob.state, func.count())).group_by(OutboxJob.state)).all()
    )
    dead = db.session.execute(
        scoped(select(OutboxJob.id, OutboxJob.kind, OutboxJob.notice, OutboxJob.last_error))
        .where(OutboxJob.state == "dead")
        .order_by(OutboxJob.id)
        .limit(50)
    ).all()

    def oldest(*kinds: str) -> float | None:
        query = scoped(select(func.min(OutboxJob.created_at))).where(OutboxJob.state.in_(("pending", "running")))
        if kinds:
            query = query.where(OutboxJob.kind.in_(kinds))
        found = db.session.execute(query).scalar()
        return round((utcnow() - found).total_seconds(), 1) if found else None

    waiting = db.session.execute(
        scoped(select(OutboxJob.kind, OutboxJob.notice, OutboxJob.last_error, func.count()))
        .where(OutboxJob.state == "pending", OutboxJob.last_error.like("WaitForConfiguration%"))
        .group_by(OutboxJob.kind, OutboxJob.notice, OutboxJob.last_error)
    ).all()
    return {
        "counts": {state: counts.get(state, 0) for state in ("pending", "running", "done", "dead", "discarded")},
        "oldest_pending_age_seconds": oldest(),
        "oldest_pending_opt_out_age_seconds": oldest(*URGENT_KINDS),
        "waiting_for_configuration": [
            {"kind": kind, "notice": notice, "reason": reason, "jobs": n} for kind, notice, reason, n in waiting
        ],
        "dead_letters": [{"id": r.id, "kind": r.kind, "notice": r.notice, "reason": r.last_error} for r in dead],
    }


def _bounded_status(notices: list[str], cap: int) -> dict[str, Any]:
    """``status`` for the dashboard: each statement reads one range of an index and stops
    early (``ix_outbox_jobs_kind_state_notice``, and ``ix_outbox_jobs_failed`` for the jobs
    that have failed: migration 0013)."""
    job = OutboxJob
    session = db.session
    # Queued jobs are counted by the kinds there are handlers for: a job of any other kind is a
    # dead letter at the worker's next pass (``_process``), and is counted as one then.
    kinds = sorted({*HANDLERS, *BATCH_HANDLERS})
    failed = job.last_error.is_not(None)  # every dead letter has its reason (``_finish_failed``)

    def capped(*where: Any) -> int:
        found = select(literal(1)).select_from(job).where(*where).limit(cap + 1).subquery()
        return int(session.execute(select(func.count()).select_from(found)).scalar_one())

    counts = {state: 0 for state in ("pending", "running", "dead")}  # a user of no notice sees noughts
    over: set[str] = set()
    for state in counts:
        for notice in notices:
            if state == "dead":
                found = capped(job.notice == notice, job.state == state, failed)
            else:
                found = capped(job.kind.in_(kinds), job.state == state, job.notice == notice)
            counts[state] += found
            if found > cap:
                over.add(state)
    # The oldest waiting opt-out is the first by id of each notice, state and kind (ids are
    # given in the order jobs are written): one step into the index each.
    oldest: datetime | None = None
    for kind in URGENT_KINDS:
        for state in ("pending", "running"):
            for notice in notices:
                first = session.execute(
                    select(job.created_at)
                    .where(job.kind == kind, job.state == state, job.notice == notice)
                    .order_by(job.id)
                    .limit(1)
                ).scalar()
                if first is not None and (oldest is None or first < oldest):
                    oldest = first
    waiting: Counter[tuple[str, str, str]] = Counter()
    waiting_over: set[str] = set()  # the notices whose waiting jobs reached the cap
    for notice in notices:
        # A waiting job's reason starts with the class's name: the range starts there.
        rows = session.execute(
            select(job.kind, job.last_error)
            .where(job.notice == notice, job.state == "pending", failed, job.last_error >= _WAITING)
            .where(job.last_error.like(f"{_WAITING}%"))
            .limit(cap + 1)
        ).all()
        if len(rows) > cap:
            waiting_over.add(notice)
        waiting.update((kind, notice, str(reason)) for kind, reason in rows)  # each has one: it matched
    dead = session.execute(
        select(job.id, job.kind, job.notice, job.last_error)
        .where(job.notice.in_(notices), job.state == "dead", failed)
        .order_by(job.id)
        .limit(50)
    ).all()
    return {
        "counts": counts,
        "cap": cap,
        "over": sorted(over),
        "oldest_pending_opt_out_age_seconds": round((utcnow() - oldest).total_seconds(), 1) if oldest else None,
        "waiting_for_configuration": [
            {"kind": kind, "notice": notice, "reason": reason, "jobs": n, "more": notice in waiting_over}
            for (kind, notice, reason), n in waiting.items()
        ],
        "dead_letters": [{"id": r.id, "kind": r.kind, "notice": r.notice, "reason": r.last_error} for r in dead],
    }


def _operator_evidence(kind: str, job: Any, actor: str, channel: str) -> ledger.Evidence:
    """An operator's decision about a dead letter, as evidence naming who decided."""
    notice = current_app.extensions["notices"].get(job.notice)
    return ledger.Evidence(
        type=kind,
        channel=channel,
        notice=job.notice,
        notice_version=notice.version if notice else None,
        subscription_ref=job.subscription_ref,
        # Only the error's kind: the chain keeps nothing a provider wrote, which could name the person.
        facts={"job": job.id, "job_kind": job.kind, "reason": reason_code(job.last_error), "actor": actor},
    )


def retry_dead(
    ids: list[int] | None = None,
    actor: str | None = None,
    channel: str = "operator",
    notices: Collection[str] | None = None,
) -> int:
    """Put dead letters (all, or those named) back in the queue with fresh attempts.

    With an ``actor``, each retry is evidence naming them, written in the same
    transaction as the state change: a retry recorded but not done (or done but
    not recorded) would be a false account of who did what.
    """
    query = update(OutboxJob).where(OutboxJob.state == "dead")
    if ids is not None:
        query = query.where(OutboxJob.id.in_(ids))
    if notices is not None:
        query = query.where(OutboxJob.notice.in_(list(notices)))
    statement = (
        query.values(state="pending", attempts=0, next_attempt_at=utcnow(), finished_at=None)
        .returning(OutboxJob.id, OutboxJob.kind, OutboxJob.notice, OutboxJob.subscription_ref, OutboxJob.last_error)
        .execution_options(synchronize_session=False)
    )
    with unit_of_work() as uow:
        jobs = sorted(uow.session.execute(statement).all(), key=lambda job: job.id)
        if actor is not None:
            evidence = [_operator_evidence("provider_sync_retried", job, actor, channel) for job in jobs]
            ledger.append(uow, evidence)
    return len(jobs)


def discard_dead(
    ids: list[int] | None, actor: str, channel: str = "operator", notices: Collection[str] | None = None
) -> int:
    """Give up on dead letters (all, or those named), on an operator's word.

    The job is kept as ``discarded`` without personal data, and the decision is
    evidence naming the actor, in the same transaction: a discarded opt-out
    means the provider was never told, which someone must be able to answer for.
    """
    query = select(OutboxJob).where(OutboxJob.state == "dead").order_by(OutboxJob.id)
    if ids is not None:
        query = query.where(OutboxJob.id.in_(ids))
    if notices is not None:
        query = query.where(OutboxJob.notice.in_(list(notices)))
    with unit_of_work() as uow:
        jobs = list(uow.session.execute(query.with_for_update()).scalars())
        evidence = []
        for job in jobs:
            evidence.append(_operator_evidence("provider_sync_discarded", job, actor, channel))
            if _without_personal(job.payload) != job.payload:
                uow.after_commit(wipe_free_space)
            job.state, job.finished_at, job.payload = "discarded", utcnow(), _without_personal(job.payload)
        if evidence:
            ledger.append(uow, evidence)
    return len(jobs)
