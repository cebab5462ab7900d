"""A failed job's next attempt: spread out (full jitter), never sooner than the floor."""

from __future__ import annotations

import random

from app.outbox import BACKOFF_CAP_SECONDS, BACKOFF_FLOOR_SECONDS, backoff_seconds


def test_no_retry_comes_sooner_than_a_second_and_none_later_than_the_ceiling() -> None:
    assert BACKOFF_FLOOR_SECONDS == 1.0
    random.seed(8058)
    for attempts, ceiling in ((1, 2.0), (2, 4.0), (5, 32.0), (30, BACKOFF_CAP_SECONDS)):
        waits = [backoff_seconds(attempts) for _ in range(20_000)]
        assert min(waits) >= 1.0, attempts  # a drain pass, or `outbox run --once`, never calls again at once
        assert max(waits) <= ceiling, attempts
        # Spread across the whole range, so jobs that failed together do not come back together.
        assert min(waits) < 1.0 + ceiling / 100 and max(waits) > ceiling * 0.99, attempts
