"""Provider limits are the account's: two outbox workers together keep under them.

Mailchimp allows 10 simultaneous connections per account, APSIS 100 requests a second.
Each worker keeping to them alone would let two of them use twice that. With
``RATELIMIT_STORAGE_URL`` on Redis the counters are shared, and the fakes (which count
per account, as the providers do) see the limit kept.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .support import provider_env, queue_sync_jobs, start_worker, stop_workers

WORKERS = 2
# PostgreSQL only, so `-k "not postgresql"` leaves these out as it does every test's PostgreSQL half.
pytestmark = pytest.mark.postgresql


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """Several workers claim with FOR UPDATE SKIP LOCKED: PostgreSQL only."""
    return postgres_database


def drained_by_two_workers(  # type: ignore[no-untyped-def]
    runner, env: dict[str, str], total: int, seconds: float = 180
) -> dict[str, Any]:
    """Start the workers, wait until every job is done or dead, stop them; answers `outbox status`."""
    workers = [start_worker(env) for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = json.loads(runner.invoke(args=["outbox", "status"]).stdout)
            if status["counts"]["done"] + status["counts"]["dead"] >= total:
                return status
            time.sleep(0.25)
        raise AssertionError(f"the queue did not drain in {seconds} s: {status}")
    finally:
        stop_workers(workers)


def test_two_workers_together_keep_under_the_apsis_account_rate(app, app_env, runner, apsis, redis_url):
    env = {**app_env, **provider_env(apsis=apsis), "RATELIMIT_STORAGE_URL": redis_url, "OUTBOX_CLAIM_SIZE": "50"}
    with app.app_context():
        queue_sync_jobs("mysoft", 600, "unsubscribed", "sync_optout")
    status = drained_by_two_workers(runner, env, 600)
    assert status["counts"]["done"] == 600 and status["counts"]["dead"] == 0  # any 429 was retried
    times = [at for _, path, _, at in apsis.requests if not path.startswith("/oauth/")]
    average = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"APSIS: {len(times)} requests at {average:.1f}/s on average, {apsis.max_per_second} in the busiest "
        f"second, {apsis.count_429} answered 429"
    )
    # The two workers share the account's places (each alone would take 100 a second): the
    # fake, which counts arrivals as APSIS does, never saw more than 100 in one second,
    # however late the busy 2-core host let a request leave, and refused none.
    assert apsis.max_per_second <= 100 and apsis.count_429 == 0
    assert average <= 100


def test_two_workers_together_keep_to_ten_mailchimp_connections(app, app_env, runner, mailchimp, redis_url):
    env = {
        **app_env,
        **provider_env(mailchimp=mailchimp),
        "RATELIMIT_STORAGE_URL": redis_url,
        "OUTBOX_CLAIM_SIZE": "50",
        "MUNKEBY_MARKETING_PERMISSIONS": "perm-email",  # sign-ups one PUT each: many calls at once
    }
    mailchimp.latency = 0.05
    with app.app_context():
        queue_sync_jobs("munkeby", 400, "subscribed", "sync_consent")
    status = drained_by_two_workers(runner, env, 400)
    assert status["counts"]["done"] == 400 and status["counts"]["dead"] == 0, status["dead_letters"][:2]
    print(f"Mailchimp: at most {mailchimp.max_concurrent} calls at once")
    assert 1 < mailchimp.max_concurrent <= 10


def test_two_workers_on_a_fresh_audience_make_the_link_fields_once_and_lose_no_sign_up(
    app, app_env, runner, mailchimp, redis_url
):
    """Both workers look for the link fields, find none and create them: one create answers 400
    ("already exists"). That is a race to expect, not an error for the sign-ups of that claim."""
    shared = {"RATELIMIT_STORAGE_URL": redis_url, "OUTBOX_CLAIM_SIZE": "100"}
    env = {**app_env, **provider_env(mailchimp=mailchimp), **shared}
    mailchimp.latency = 0.3  # both look before either creates
    with app.app_context():
        queue_sync_jobs("munkeby", 1000, "subscribed", "sync_consent")
    status = drained_by_two_workers(runner, env, 1000)
    assert status["counts"]["dead"] == 0, status["dead_letters"][:2]
    tags = mailchimp.merge_tags("munkeby0001")
    assert tags.count("UNSUBURL") == 1 and tags.count("MANAGEURL") == 1
