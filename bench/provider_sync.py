"""Benchmark: how fast queued opt-outs reach the providers.

1. Mailchimp: 100,000 queued opt-outs against the fake Mailchimp with 100 ms of
   latency on every call; the service keeps to 10 connections. Goal: <= 30 s
   (one call per member would need 100,000 x 0.1 s / 10 = 1,000 s).
2. APSIS: opt-in consents against the fake APSIS enforcing 100 requests/s.
   Goal: >= 90 requests/s with no 429.

Run: .venv/bin/python bench/provider_sync.py [--members N] [--database sqlite|postgresql]
Prints a table and appends it to bench/results.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import empty_database, label, report, service_env, shared_limits  # noqa: E402  (bench/ is on the path)

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import OutboxJob  # noqa: E402
from app.outbox import run_due  # noqa: E402
from tests.fakes.apsis import FakeApsis  # noqa: E402
from tests.fakes.mailchimp import FakeMailchimp  # noqa: E402
from tests.support import queue_sync_jobs, stop_workers  # noqa: E402


def make_app(instance: Path, database: str, extra: dict[str, str]):  # type: ignore[no-untyped-def]
    return create_app(env=service_env(instance, database, **extra))


def drain() -> float:
    started = time.perf_counter()
    while run_due():
        pass
    return time.perf_counter() - started


def _start_mailchimp() -> tuple[FakeMailchimp, dict[str, str]]:
    fake = FakeMailchimp(latency=0.1).start()
    fake.add_list("munkeby0001", merge_fields=["FNAME", "LNAME", "UNSUBURL"])
    return fake, {"MAILCHIMP_API_KEY": fake.api_key, "MAILCHIMP_API_URL": fake.url}


def _start_apsis() -> tuple[FakeApsis, dict[str, str]]:
    fake = FakeApsis().start()
    return fake, {
        "APSIS_API_URL": fake.url,
        "APSIS_CLIENT_ID": fake.client_id,
        "APSIS_CLIENT_SECRET": fake.client_secret,
    }


def _figures(fake: FakeMailchimp | FakeApsis) -> dict[str, int]:
    figures = {"requests": len(fake.requests)}
    for name in ("max_concurrent", "count_429", "max_per_second"):
        if hasattr(fake, name):
            figures[name] = getattr(fake, name)
    return figures


def _serve(start, conn) -> None:  # type: ignore[no-untyped-def]
    fake, settings = start()
    try:
        conn.send(settings)
        conn.recv()  # wait until the benchmark is done
        conn.send(_figures(fake))
    finally:
        fake.stop()


@contextmanager
def fake_in_own_process(start) -> Iterator[tuple[dict[str, str], dict[str, int]]]:  # type: ignore[no-untyped-def]
    """Run a fake provider in its own process, as the real one is: measuring it
    inside ours would let the two compete for the interpreter and skew both.
    Yields the service settings for it, and a dict filled with its figures on exit."""
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(start, theirs))
    server.start()
    figures: dict[str, int] = {}
    try:
        yield ours.recv(), figures
    finally:
        ours.send("done")
        figures.update(ours.recv())
        server.join(timeout=10)


def run_sync(database: str, settings: dict[str, str], notice: str, count: int) -> tuple[float, int]:
    """Queue ``count`` opt-outs for ``notice``, drain them; seconds taken and jobs left."""
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp), database, settings)
        with app.app_context():
            empty_database()
            queue_sync_jobs(notice, count, "unsubscribed", "sync_optout")
            seconds = drain()
            left = db.session.query(OutboxJob).filter(OutboxJob.state != "done").count()
            db.engine.dispose()
    return seconds, left


def bench_mailchimp(database: str, members: int) -> list[str]:
    with fake_in_own_process(_start_mailchimp) as (settings, figures):
        seconds, left = run_sync(database, settings, "munkeby", members)
    return [
        f"| Mailchimp: {members:,} opt-outs, 100 ms per call | {seconds:.1f} s | <= 30 s "
        f"| {figures['requests']} calls, max {figures['max_concurrent']} at once, {left} not done |"
    ]


def bench_apsis(database: str, profiles: int) -> list[str]:
    with fake_in_own_process(_start_apsis) as (settings, figures):
        seconds, left = run_sync(database, settings, "mysoft", profiles)
    # One token request comes before the paced profile calls.
    rate = (figures["requests"] - 1) / seconds
    return [
        f"| APSIS: {profiles:,} opt-out consents at a 100 req/s limit | {rate:.1f} req/s | >= 90 req/s, "
        f"no 429 | {figures['count_429']} answered 429, peak {figures['max_per_second']}/s, {left} not done |"
    ]


def bench_outbox_workers(database: str, members: int, counts: tuple[int, ...] = (1, 2, 4)) -> list[str]:
    """``members`` opt-outs drained by 1, 2 and 4 ``outbox run`` processes side by side in
    one run: how the worker side grows with processes, which together keep to Mailchimp's 10
    connections by counting them in Redis (``harness.shared_limits``)."""
    rows = []
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp, fake_in_own_process(_start_mailchimp) as (settings, figures):
            shared = shared_limits()
            env = service_env(Path(tmp), database, **settings, **shared)
            app = create_app(env=env)
            with app.app_context():
                empty_database()
                queue_sync_jobs("munkeby", members, "unsubscribed", "sync_optout")
                db.session.remove()
                started = time.perf_counter()
                processes = [
                    subprocess.Popen(
                        [sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "run"],
                        cwd=REPO,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for _ in range(workers)
                ]
                try:
                    left = members
                    while left and time.perf_counter() - started < 600:
                        time.sleep(0.25)
                        left = db.session.query(OutboxJob).filter(OutboxJob.state != "done").count()
                        db.session.rollback()
                    seconds = time.perf_counter() - started
                finally:
                    stop_workers(processes)
                db.session.remove()
                db.engine.dispose()
        rows.append(
            f"| outbox run x {workers}: {members:,} Mailchimp opt-outs, {label(database)} | {seconds:.1f} s "
            f"({members / seconds:,.0f} jobs/s) | grows with workers | start-up included; "
            f"{'limits shared in Redis' if shared else 'no Redis: each worker counts its connections alone'}; "
            f"{figures['requests']} calls, max {figures['max_concurrent']} at once, {left} not done |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--apsis-profiles", type=int, default=900)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    rows = bench_mailchimp(args.database, args.members) + bench_apsis(args.database, args.apsis_profiles)
    report(f"Provider sync ({label(args.database)})", rows)


if __name__ == "__main__":
    main()
