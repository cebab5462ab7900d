"""Benchmark: the write routes against a trivial route of the same app, side by side.

gunicorn serves the app (``bench/wsgi_bench.py``: ``create_app()`` plus one route that
returns "ok") on a throwaway database; ``wrk`` (Debian's package) drives each route over
loopback for a fixed time, each request a new person so that every one does the full work:

- trivial: ``GET /bench/ok``, the ceiling for this app, server and machine;
- one-click unsubscribe: ``POST /unsubscribe/<token>`` with ``List-Unsubscribe=One-Click``
  (token check, state change, evidence, outbox job, committed);
- Mailchimp webhook: ``POST /webhooks/mailchimp/<secret>``, an unsubscribe event;
- subscribe: ``POST /munkeby/subscribe`` with a CSRF token (validation, evidence, mail).

Goals, as ratios measured in one run: unsubscribe >= 50% of the trivial route's requests/s
with p99 <= 4x its p99; webhook >= 40%; subscribe >= 30%; no errors.

Run: .venv/bin/python bench/http_routes.py [--seconds N] [--workers N] [--database sqlite|postgresql://...]
Prints a table and appends it to bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402  (bench/ is on the path)
    cpu_seconds,
    empty_database,
    flask_command,
    label,
    postgres_processes,
    process_tree,
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
from app.fastpath import Prepared  # noqa: E402
from app.ledger import Evidence  # noqa: E402
from app.mail import unsubscribe_link  # noqa: E402
from app.models import OutboxJob, ProviderDelivery, Subscription, utcnow  # noqa: E402
from tests.support import free_port  # noqa: E402

_FINISHED_JOB = Prepared(insert(OutboxJob.__table__))
_DELIVERY = Prepared(insert(ProviderDelivery.__table__))
HOOK_SECRET = "bench-hook-" + "h" * 24
WRK = shutil.which("wrk") or "wrk"
CONNECTIONS = 8
# Requests per second above which no route here is expected to go: bounds the people
# prepared for each route, so every request finds a fresh one.
CEILING = 4000
LUA = """
local paths, bodies, n = {}, {}, 0
function init(args)
  for line in io.lines(args[1]) do
    local path, body = line:match("^(%S+)\\t?(.*)$")
    n = n + 1; paths[n] = path; bodies[n] = body
  end
  i = math.random(n)
end
request = function()
  i = i % n + 1
  local body = bodies[i]
  if body == "" then return wrk.format("GET", paths[i]) end
  return wrk.format("POST", paths[i], HEADERS, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d %.0f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration, 0))
