"""Benchmark: ``flask --app wsgi ledger verify`` over 1,000,000 evidence events.

The events are appended through the ledger itself (so the chain is real), a third of them
with personal details, as sign-ups carry; then the command an operator runs checks every
hash, every link and every details digest. Goal: <= 15 s.

Run: .venv/bin/python bench/ledger_verify.py [--events N] [--database sqlite|postgresql://...]
Prints a table and appends it to bench/results.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import empty_database, flask_command, label, report, service_env, settle_statistics  # noqa: E402  (bench/ is on the path)

from app import create_app, ledger  # noqa: E402
from app.database import unit_of_work  # noqa: E402
from app.extensions import db  # noqa: E402
from app.ledger import Evidence  # noqa: E402

CHUNK = 20_000
KINDS = ("signup_requested", "confirmation_sent", "consent_confirmed")


def fill(env: dict[str, str], events: int) -> float:
    app = create_app(env=env)
    started = time.perf_counter()
    with app.app_context():
        empty_database()
        notice = app.extensions["notices"]["munkeby"]
        for start in range(0, events, CHUNK):
            items = []
            for i in range(start, min(start + CHUNK, events)):
                person = f"{i // 3:032x}"
                kind = KINDS[i % 3]
                details = {"email": f"p{i // 3}@bench.example", "ip": "192.0.2.7"} if i % 3 == 0 else None
                items.append(Evidence.under(kind, notice, person, "web", {"n": i}, details))
            with unit_of_work() as uow:
                ledger.append(uow, items)
        settle_statistics()
        db.session.remove()
        db.engine.dispose()
    return time.perf_counter() - started


def run(database: str, events: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        env = service_env(Path(folder) / "instance", database)
        fill_seconds = fill(env, events)
        began = time.perf_counter()
        verify = flask_command(env, "ledger", "verify")
        seconds = time.perf_counter() - began
    if verify.returncode != 0 or not verify.stdout.startswith(f"ok: {events} events"):
        raise SystemExit(f"ledger verify failed:\n{verify.stdout}\n{verify.stderr[-2000:]}")
    return [
        f"| ledger verify, {label(database)} | {seconds:.1f} s for {events:,} events "
        f"({events / seconds:,.0f} a second) | <= 15 s | appended in {fill_seconds:.0f} s beforehand |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")
    report("Ledger verify", run(args.database, args.events))


if __name__ == "__main__":
    main()
