"""Benchmark: the dashboard's subscriber list and search at 1,000,000 subscribers.

1,000,000 subscriptions (two notices, three statuses, addresses spread over the alphabet)
are written straight into a fresh database; gunicorn serves it with production-like
settings, and a logged-in marketer asks for each kind of page in turn: the whole list,
one notice, one notice and status, a deep page (keyset ``after=``), a broad search (one
letter, ~1/26 of all rows) and a narrow one, then the overview every login lands on.
Goal: p95 <= 100 ms for each.

Run: .venv/bin/python bench/dashboard_search.py [--rows N] [--requests N] [--database sqlite|postgresql://...]
Prints a table and appends it to bench/results.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402  (bench/ is on the path)
    dashboard_viewer,
    empty_database,
    label,
    percentile,
    report,
    service_env,
    subscription_row,
    timed_pages,
)
from sqlalchemy import insert, text  # noqa: E402

from app import create_app, tallies  # noqa: E402
from app.addresses import email_hash  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import Subscription, utcnow  # noqa: E402
from tests.support import Service, free_port  # noqa: E402

CHUNK = 20_000
STATUSES = ("subscribed", "subscribed", "subscribed", "unsubscribed", "pending")


def address(i: int) -> str:
    # A letter first, so that a one-letter search matches about 1/26 of the rows.
    letters = string.ascii_lowercase
    return f"{letters[i % 26]}{letters[(i // 26) % 26]}.person{i}@firma{i % 997}.se"


def fill(env: dict[str, str], rows: int) -> float:
    app = create_app(env=env)
    started = time.perf_counter()
    now = utcnow()
    with app.app_context():
        empty_database()
        versions = {slug: notice.version for slug, notice in app.extensions["notices"].items()}
        for start in range(0, rows, CHUNK):
            batch = []
            for i in range(start, min(start + CHUNK, rows)):
                notice = "munkeby" if i % 3 else "mysoft"
                status = STATUSES[i % len(STATUSES)]
                batch.append(
                    subscription_row(
                        address(i), email_hash(address(i)), notice, versions[notice], status, now, name=f"Person {i}"
                    )
                )
            db.session.execute(insert(Subscription), batch)
            db.session.commit()
        # What the worker of a live service does within a second of such writes: the tallies the
        # triggers wrote (a row each here) summed to one row a figure.
        tallies.fold()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("ANALYZE subscriptions"))
        else:
            db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return time.perf_counter() - started


def deep_after(session: requests.Session, url: str, pages: int) -> str:
    """The keyset of page ``pages`` of the munkeby list (or its last page), followed link by link."""
    after = ""
    for _ in range(pages):
        page = session.get(url + "/dashboard/subscribers?notice=munkeby" + after).text
        found = re.search(r'rel="next" href="[^"]*after=(\d+)', page)
        if found is None:  # a small run has fewer pages
            break
        after = "&after=" + found.group(1)
    return after


def run(database: str, rows: int, count: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        instance = Path(folder) / "instance"
        env = service_env(instance, database)
        fill_seconds = fill(env, rows)
        service = Service(env, free_port(), Path(folder) / "gunicorn.log")
        try:
            service.wait_until_healthy()
            session = dashboard_viewer(service)
            pages = {
                "whole list": "",
                "one notice": "?notice=munkeby",
                "notice + status": "?notice=munkeby&status=unsubscribed",
                "page 200 of one notice": "?notice=munkeby" + deep_after(session, service.url, 200),
                "search, one letter": "?q=m",
                "search, one letter, one notice": "?q=m&notice=mysoft",
                "search, narrow": "?q=mq.person",
            }
            # Each list page must link to a subscriber's page. The overview every login lands on
            # (counts by status, suppressions, the chart, the customers due for review, the contacts
            # not yet informed, the queue) last.
            asked = [
                (what, "/dashboard/subscribers" + query, count, "/dashboard/subscribers/")
                for what, query in pages.items()
            ]
            asked.append(("overview (the landing page)", "/dashboard/", count, "/dashboard/subscribers"))
            lines = []
            for what, path, times_asked, marker in asked:
                times = timed_pages(session, service.url + path, times_asked, marker)
                p95, median = percentile(times, 0.95), statistics.median(times)
                lines.append(
                    f"| {what}, {label(database)} | p95 {p95 * 1000:.0f} ms (median {median * 1000:.0f} ms, "
                    f"{times_asked} requests) | <= 100 ms | {rows:,} rows, written in {fill_seconds:.0f} s |"
                )
            return lines
        finally:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if args.rows < 20_000 or args.requests < 1:
        parser.error("--rows must be at least 20000 (the deep page is page 200) and --requests at least 1")
    report("Dashboard subscriber list and search", run(args.database, args.rows, args.requests))


if __name__ == "__main__":
    main()