end
"""


def prepare(env: dict[str, str], people: int) -> list[tuple[str, str, str]]:
    """Subscribed Munkeby people, with the history a live service holds of them: each one's
    confirmation in the ledger (chained, with its details), the confirmation mail's finished
    job and a past provider delivery. Answers (address, subscription ref, address hash) for each.

    The history is there for PostgreSQL's planner: with the tables the routes write empty when
    the statistics are taken, it plans a look-up by key in them as a walk of the table, keeps
    that plan for a statement the driver has prepared, and every request grows the walk
    (autovacuum, which would analyse them again as they grow, may be off on a test server)."""
    app = create_app(env=env)
    now = utcnow()
    found = []
    with app.app_context():
        empty_database()
        notice = app.extensions["notices"]["munkeby"]
        for start in range(0, people, 20_000):
            rows = []
            for i in range(start, min(start + 20_000, people)):
                address = f"reader{i}@bench.example"
                ehash = email_hash(address)
                rows.append(subscription_row(address, ehash, "munkeby", notice.version, "subscribed", now))
                found.append((address, rows[-1]["ref"], rows[-1]["email_hash"]))
            db.session.execute(insert(Subscription), rows)
            db.session.commit()
            refs = [row["ref"] for row in rows]
            with unit_of_work() as uow:
                details = {"ip": "192.0.2.1", "user_agent": "bench"}
                ledger.append(uow, [Evidence.under("confirmed", notice, ref, "link", {}, details) for ref in refs])
                uow.send_many(_FINISHED_JOB, [
                    {"kind": "mail", "notice": "munkeby", "subscription_ref": ref, "payload": {}, "state": "done",
                     "attempts": 1, "finished_at": now} for ref in refs
                ])  # fmt: skip
                uow.send_many(_DELIVERY, [
                    {"key": f"history-{ref}", "provider": "mailchimp", "kind": "profile", "notice": "munkeby",
                     "outcome": "applied", "received_at": now} for ref in refs
                ])  # fmt: skip
        settle_statistics()
        db.session.remove()
        db.engine.dispose()
    return found


def request_file(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wrk(url: str, script: Path, requests_file: Path, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    lua = LUA.replace("HEADERS", "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}")
    script.write_text(lua, encoding="utf-8")
    command = [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    run = subprocess.run(
        [*command, "--", str(requests_file)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{run.stdout}\n{run.stderr}")
    total, bad_status, socket_errors, p50, p99, duration_us, _ = (float(x) for x in line.split()[1:])
    return {
        "rps": total / (duration_us / 1e6),
        "requests": total,
        "errors": bad_status + socket_errors,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
    }


def start(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)),
                *("--no-control-socket", "--chdir", str(REPO / "bench"), "--pythonpath", str(REPO), "wsgi_bench:app"),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/bench/ok", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"gunicorn did not start:\n{log.read_text()}")


def subscribe_form(url: str) -> tuple[str, str]:
    """A session cookie and its CSRF token, as a browser holds them after opening the form."""
    session = requests.Session()
    page = session.get(url + "/munkeby/subscribe").text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    return cookie, token


def run(database: str, seconds: int, workers: int) -> list[str]:
    if shutil.which(WRK) is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = service_env(
            folder / "instance",
            database,
            MAILCHIMP_WEBHOOK_SECRET=HOOK_SECRET,
            SUBSCRIBE_RATE_LIMIT="100000000 per hour",
        )
        people = prepare(env, 2 * CEILING * seconds)
        # Clicks and a provider's reports come in no order of sign-up: the people are taken at random.
        random.Random(8058).shuffle(people)
        half = len(people) // 2
        app = create_app(env=env)
        with app.app_context():
            links = [unsubscribe_link("munkeby", ref, ehash) for _, ref, ehash in people[:half]]
        unsubscribe = [link.split("://", 1)[1].split("/", 1)[1] for link in links]
        list_id = app.extensions["notices"]["munkeby"].provider["list_id"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start(env, port, workers, folder / "gunicorn.log")
        try:
            cookie, csrf = subscribe_form(url)
            hook = f"/webhooks/mailchimp/{HOOK_SECRET}"
            fired = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            routes = {
                "trivial GET /bench/ok": (["/bench/ok"], {}),
                "one-click unsubscribe POST": (
                    [f"/{path}\tList-Unsubscribe=One-Click" for path in unsubscribe],
                    {"Content-Type": "application/x-www-form-urlencoded"},
                ),
                "Mailchimp webhook POST (unsubscribe)": (
                    [
                        f"{hook}\ttype=unsubscribe&fired_at={fired.replace(' ', '+')}&data%5Blist_id%5D={list_id}"
                        f"&data%5Bemail%5D={address.replace('@', '%40')}&data%5Breason%5D=manual"
                        for address, _, _ in people[half:]
                    ],
                    {"Content-Type": "application/x-www-form-urlencoded"},
                ),
                "subscribe POST": (
                    [
                        f"/munkeby/subscribe\tcsrf_token={csrf}&email=new{i}%40bench.example&name=New+{i}&consent=y"
                        for i in range(CEILING * seconds)
                    ],
                    {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
                ),
            }
            figures = {}
            for what, (lines, headers) in routes.items():
                web, server_side = process_tree(server.pid), postgres_processes()
                before = cpu_seconds(web), cpu_seconds(server_side)
                figures[what] = wrk(url, folder / "script.lua", request_file(folder, "r", lines), seconds, headers)
                time.sleep(1.0)  # what runs after the answers (mail, chaining the evidence) is the request's too
                after = cpu_seconds(web), cpu_seconds(server_side)
                figures[what]["people"] = len(lines)
                figures[what]["web_cpu_ms"] = 1000 * (after[0] - before[0]) / max(figures[what]["requests"], 1)
                figures[what]["db_cpu_ms"] = 1000 * (after[1] - before[1]) / max(figures[what]["requests"], 1)
        finally:
            server.terminate()
            server.wait(timeout=20)
        chain = chain_after_the_load(env)
    base = figures["trivial GET /bench/ok"]
    cpu = (lambda f: f", CPU a request: web {f['web_cpu_ms']:.2f} ms, database {f['db_cpu_ms']:.2f} ms") if (
        database != "sqlite"
    ) else (lambda f: f", CPU a request: {f['web_cpu_ms']:.2f} ms")
    goals = {"one-click unsubscribe POST": 0.5, "Mailchimp webhook POST (unsubscribe)": 0.4, "subscribe POST": 0.3}
    lines = []
    for what, f in figures.items():
        ratio = f["rps"] / base["rps"]
        goal = "the ceiling" if what not in goals else f">= {goals[what]:.0%} of trivial"
        if what == "one-click unsubscribe POST":
            goal += ", p99 <= 4x"
        lines.append(
            f"| {what}, {label(database)}, {workers} worker(s) | {f['rps']:.0f} req/s ({ratio:.0%}), "
            f"p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms ({f['p99_ms'] / base['p99_ms']:.1f}x) | {goal} | "
            f"{f['requests']:.0f} requests in {seconds} s, {f['errors']:.0f} errors"
            f"{'' if what.startswith('trivial') or f['requests'] <= f['people'] else ', some people twice'}{cpu(f)} |"
        )
    where = f"{label(database)}, {workers} worker(s)"
    lines.append(f"| evidence chain after the load, {where} | {chain} | all chained, verifies | |")
    print(json.dumps(figures, indent=2), file=sys.stderr)
    return lines


def chain_after_the_load(env: dict[str, str]) -> str:
    """What the web processes left unchained (the sequencer runs after each answer), then ``ledger verify``."""
    sequenced = flask_command(env, "ledger", "sequence")
    verified = flask_command(env, "ledger", "verify")
    if sequenced.returncode or verified.returncode:
        return f"NOT VERIFIED: {(sequenced.stderr + verified.stderr).strip()[-300:]}"
    left = json.loads(sequenced.stdout)["chained"]
    return f"{left} left for `ledger sequence` after the web processes; {verified.stdout.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL of an empty database")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 120 or not 1 <= args.workers <= 16:
        parser.error("--seconds must be 1 to 120 and --workers 1 to 16")
    report("HTTP routes against a trivial route", run(args.database, args.seconds, args.workers))


if __name__ == "__main__":
    main()
