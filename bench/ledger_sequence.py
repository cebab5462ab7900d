"""Benchmark: ``flask --app wsgi ledger sequence`` chaining 200,000 pending evidence events.

Requests write their evidence pending (a content hash, no place in the chain) and a
sequencer chains it in batches. This writes the events as requests would and leaves them
pending, as if every web process had died between its commit and its own sequencing run,
then times the dedicated sequencer an operator would start. The rate bounds how many
opt-outs a second one sequencer can keep up with. Goal: at least 5,000 events a second
(the spike bench/README.md plans for).

Run: .venv/bin/python bench/ledger_sequence.py [--events N] [--batch N] [--database sqlite|postgresql://...]
Prints a table; `bench/run.py --only sequence` writes it to bench/results.md.
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
from sqlalchemy import func, select  # noqa: E402

from app import create_app, ledger  # noqa: E402
from app.database import unit_of_work  # noqa: E402
from app.extensions import db  # noqa: E402
from app.ledger import Evidence  # noqa: E402
from app.models import ConsentEvent  # noqa: E402

CHUNK = 5_000


def fill(env: dict[str, str], events: int) -> float:
    """``events`` opt-out events written pending, in chunks, with nobody sequencing them."""
    app = create_app(env=env)
    ledger._request_sequencing = lambda: None  # this process plays web processes that died before their run
    started = time.perf_counter()
    with app.app_context():
        empty_database()
        notice = app.extensions["notices"]["mysoft"]
        for start in range(0, events, CHUNK):
            items = [
                Evidence.under("opted_out", notice, f"{i:032x}", "web", {"method": "one-click"})
                for i in range(start, min(start + CHUNK, events))
            ]
            with unit_of_work(orm=False) as uow:
                ledger.append(uow, items, chain=False)
        settle_statistics()
        pending = db.session.execute(select(func.count()).where(ConsentEvent.seq.is_(None))).scalar_one()
        db.session.remove()
        db.engine.dispose()
    if pending != events:
        raise SystemExit(f"expected {events} pending events, found {pending}")
    return time.perf_counter() - started


def run(database: str, events: int, batch: int = ledger.SEQUENCE_BATCH) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        env = service_env(Path(folder) / "instance", database)
        fill_seconds = fill(env, events)
        began = time.perf_counter()
        sequenced = flask_command(env, "ledger", "sequence", "--batch", str(batch))
        seconds = time.perf_counter() - began
        if sequenced.returncode != 0:
            raise SystemExit(f"ledger sequence failed:\n{sequenced.stdout}\n{sequenced.stderr[-2000:]}")
        verify = flask_command(env, "ledger", "verify")
    if verify.returncode != 0 or not verify.stdout.startswith(f"ok: {events} events"):
        raise SystemExit(f"ledger verify after sequencing failed:\n{verify.stdout}\n{verify.stderr[-2000:]}")
    return [
        f"| ledger sequence, {label(database)} | {seconds:.1f} s for {events:,} pending events "
        f"({events / seconds:,.0f} a second) | >= 5,000 a second | batches of {batch:,}, start-up "
        f"included; written pending in {fill_seconds:.0f} s beforehand; `ledger verify` passed after |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=ledger.SEQUENCE_BATCH)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if args.events < 1 or args.batch < 1:
        parser.error("--events and --batch must be at least 1")
    report("Ledger sequence", run(args.database, args.events, args.batch))


if __name__ == "__main__":
    main()
