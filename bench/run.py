"""Every benchmark, on SQLite and on PostgreSQL, in one run: one table, printed and
written to bench/results.md (the latest full run; git keeps the earlier ones).

Run: .venv/bin/python bench/run.py [--scale 0.1] [--only http,sync,...] [--postgres URL | --no-postgres]

``--scale`` shrinks the row and event counts (1 = the sizes the goals name) for a quick
look; the table says which scale it was taken at. PostgreSQL needs a database the runs may
empty (default ``postgresql://postgres@127.0.0.1:5432/bench``, created when missing); when
the server cannot be reached its rows are left out and the table says why.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import contact_import  # noqa: E402
import dashboard_search  # noqa: E402
import http_routes  # noqa: E402
import ledger_sequence  # noqa: E402
import ledger_verify  # noqa: E402
import provider_sync  # noqa: E402
import retention_purge  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/bench"


def suites(scale: float) -> dict[str, Callable[[str], list[str]]]:
    """Each benchmark as a function of the database, at the sizes the goals name times ``scale``."""

    def n(count: int) -> int:
        return max(100, int(count * scale))

    return {
        "http": lambda db: http_routes.run(db, seconds=10, workers=2),
        "sync": lambda db: provider_sync.bench_mailchimp(db, n(100_000)) + provider_sync.bench_apsis(db, 900),
        "import": lambda db: contact_import.run(db, n(1_000_000)),
        "purge": lambda db: retention_purge.run(db, n(1_000_000), n(100_000)),
        "verify": lambda db: ledger_verify.run(db, n(1_000_000)),
        "sequence": lambda db: ledger_sequence.run(db, n(200_000)),
        "dashboard": lambda db: dashboard_search.run(db, n(1_000_000), 100),
    }


def scaling(database: str, scale: float) -> list[str]:
    """How throughput grows with web processes and outbox workers (PostgreSQL)."""
    rows = []
    for workers in (1, 2, 4):
        rows += [r for r in http_routes.run(database, seconds=10, workers=workers) if not r.startswith("| subscribe")]
    return rows + provider_sync.bench_outbox_workers(database, max(100, int(100_000 * scale)))


def postgres_ready(url: str) -> str | None:
    """Create the benchmark database if missing; None when ready, else why not."""
    target = make_url(url)
    try:
        admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}).first()
            if not found:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
        admin.dispose()
    except Exception as exc:  # the server is away or refuses: say so in the table
        return f"PostgreSQL at {target.host}:{target.port} could not be used ({type(exc).__name__})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="row counts times this (default 1: the goals' sizes)")
    parser.add_argument(
        "--only", default="", help="comma-separated: http,sync,import,purge,verify,sequence,dashboard,scaling"
    )
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_POSTGRES))
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    if not 0.001 <= args.scale <= 1:
        parser.error("--scale must be between 0.001 and 1")
    chosen = [x for x in args.only.split(",") if x] or [*suites(1), "scaling"]
    unknown = set(chosen) - {*suites(1), "scaling"}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    databases, notes = ["sqlite"], []  # notes: why a database is left out
    if not args.no_postgres:
        why_not = postgres_ready(args.postgres)
        if why_not:
            notes.append(f"PostgreSQL rows left out: {why_not}")
        else:
            databases.append(args.postgres)

    sections: dict[str, list[str]] = {}
    paces: dict[str, str] = {}
    started = time.monotonic()
    now = pace()  # one reading between two sections serves as the after of one and the before of the next
    for name in chosen:
        rows = sections[name] = []
        before = now
        for database in databases:
            if name == "scaling":
                if database == "sqlite":
                    continue  # measured on PostgreSQL: SQLite has one writer at a time
                found = scaling(database, args.scale)
            else:
                found = suites(args.scale)[name](database)
            label = "SQLite" if database == "sqlite" else "PostgreSQL"
            rows += [f"| {label} {row}" for row in found]
            print(f"{name} on {label}: done after {time.monotonic() - started:.0f} s", file=sys.stderr)
        now = pace()
        paces[name] = f"pace (`run.pace`) {before} before, {now} after"

    about = (
        f"{time.strftime('%Y-%m-%d')}, scale {args.scale:g}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}" + "".join(f"; {note}" for note in notes)
    )
    print("\n".join([*COLUMNS, *(row for rows in sections.values() for row in rows)]))
    write_results({name: (f"{about}; {paces[name]}", rows) for name, rows in sections.items()})
    print(f"\n{time.monotonic() - started:.0f} s in all; bench/results.md updated", file=sys.stderr)


PACE_STEPS = 10_000_000
PACE_ROWS = 1_000_000


def pace() -> str:
    """How fast this machine is now, in two fixed pieces of plain Python (the best of three):
    a loop of additions, which stays in the processor's caches, and a million rows built (a
    SHA-256, an address), sorted and put in a dict, which goes through memory as an import does.

    A shared machine's speed can drift by half within an hour, and the two need not drift
    together; each section notes both before and after, so figures from different runs (and a
    run that drifted) can be read against each other.
    """
    loop = rows = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for step in range(PACE_STEPS):
            total += step
        loop = min(loop, time.perf_counter() - began)
        began = time.perf_counter()
        made = [(hashlib.sha256(b"%d" % i).hexdigest(), f"contact{i}@import.example") for i in range(PACE_ROWS)]
        made.sort()
        keyed = dict(made)
        rows = min(rows, time.perf_counter() - began)
        del made, keyed
    return f"{loop:.2f} s loop, {rows:.2f} s rows"


COLUMNS = ["| database | benchmark | measured | goal | notes |", "|---|---|---|---|---|"]
RESULTS = REPO / "bench" / "results.md"
ORDER = [*suites(1), "scaling"]


def write_results(fresh: dict[str, tuple[str, list[str]]]) -> None:
    """bench/results.md holds the latest run of each benchmark: those run now replace
    theirs, the others keep the figures (and the date) of their last run."""
    kept: dict[str, str] = {}
    if RESULTS.exists():
        for section in RESULTS.read_text(encoding="utf-8").split("\n## ")[1:]:
            kept[section.split(" ", 1)[0]] = "## " + section.strip() + "\n"
    for name, (about, rows) in fresh.items():
        kept[name] = "\n".join([f"## {name} ({about})", "", *COLUMNS, *rows]) + "\n"
    body = "\n".join(kept[name] for name in ORDER if name in kept)
    RESULTS.write_text(
        "# Benchmark results\n\nWritten by `bench/run.py`: the latest run of each benchmark, "
        "with its date and scale. Ratios are taken side by side within one run.\n\n" + body,
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
