"""Benchmark: a retention purge of 100,000 expired rows among 1,000,000, with the service up.

1,000,000 Munkeby subscriptions are written straight into a fresh database; 100,000 of
them unsubscribed 400 days ago (past ``unsubscribed_days = 365``), the rest subscribed.
Every subscription carries a sign-up event with personal details in the ledger, and every
unsubscribed one an opt-out too, so the purge meets the rows it meets in service: it deletes
their details and chains a deletion event after each.
gunicorn serves the same database while ``retention purge`` runs, and a prober sends a
one-click unsubscribe (a write) and a consent lookup through the API (a read) in turn,
timing each. Goal: the purge within 20 s, and the service answering throughout: the
probe's worst latency during the purge is printed next to its latency before it.

Run: .venv/bin/python bench/retention_purge.py [--rows N] [--expired N] [--database sqlite|postgresql://...]
Prints a table and appends it to bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402  (bench/ is on the path)
    Prober,
    empty_database,
    flask_command,
    label,
    ms,
    report,
    service_env,
    settle_statistics,
    subscription_row,
)
from sqlalchemy import insert  # noqa: E402

from app import create_app, ledger  # noqa: E402
from app.addresses import email_hash  # noqa: E402
from app.database import unit_of_work  # noqa: E402
from app.extensions import db  # noqa: E402
from app.ledger import Evidence  # noqa: E402
from app.mail import unsubscribe_link  # noqa: E402
from app.models import Subscription, utcnow  # noqa: E402
from tests.support import Service, free_port  # noqa: E402

CHUNK = 20_000


def fill(env: dict[str, str], rows: int, expired: int) -> tuple[list[str], float]:
    """Write the rows; answers the unsubscribe paths of a few live subscribers, for the probe."""
    app = create_app(env=env)
    started = time.perf_counter()
    now = utcnow()
    old = now - timedelta(days=400)
    notice = app.extensions["notices"]["munkeby"]
    every = rows // expired  # one row in every this many has expired
    step = max(1, rows // 2000)  # about 2,000 live subscribers are probed
    probes = []
    with app.app_context():
        empty_database()
        for start in range(0, rows, CHUNK):
            batch = []
            for i in range(start, min(start + CHUNK, rows)):
                gone = i % every == 0
                address = f"person{i}@bench.example"
                status, at = ("unsubscribed", old) if gone else ("subscribed", now)
                row = subscription_row(address, email_hash(address), "munkeby", notice.version, status, at)
                batch.append({**row, "name": f"Person {i}", "unsubscribed_at": old if gone else None})
                if i >= 1 and (i - 1) % step == 0 and not gone:
                    link = unsubscribe_link("munkeby", row["ref"], row["email_hash"])
                    probes.append(link.removeprefix("https://news.example.org"))
            evidence = []
            for row in batch:
                details = {"email": row["email"], "ip": "192.0.2.10", "user_agent": "bench"}
                evidence.append(Evidence.under("signup_requested", notice, row["ref"], "web", {}, details))
                if row["status"] == "unsubscribed":
                    evidence.append(Evidence.under("opted_out", notice, row["ref"], "one_click", {}, details))
            with unit_of_work() as uow:
                uow.session.execute(insert(Subscription), batch)
                ledger.append(uow, evidence)
        settle_statistics()
        db.session.remove()
        db.engine.dispose()
    return probes, time.perf_counter() - started


def run(database: str, rows: int, expired: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        instance = Path(folder) / "instance"
        env = service_env(instance, database)
        probes, fill_seconds = fill(env, rows, expired)
        service = Service(env, free_port(), Path(folder) / "gunicorn.log")
        try:
            service.wait_until_healthy()
            both = ("--notice", "munkeby", "--notice", "mysoft")
            token = json.loads(service.flask("tokens", "create", "bench", "--scope", "read", *both).stdout)["token"]
            prober = Prober(service.url, probes, [f"person{i}@bench.example" for i in range(len(probes))], token)
            prober.start()
            time.sleep(3)  # latency before the purge
            began = time.perf_counter()
            purge = flask_command(env, "retention", "purge")
            seconds = time.perf_counter() - began
            ended = time.perf_counter()
            time.sleep(1)
            prober.stop.set()
            prober.join()
        finally:
            service.stop()
        if prober.errors:  # what the service logged about them, for a look at the cause
            errors = [line for line in service.log.read_text().splitlines() if "Error" in line or "error" in line]
            print("\n".join(errors[-40:]), file=sys.stderr)
        if purge.returncode != 0:
            raise SystemExit(purge.stderr[-2000:])
        for line in purge.stderr.splitlines():  # the purge's own account of where its time went
            if "retention:" in line:
                print(line, file=sys.stderr)
        purged = json.loads(purge.stdout)["purged"].get("munkeby", {}).get("unsubscribed_days", 0)
        before = [s for t, s in prober.samples if t < began]
        during = [s for t, s in prober.samples if began <= t <= ended]
        if during:  # where in the purge the slowest answer came, for a profile to look at
            worst_at, worst = max(((t, s) for t, s in prober.samples if began <= t <= ended), key=lambda p: p[1])
            where = f"{worst_at - began:.1f} s into a {seconds:.1f} s purge"
            print(f"slowest probe: {worst:.2f} s, {where}", file=sys.stderr)
        return [
            f"| retention purge, {label(database)} | {seconds:.1f} s for {purged:,} of {rows:,} rows | <= 20 s | "
            f"rows written in {fill_seconds:.0f} s beforehand |",
            f"| service during the purge, {label(database)} | {ms(during)} "
            f"({len(during)} probes, errors: {json.dumps(prober.errors) if prober.errors else 0}) | "
            f"answers throughout | before: {ms(before)} |",
        ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--expired", type=int, default=100_000)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if not 0 < args.expired <= args.rows:
        parser.error("--expired must be between 1 and --rows")
    report("Retention purge", run(args.database, args.rows, args.expired))


if __name__ == "__main__":
    main()
