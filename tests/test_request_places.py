"""An account's requests per second are counted where the provider counts them: on arrival.

APSIS refuses a request when more than 100 of the account's (10 of one profile's) arrived
in the last second. A request arrives somewhere between the moment it is let through and
its answer, and on a busy host that moment moves. ``account_limits.request_slot`` holds a
request's place from when it is let through until a second after its answer, so no second
at the provider holds more than the limit, however the requests travel. Each test runs on
the embedded default (one process's memory) and on Redis (every process of the account).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.providers import account_limits


@pytest.fixture(params=["memory", "redis"])
def limits_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://places-{time.monotonic_ns()}"  # a counter of its own for each test
    return str(request.getfixturevalue("redis_url"))


def busiest_second(arrivals: list[float]) -> int:
    arrivals = sorted(arrivals)
    return max(sum(1 for t in arrivals[i:] if t - start < 1.0) for i, start in enumerate(arrivals))


def test_requests_that_arrive_late_do_not_crowd_one_second_at_the_provider(limits_uri):
    """Five places a second. The first five requests are slow to leave and arrive 0.9 s after
    they were let through; the next five go at once. Counting when requests were let through
    would let the second five go at 1 s, and ten would arrive within 0.1 s."""
    arrivals: list[float] = []
    lock = threading.Lock()

    def request(slow: bool) -> None:
        with account_limits.request_slot(limits_uri, "acct", 5):
            if slow:
                time.sleep(0.9)
            with lock:
                arrivals.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=10) as pool:
        first = [pool.submit(request, True) for _ in range(5)]
        time.sleep(0.05)  # the slow five hold the places
        second = [pool.submit(request, False) for _ in range(5)]
        for future in first + second:
            future.result(timeout=30)
    assert len(arrivals) == 10
    assert busiest_second(arrivals) <= 5
    # and no request waited longer than it had to: the second five went a second after the first answers
    assert max(arrivals) - min(arrivals) < 1.6


def test_a_busy_account_keeps_to_its_limit_in_every_second(limits_uri):
    arrivals: list[float] = []
    lock = threading.Lock()

    def request(_: int) -> None:
        with account_limits.request_slot(limits_uri, "acct", 20):
            with lock:
                arrivals.append(time.monotonic())
            time.sleep(0.002)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(request, range(50)))
    assert len(arrivals) == 50 and busiest_second(arrivals) <= 20
    # 50 at 20 a second: two full seconds of waiting, and not much more
    assert 2.0 <= time.monotonic() - started < 4.0


def test_one_profile_waits_for_its_own_places_and_others_do_not(limits_uri):
    times: dict[str, list[float]] = {"same": [], "other": []}
    lock = threading.Lock()

    def request(i: int) -> None:
        key = "acct:same" if i % 2 else f"acct:other{i}"
        with account_limits.request_slot(limits_uri, key, 10):
            with lock:
                times["same" if i % 2 else "other"].append(time.monotonic())

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(request, range(40)))
    # 20 requests for one profile at 10 a second wait a second for the second ten; the 20 for
    # other profiles go at once.
    assert busiest_second(times["same"]) <= 10
    assert max(times["same"]) - started >= 1.0
    assert max(times["other"]) - started < 0.5


def test_a_request_that_fails_still_holds_its_place_for_the_second_after(limits_uri):
    """It may have reached the provider before it failed; the provider counted it."""
    with pytest.raises(RuntimeError):
        with account_limits.request_slot(limits_uri, "acct", 1):
            raise RuntimeError("connection reset")
    started = time.monotonic()
    with account_limits.request_slot(limits_uri, "acct", 1):
        waited = time.monotonic() - started
    assert 0.9 <= waited < 1.5


def test_evenly_handed_places_leave_spread_over_the_second(limits_uri):
    arrivals: list[float] = []
    lock = threading.Lock()

    def request(_: int) -> None:
        with account_limits.request_slot(limits_uri, "acct", 20, even=True):
            with lock:
                arrivals.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(request, range(10)))
    # One every 50 ms: nine gaps, where the second's 20 places would let all ten go at once.
    assert max(arrivals) - min(arrivals) >= 0.4


def test_a_process_forgets_the_seconds_of_idle_profiles():
    """The embedded default keeps a second per profile it met; a sync of a million people must
    not keep a million of them."""
    uri = f"memory://forget-{time.monotonic_ns()}"
    for i in range(account_limits.FORGET_AT + 500):
        with account_limits.request_slot(uri, f"acct:profile{i}", 10):
            pass
    time.sleep(1.05)  # every place ended
    with account_limits.request_slot(uri, "acct:one-more", 10):
        pass
    kept = [name for name in account_limits._local_seconds if name.startswith(uri)]
    assert len(kept) <= account_limits.FORGET_AT
