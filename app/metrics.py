"""Prometheus metrics at ``/metrics``, for the operator's alerts on the service's promises.

Two kinds of figures:
- counted as they happen, in the process that saw them: requests by route template and
  status with their latency, provider calls by outcome, webhook deliveries by result, the
  progress of long commands;
- read from the database when Prometheus scrapes: the outbox's depth by kind and state, the
  age of the oldest pending opt-out against the 48-hour promise, dead letters, the ledger's
  head and checkpoint, the last chain check, the outbox worker's heartbeat. Those are right
  whichever process wrote the rows, and cost a few indexed queries per scrape.

With ``PROMETHEUS_MULTIPROC_DIR`` set (deploy/gunicorn.conf.py and the systemd units set it
for the web workers, the outbox worker and the timers alike), every process writes its
counters to files there and ``/metrics`` adds them up, so the figures are whole however
many gunicorn workers answered and include the worker's provider calls. prometheus_client
reads the variable when it is first imported: it must be in the environment before the
process starts, never set from code.

``/metrics`` answers only clients in ``METRICS_ALLOW`` (loopback by default); anyone else
gets the same 404 as an unknown path.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .extensions import db, limiter

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

OPT_OUT_PROMISE_SECONDS = 48 * 3600  # the notices' promise: an opt-out reaches every provider within 48 h
# Pages answer in 2-200 ms on two cores; the long tail and a provider's timeout above that.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)

REQUESTS = Counter(
    "consent_http_requests_total", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "consent_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)
PROVIDER_CALLS = Counter(
    "consent_provider_calls_total",
    "Calls to Mailchimp and APSIS by operation and outcome (ok, rate_limited, retry, refused, not_found, unreachable).",
    ["provider", "operation", "outcome"],
)
PROVIDER_RATE_LIMITED = Counter(
    "consent_provider_rate_limited_total", "Provider answers of 429 Too Many Requests.", ["provider"]
)
WEBHOOK_DELIVERIES = Counter(
    "consent_webhook_deliveries_total", "Webhook deliveries from the providers, by provider and result.",
    ["provider", "result"],
)
# The last figure written wins, whichever process wrote it: a command reports its own run.
TASK_DONE = Gauge(
    "consent_task_done", "Units done by the running or last long command (import, purge, verify, backup).",
    ["task"], multiprocess_mode="mostrecent",
)
TASK_TOTAL = Gauge(
    "consent_task_total", "Units to do for that command (-1 when not known).", ["task"], multiprocess_mode="mostrecent"
)
TASK_UPDATED = Gauge(
    "consent_task_updated_timestamp_seconds", "When that command last reported progress.", ["task"],
    multiprocess_mode="mostrecent",
)


def record_progress(task: str, done: int, total: int | None) -> None:
    """How far a long command (``import``, ``purge``, ``verify``, ``backup``) has come."""
    TASK_DONE.labels(task).set(done)
    TASK_TOTAL.labels(task).set(-1 if total is None else total)
    TASK_UPDATED.labels(task).set(time.time())


def provider_call(provider: str, operation: str, status: int | None) -> None:
    """One call's outcome from its HTTP status (None: no answer at all)."""
    if status is None:
        outcome = "unreachable"
    elif status < 400:
        outcome = "ok"
    elif status == 429:
        outcome = "rate_limited"
        PROVIDER_RATE_LIMITED.labels(provider).inc()
    elif status == 404:
        outcome = "not_found"
    elif status >= 500 or status == 408:
        outcome = "retry"
    else:
        outcome = "refused"
    PROVIDER_CALLS.labels(provider, operation, outcome).inc()


def webhook_delivery(provider: str, result: str) -> None:
    WEBHOOK_DELIVERIES.labels(provider, result).inc()


# --- read from the database at scrape time ----------------------------------------------


