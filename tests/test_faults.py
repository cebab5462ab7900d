"""Slow runs (marker ``slow``): outbox workers killed mid-work, a provider outage, and the
service under a sustained mix of sign-ups, confirmations and opt-outs.

``python -m pytest -m slow -rP`` runs them and prints their figures; `.ci/run` does.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from app import ledger
from app.extensions import db
from app.models import ConsentEvent, OutboxJob

from .fakes.mailchimp import FakeMailchimp
from .support import REPO, Service, SmtpSink, free_port, provider_env, queue_sync_jobs, stop_workers

pytestmark = pytest.mark.slow
LIST_ID = "munkeby0001"


def worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`flask outbox run` in its own process, its log to a file (a pipe nobody reads would fill)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def counts(app) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with app.app_context():
        found = dict(db.session.execute(select(OutboxJob.state, func.count()).group_by(OutboxJob.state)).all())
        db.session.remove()
    return found


def opted_out_at_provider(mailchimp: FakeMailchimp, addresses: list[str]) -> Counter[str]:
    return Counter((mailchimp.member(LIST_ID, a) or {}).get("status", "missing") for a in addresses)


@pytest.fixture
def mailchimp_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp), "OUTBOX_LEASE_SECONDS": "5", "OUTBOX_CLAIM_SIZE": "100"}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_workers_killed_every_two_seconds_lose_no_job(app, mailchimp_env, mailchimp, tmp_path):
    jobs = 10_000
    with app.app_context():
        addresses = queue_sync_jobs("munkeby", jobs, "unsubscribed", "sync_optout")
        db.session.remove()
    mailchimp.latency = 0.05
    log = tmp_path / "workers.log"
    workers = [worker(mailchimp_env, log) for _ in range(4)]
    kills, rng = 0, random.Random(11)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 300:
            time.sleep(2)
            state = counts(app)
            if state.get("done", 0) == jobs:
                break
            victim = rng.randrange(len(workers))
            workers[victim].send_signal(signal.SIGKILL)  # no chance to finish or let go of its jobs
            workers[victim].wait()
            kills += 1
            workers[victim] = worker(mailchimp_env, log)  # as a supervisor restarts it
        seconds = time.monotonic() - started
    finally:
        stop_workers(workers)
    state = counts(app)
    print(f"\n{jobs} jobs, 4 workers, {kills} killed with SIGKILL: drained in {seconds:.1f} s; {state}")
    assert kills >= 3  # the run really was interrupted
    assert state == {"done": jobs}  # none pending, running (stuck) or dead
    assert opted_out_at_provider(mailchimp, addresses) == {"unsubscribed": jobs}  # the provider's state is exact
    assert len(mailchimp.members[LIST_ID]) == jobs  # and holds no one else


def test_a_provider_outage_of_a_minute_loses_nothing_and_the_queue_drains(app, mailchimp_env, mailchimp, tmp_path):
    jobs, outage = 300, 60.0
    env = {**mailchimp_env, "PROVIDER_TIMEOUT_SECONDS": "2", "OUTBOX_CLAIM_SIZE": "25"}
    with app.app_context():
        addresses = queue_sync_jobs("munkeby", jobs, "unsubscribed", "sync_optout")
        db.session.remove()
    mailchimp.outage_hang = 3.0  # every other call outlasts the client's 2 s timeout
    mailchimp.outage_until = time.monotonic() + outage
    started = time.monotonic()
    process = worker(env, tmp_path / "worker.log")
    try:
        while time.monotonic() - started < outage - 2:  # the state just before it ends
            time.sleep(1)
        during = counts(app)
        calls_during = len(mailchimp.requests)
        time.sleep(max(0.0, mailchimp.outage_until - time.monotonic()))
        recovered = time.monotonic()
        while counts(app).get("done", 0) < jobs and time.monotonic() - recovered < 240:
            time.sleep(1)
        drained = time.monotonic() - recovered
    finally:
        stop_workers([process])
    with app.app_context():
        attempts = db.session.execute(select(func.max(OutboxJob.attempts), func.min(OutboxJob.attempts))).one()
        db.session.remove()
    print(
        f"\noutage of {outage:.0f} s ({mailchimp.outage_answers} calls refused or timed out, "
        f"{calls_during} calls in all during it); queue drained {drained:.1f} s after recovery; "
        f"attempts per job {attempts[1]}-{attempts[0]}; state during the outage {during}"
    )
    assert during.get("done", 0) == 0 and during.get("dead", 0) == 0  # nothing given up while it was down
    assert counts(app) == {"done": jobs}
    assert opted_out_at_provider(mailchimp, addresses) == {"unsubscribed": jobs}
    # Backoff within bounds: full jitter doubling from 2 s, so a minute's outage costs a job
    # a handful of attempts, and the last wait after recovery is at most the 64 s ceiling.
    assert 2 <= attempts[0] <= 9
    assert drained <= 64 + 30
    # Exponential backoff keeps the calls during the outage far below one per job per second.
    assert calls_during < jobs * 8


@pytest.fixture
def smtp_sink() -> SmtpSink:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


def test_a_sustained_mix_at_twice_the_expected_peak_has_no_errors(app, app_env, smtp_sink, tmp_path):
    """Sign-up, confirmation and one-click opt-out, as people do after a newsletter goes out.

    Expected peak: 10 requests/s on these routes (RELIABILITY.md says why); this runs 20/s
    for SUSTAINED_SECONDS (default 300)."""
    seconds = int(os.environ.get("SUSTAINED_SECONDS", "300"))
    flows_per_second = 5  # each flow is 4 requests: form, sign-up, confirm, opt-out
    port = free_port()
    env = {
        **app_env,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "SUBSCRIBE_RATE_LIMIT": "1000000 per hour",  # one test client is many people here
    }
    server = Service(env, port, tmp_path / "gunicorn.log")
    server.wait_until_healthy()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    seen = {"n": 0}

    def timed(call, *args, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        answer = call(*args, timeout=30, allow_redirects=False, **kwargs)
        with lock:
            latencies.append(time.perf_counter() - began)
            if answer.status_code >= 400:
                errors[f"{answer.request.method} {answer.status_code}"] += 1
        return answer

    inbox: dict[str, list[bytes]] = {}  # recipient -> raw messages, filled from the sink as they come
    read = {"n": 0}

    def mail_to(address: str, kind: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                with smtp_sink._lock:
                    fresh = smtp_sink.received[read["n"] :]
                read["n"] += len(fresh)
                for _sender, recipients, content in fresh:
                    for recipient in recipients:
                        inbox.setdefault(recipient, []).append(content)
                found = list(inbox.get(address, []))
            for content in found:
                text = content.decode("utf-8", "replace").replace("=\r\n", "").replace("=\n", "")
                match = re.search(re.escape(server.url) + rf"(/{kind}/[A-Za-z0-9._~-]+)", text)
                if match:
                    return match.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no {kind} mail to {address}")

    def flow(i: int) -> None:
        address = f"load{i}@example.com"
        person = requests.Session()
        page = timed(person.get, server.url + "/munkeby/subscribe").text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        data = {"csrf_token": token, "email": address, "name": f"Load {i}", "consent": "y"}
        timed(person.post, server.url + "/munkeby/subscribe", data=data)
        timed(person.post, server.url + mail_to(address, "confirm"))
        unsubscribe = mail_to(address, "unsubscribe")
        timed(requests.post, server.url + unsubscribe, data={"List-Unsubscribe": "One-Click"})
        with lock:
            seen["n"] += 1

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            futures = []
            for i in range(seconds * flows_per_second):
                target = started + i / flows_per_second
                time.sleep(max(0.0, target - time.monotonic()))
                futures.append(pool.submit(flow, i))
            for future in futures:
                future.result()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"\n{seen['n']} flows ({len(ordered)} requests) in {elapsed:.0f} s: "
        f"{len(ordered) / elapsed:.1f} requests/s, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms; errors {dict(errors) or 0}"
    )
    assert not errors
    assert seen["n"] == seconds * flows_per_second
    with app.app_context():
        opt_outs = db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "opted_out")
        ).scalar_one()
        assert opt_outs == seen["n"]
        assert ledger.verify(db.session).ok
