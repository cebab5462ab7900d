"""Benchmark: ``contacts import`` of a 1,000,000-row CSV, checked against suppressions.

The database already holds 100,000 suppressed addresses (people who opted out) and 50,000
subscriptions, all of them addresses that appear in the file, so every row is looked up
against both. The command runs as an operator runs it (``flask --app wsgi contacts import``,
its own process); its wall time and the peak of its processes' resident memory together
are measured. Goal: at most 60 s and at most 300 MB. Meanwhile gunicorn serves the same
database and a prober sends one-click unsubscribes and consent lookups for people already
held (``harness.Prober``): the service must answer throughout, and the table keeps their
latency before and during the import. Then a marketer opens the dashboard's overview, with
the import's sync jobs all still queued (no worker runs here): p95 <= 100 ms, as for the
dashboard's other pages.

Run: .venv/bin/python bench/contact_import.py [--rows N] [--database sqlite|postgresql://...]
Prints its table (``bench/run.py`` writes bench/results.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402  (bench/ is on the path)
    Prober,
    dashboard_viewer,
    empty_database,
    label,
    ms,
    percentile,
    process_tree,
    report,
    service_env,
    settle_statistics,
    subscription_row,
    timed_pages,
)
from sqlalchemy import insert  # noqa: E402

from app import create_app  # noqa: E402
from app.addresses import email_hash  # noqa: E402
from app.extensions import db  # noqa: E402
from app.mail import unsubscribe_link  # noqa: E402
from app.models import Subscription, Suppression, utcnow  # noqa: E402
from tests.support import Service, free_port  # noqa: E402

SUPPRESSED_EVERY = 10  # one row in ten opted out earlier
HELD_EVERY = 20  # one in twenty is held already (of those not suppressed)
OVERVIEWS = 100  # requests of the dashboard's overview after the import


def address(i: int) -> str:
    return f"contact{i}@import.example"


PROBED = 2_000  # held subscribers whose one-click links the prober uses


def prepare(env: dict[str, str], folder: Path, rows: int) -> tuple[Path, list[str], list[str]]:
    """The CSV file, and the suppressions and subscriptions its rows meet; the unsubscribe
    paths and the addresses of a few held subscribers, for the prober."""
    app = create_app(env=env)
    now = utcnow()
    with app.app_context():
        empty_database()
        version = app.extensions["notices"]["munkeby"].version
        suppressions, held = [], []
        paths: list[str] = []
        addresses: list[str] = []
        step = max(1, rows // HELD_EVERY // PROBED)
        for i in range(rows):
            if i % SUPPRESSED_EVERY == 0:
                suppressions.append(
                    {"notice": "munkeby", "email_hash": email_hash(address(i)), "reason": "opt_out", "created_at": now}
                )
            elif i % HELD_EVERY == 1:
                row = subscription_row(address(i), email_hash(address(i)), "munkeby", version, "subscribed", now)
                held.append(row)
                if (i // HELD_EVERY) % step == 0:
                    link = unsubscribe_link("munkeby", row["ref"], row["email_hash"])
                    paths.append(urlsplit(link).path)
                    addresses.append(address(i))
            if len(suppressions) >= 20_000 or len(held) >= 20_000 or i == rows - 1:
                if suppressions:
                    db.session.execute(insert(Suppression), suppressions)
                if held:
                    db.session.execute(insert(Subscription), held)
                db.session.commit()
                suppressions, held = [], []
        settle_statistics()
        db.session.remove()
        db.engine.dispose()
    path = folder / "contacts.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("E-post;Namn;Företag\n")
        for start in range(0, rows, 50_000):
            out.write(
                "".join(
                    f"{address(i)};Kontakt {i};Företag {i % 997} AB\n" for i in range(start, min(start + 50_000, rows))
                )
            )
    return path, paths, addresses


def run(database: str, rows: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = service_env(folder / "instance", database)
        csv_path, paths, addresses = prepare(env, folder, rows)
        size_mb = csv_path.stat().st_size / 1e6
        service = Service(env, free_port(), folder / "gunicorn.log")
        try:
            service.wait_until_healthy()
            made = service.flask("tokens", "create", "bench", "--scope", "read", "--notice", "munkeby")
            prober = Prober(service.url, paths, addresses, json.loads(made.stdout)["token"])
            prober.start()
            time.sleep(3)  # latency before the import
            began = time.perf_counter()
            seconds, peak_mb, done = timed_import(env, csv_path)
            ended = time.perf_counter()
            time.sleep(1)
            prober.stop.set()
            prober.join()
            # The marketer opens the dashboard: its queue holds a sync job for every contact added.
            overview = timed_pages(
                dashboard_viewer(service), service.url + "/dashboard/", OVERVIEWS, "/dashboard/subscribers"
            )
        finally:
            service.stop()
        if done.returncode != 0:
            raise SystemExit(f"import failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        before = [s for t, s in prober.samples if t < began]
        during = [s for t, s in prober.samples if began <= t <= ended]
    counts = ", ".join(f"{key.replace('_', ' ')} {value:,}" for key, value in result.items() if key != "dry_run")
    errors = json.dumps(prober.errors) if prober.errors else 0
    return [
        f"| contacts import of {rows:,} rows ({size_mb:.0f} MB CSV), {label(database)} | {seconds:.1f} s, "
        f"peak memory {peak_mb:.0f} MB (its processes together) | <= 60 s, <= 300 MB | {counts} |",
        f"| service during the import, {label(database)} | {ms(during)} ({len(during)} probes, errors: {errors}) "
        f"| answers throughout | before: {ms(before)} |",
        f"| the dashboard's overview after the import, {label(database)} "
        f"| p95 {percentile(overview, 0.95) * 1000:.0f} ms (median {statistics.median(overview) * 1000:.0f} ms, "
        f"{OVERVIEWS} requests) | <= 100 ms "
        f"| {result.get('added', 0):,} sync jobs queued, no worker running |",
    ]


def timed_import(env: dict[str, str], csv_path: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """``contacts import`` in a process of its own: its wall time, the peak of the resident memory
    of it and its children together in MB (sampled every 50 ms; a large file is checked in a
    second process), and its answer."""
    command = [
        *(sys.executable, "-m", "flask", "--app", "wsgi", "contacts", "import", str(csv_path)),
        *("--notice", "munkeby", "--basis", "consent", "--source", "CRM export", "--proof", "CRM consent log"),
        *("--email-column", "E-post", "--name-column", "Namn"),
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], sum(resident_kb(pid) for pid in process_tree(process.pid)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    seconds = time.monotonic() - started
    sampler.join()
    return seconds, peak[0] / 1024, subprocess.CompletedProcess(command, process.returncode, out, err)


def resident_kb(pid: int) -> int:
    """A process's resident set (VmRSS) in kB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if not 100 <= args.rows <= 5_000_000:
        parser.error("--rows must be 100 to 5,000,000")
    report("Contact import", run(args.database, args.rows))


if __name__ == "__main__":
    main()
