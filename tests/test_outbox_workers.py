"""Several `outbox run` workers share one PostgreSQL queue: each job is done once."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from .fakes.mailchimp import FakeMailchimp
from .support import provider_env, queue_sync_jobs, start_worker

LIST_ID = "munkeby0001"
JOBS = 2_000
WORKERS = 4


# PostgreSQL only, so `-k "not postgresql"` leaves these out as it does every test's PostgreSQL half.
pytestmark = pytest.mark.postgresql


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """Several workers claim with FOR UPDATE SKIP LOCKED: PostgreSQL only."""
    return postgres_database


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    # Small claims, so the four workers take turns many times over the queue.
    return {**app_env, **provider_env(mailchimp=mailchimp), "OUTBOX_CLAIM_SIZE": "100"}


def test_four_workers_share_the_queue_and_do_each_job_once(app, app_env, runner, mailchimp):
    with app.app_context():
        addresses = queue_sync_jobs("munkeby", JOBS, "unsubscribed", "sync_optout")
    mailchimp.latency = 0.05
    workers = [start_worker(app_env) for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = json.loads(runner.invoke(args=["outbox", "status"]).stdout)
            if status["counts"]["done"] + status["counts"]["dead"] == JOBS:
                break
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _, stderr = worker.communicate(timeout=30)
            assert worker.returncode == 0, stderr
    assert status["counts"] == {"pending": 0, "running": 0, "done": JOBS, "dead": 0, "discarded": 0}
    sent = Counter(
        member["email_address"]
        for method, path, body in mailchimp.requests
        if method == "POST" and path.rstrip("/").endswith(LIST_ID)
        for member in body["members"]
    )
    assert sent == Counter(addresses)  # every person exactly once, none twice
    assert {mailchimp.member(LIST_ID, a)["status"] for a in addresses} == {"unsubscribed"}
    # One claim makes one call here; calls overlapping means workers ran side by side.
    assert mailchimp.max_concurrent > 1
