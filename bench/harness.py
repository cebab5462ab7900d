"""What every benchmark shares: the settings of a throwaway service, and the results table."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
PEPPER = "bench-pepper-" + "p" * 32
HEADER = ["| benchmark | measured | goal | notes |", "|---|---|---|---|"]


def service_env(instance: Path, database: str, **extra: str) -> dict[str, str]:
    """The environment of a service on a throwaway database (a temporary SQLite file or ``database``)."""
    url = f"sqlite:///{instance / 'bench.sqlite3'}" if database == "sqlite" else database
    return {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        "APP_ENV": "testing",
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret-" + "s" * 32,
        "SUPPRESSION_PEPPER": PEPPER,
        "PUBLIC_URL": "https://news.example.org",
        **extra,
    }


def shared_limits() -> dict[str, str]:
    """Settings for several workers of one service: the providers' account limits counted in
    Redis (``BENCH_REDIS_URL``, by default this machine's server), as the README asks of more
    than one worker. Empty, and the workers count alone, when no Redis answers there."""
    import redis

    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        for key in client.scan_iter("provider-*"):  # an earlier run's leases would hold places
            client.delete(key)
    except redis.RedisError:
        return {}
    return {"RATELIMIT_STORAGE_URL": url}


def subscription_row(
    address: str, email_hash: str, notice: str, version: str, status: str, at: datetime, **extra: Any
) -> dict[str, Any]:
    """One subscriptions row as the benchmarks write them in bulk (confirmed at ``at`` unless pending).

    Its ref is made as the service makes one (``new_ref``: the second, then random digits), so
    the indexes on refs are laid out as in a database the service has written: rows written
    close together in time, close together in those indexes.
    """
    from app.models import new_ref  # the benchmark put the project on the path before it imports this

    return {
        "ref": new_ref(),
        "notice": notice,
        "email": address,
        "email_hash": email_hash,
        "status": status,
        "source": "bench",
        "notice_version": version,
        "created_at": at,
        "confirmed_at": None if status == "pending" else at,
        "updated_at": at,
        **extra,
    }


def empty_database() -> None:
    """On PostgreSQL (a database kept between runs), every table the service writes emptied
    and the ledger back at its start; the notice versions stay. Inside an app context."""
    from sqlalchemy import text

    from app.extensions import db
    from app.ledger import GENESIS, HEAD_ID
    from app.models import LedgerHead, NoticeVersion

    if db.engine.dialect.name != "postgresql":
        return  # a fresh temporary SQLite file each run
    keep = {NoticeVersion.__tablename__, LedgerHead.__tablename__}
    tables = ", ".join(t.name for t in db.metadata.sorted_tables if t.name not in keep)
    db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    db.session.execute(text("UPDATE ledger_head SET seq = 0, hash = :g WHERE id = :id"), {"g": GENESIS, "id": HEAD_ID})
    db.session.commit()


def settle_statistics() -> None:
    """After a bulk load, the planner statistics a live PostgreSQL would have by the time real
    load met those rows (autovacuum analyses a table soon after it changes by a tenth). Right
    after the load they still describe near-empty tables, and lookups planned from them scan.
    SQLite keeps no statistics unless told to, and the service never tells it. In an app context."""
    from sqlalchemy import text

    from app.extensions import db

    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE"))
        db.session.commit()


def flask_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app wsgi ARGS`` as an operator runs it, with the service's settings; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the fields after the command name


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes have used, their reaped children's included (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICKS


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (a gunicorn master and its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def postgres_processes() -> list[int]:
    """The PostgreSQL server's processes on this machine (the benchmarks run it locally)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def label(database: str) -> str:
    return "SQLite" if database == "sqlite" else "PostgreSQL"


def percentile(ordered: list[float], share: float) -> float:
    """The value below which ``share`` of the sorted samples lie (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


DASHBOARD_PASSWORD = "bench password 1234"  # noqa: S105 - a user of the benchmark's throwaway database


def dashboard_viewer(service: Any) -> requests.Session:
    """A viewer of both notices, made with the CLI, logged in as a browser logs in
    (``service`` is a running ``tests.support.Service``)."""
    both = ("--notice", "munkeby", "--notice", "mysoft")
    made = service.flask(
        "users", "create", "bench@munkeby.se", "--role", "viewer", "--password", DASHBOARD_PASSWORD, *both
    )
    assert made.returncode == 0, made.stderr
    session = requests.Session()
    page = session.get(service.url + "/dashboard/login").text
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert token, "no CSRF token on the login page"
    answer = session.post(
        service.url + "/dashboard/login",
        data={"csrf_token": token.group(1), "email": "bench@munkeby.se", "password": DASHBOARD_PASSWORD},
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:500]
    return session


def timed_pages(session: requests.Session, url: str, times: int, marker: str) -> list[float]:
    """``times`` requests of ``url`` one after another: their durations in seconds, sorted. Each
    answer must be 200 and hold ``marker`` (a page that is all there, not an error page)."""
    taken = []
    for _ in range(times):
        began = time.perf_counter()
        answer = session.get(url)
        taken.append(time.perf_counter() - began)
        assert answer.status_code == 200 and marker in answer.text, url
    return sorted(taken)


def report(title: str, rows: list[str]) -> None:
    """Print one benchmark's table (``bench/run.py`` is what writes bench/results.md)."""
    print(f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\n" + "\n".join([*HEADER, *rows]))


class Prober(threading.Thread):
    """Alternates a one-click unsubscribe (``paths``) and a consent lookup (``addresses``),
    recording each latency: whether the service answers while a long command runs."""

    def __init__(self, url: str, paths: list[str], addresses: list[str], token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.paths, self.addresses, self.token = url, paths, addresses, token
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.errors: dict[str, int] = {}  # by status code, or the exception's name
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"}
        for i, path in enumerate(self.paths):
            if self.stop.is_set():
                return
            began = time.perf_counter()
            try:
                if i % 2:
                    address = self.addresses[i % len(self.addresses)]
                    answer = session.get(self.url + "/api/v1/consent", params={"email": address}, headers=headers)
                else:
                    answer = session.post(self.url + path, data={"List-Unsubscribe": "One-Click"})
                if answer.status_code != 200:
                    self.errors[str(answer.status_code)] = self.errors.get(str(answer.status_code), 0) + 1
            except requests.RequestException as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            self.samples.append((began, time.perf_counter() - began))
            time.sleep(0.05)  # about 15 requests a second: under the API limit of 600 a minute


def ms(values: list[float]) -> str:
    """The probes' latencies in a line: median, p99 and the slowest."""
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = percentile(ordered, 0.99)
    median = statistics.median(ordered)
    return f"median {median * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