def _age(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max((now - at).total_seconds(), 0.0)


class DatabaseCollector(Collector):
    """The queue, the ledger and the marks, as they stand in the database when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("consent_database_up", "1 when the scrape could read the database.")
        try:
            with self.app.app_context():
                figures = list(self._figures())
                db.session.rollback()
        except Exception as exc:  # the scrape still answers: the database being away is the news
            log.warning("metrics: the database could not be read (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from figures

    def _figures(self) -> Iterator[Metric]:
        from . import service_marks
        from .ledger import checkpoint_path
        from .ledger import pending as ledger_pending
        from .models import ConsentEvent, OutboxJob, utcnow
        from .outbox import URGENT_KINDS

        now = utcnow()
        jobs = GaugeMetricFamily(
            "consent_outbox_jobs", "Outbox jobs not yet done, by kind and state (pending, running, dead).",
            labels=["kind", "state"],
        )
        dead = GaugeMetricFamily("consent_outbox_dead_letters", "Jobs given up on, waiting for an operator.",
                                 labels=["kind"])
        rows = db.session.execute(
            select(OutboxJob.kind, OutboxJob.state, func.count())
            .where(OutboxJob.state.in_(("pending", "running", "dead")))
            .group_by(OutboxJob.kind, OutboxJob.state)
        ).all()
        for kind, state, count in rows:
            jobs.add_metric([kind, state], count)
            if state == "dead":
                dead.add_metric([kind], count)
        yield jobs
        yield dead

        oldest = db.session.execute(
            select(func.min(OutboxJob.created_at)).where(
                OutboxJob.state.in_(("pending", "running")), OutboxJob.kind.in_(URGENT_KINDS)
            )
        ).scalar()
        age = GaugeMetricFamily(
            "consent_optout_oldest_pending_age_seconds",
            "Age of the oldest opt-out still to reach a provider (0 when none is waiting).",
        )
        age.add_metric([], _age(oldest, now) or 0.0)
        yield age
        promise = GaugeMetricFamily("consent_optout_promise_seconds", "The notices' promise: 48 hours.")
        promise.add_metric([], OPT_OUT_PROMISE_SECONDS)
        yield promise

        head = db.session.execute(
            select(ConsentEvent.seq, ConsentEvent.at)
            .where(ConsentEvent.seq.is_not(None))
            .order_by(ConsentEvent.seq.desc())
            .limit(1)
        ).first()
        events = GaugeMetricFamily("consent_ledger_events", "Events in the evidence chain.")
        events.add_metric([], head.seq if head else 0)
        yield events
        if head is not None:
            last = GaugeMetricFamily("consent_ledger_last_event_age_seconds", "Time since the last event was chained.")
            last.add_metric([], _age(head.at, now) or 0.0)
            yield last
        yield from self._checkpoint(checkpoint_path(), head.seq if head else 0)
        waiting = ledger_pending(db.session)
        unchained = GaugeMetricFamily(
            "consent_ledger_pending_events", "Evidence events written and not chained yet (the sequencer's queue)."
        )
        unchained.add_metric([], waiting.count)
        yield unchained
        wait_age = GaugeMetricFamily(
            "consent_ledger_pending_oldest_age_seconds",
            "Age of the oldest evidence event waiting for its place in the chain (0 when none is).",
        )
        wait_age.add_metric([], waiting.oldest_seconds or 0.0)
        yield wait_age
        bound = GaugeMetricFamily(
            "consent_ledger_max_merge_delay_seconds", "How long evidence may wait for its place in the chain."
        )
        bound.add_metric([], waiting.bound_seconds)
        yield bound

        ok, failed = service_marks.read(service_marks.LEDGER_VERIFY_OK), service_marks.read(
            service_marks.LEDGER_VERIFY_FAILED
        )
        verified = GaugeMetricFamily(
            "consent_ledger_verify_ok", "1 when the last `ledger verify` passed, 0 when it failed or never ran."
        )
        verified.add_metric([], 1 if ok is not None and (failed is None or ok > failed) else 0)
        yield verified
        last_run = max((at for at in (ok, failed) if at is not None), default=None)
        if last_run is not None:
            ran = GaugeMetricFamily("consent_ledger_verify_age_seconds", "Time since `ledger verify` last ran.")
            ran.add_metric([], _age(last_run, now) or 0.0)
            yield ran

        beat = service_marks.read(service_marks.WORKER_HEARTBEAT)
        seen = GaugeMetricFamily("consent_worker_seen", "1 once an outbox worker has ever reported.")
        seen.add_metric([], 0 if beat is None else 1)
        yield seen
        if beat is not None:
            heartbeat = GaugeMetricFamily(
                "consent_worker_heartbeat_age_seconds", "Time since an outbox worker last reported."
            )
            heartbeat.add_metric([], _age(beat, now) or 0.0)
            yield heartbeat

    @staticmethod
    def _checkpoint(path: Any, head_seq: int) -> Iterator[Metric]:
        import json

        try:
            written = path.stat().st_mtime
            seq = int(json.loads(path.read_text()).get("seq", 0))
        except (OSError, ValueError, AttributeError):
            return
        age = GaugeMetricFamily(
            "consent_ledger_checkpoint_age_seconds",
            "Time since the signed checkpoint outside the database was written.",
        )
        age.add_metric([], max(time.time() - written, 0.0))
        yield age
        behind = GaugeMetricFamily(
            "consent_ledger_events_after_checkpoint", "Events chained since the signed checkpoint was written."
        )
        behind.add_metric([], max(head_seq - seq, 0))
        yield behind


# --- the route and the request instruments ------------------------------------------------


def _allowed(address: str | None, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network) for network in networks)


@bp.get("/metrics")
@limiter.exempt
def metrics() -> Response:
    if not _allowed(request.remote_addr, current_app.config["METRICS_ALLOW"]):
        abort(404)
    registry = current_app.extensions["metrics_registry"]
    response = Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _registry(app: Flask) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (REQUESTS, LATENCY, PROVIDER_CALLS, PROVIDER_RATE_LIMITED, WEBHOOK_DELIVERIES,
                          TASK_DONE, TASK_TOTAL, TASK_UPDATED):
            registry.register(collector)
    registry.register(DatabaseCollector(app))
    return registry


def init_app(app: Flask) -> None:
    """Register the request instruments and the ``/metrics`` route."""
    app.register_blueprint(bp)
    app.extensions["metrics_registry"] = _registry(app)

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is None:
            return response
        route = request.url_rule.rule if request.url_rule is not None else "-"
        if route == "/metrics":
            return response  # a scrape does not count itself
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        return response
