"""Provider limits that hold per account, across every worker and process.

Mailchimp allows 10 simultaneous connections per account and APSIS 100 requests a
second per account (10 a second per profile). Each is the account's, so two outbox
workers pacing themselves separately would together exceed it. The counters live
where the rate limits of the web routes live, ``RATELIMIT_STORAGE_URL``: Redis when
several processes work (then the limit holds across all of them), process memory
for the embedded default (one worker, as the README asks of SQLite).

- ``wait_for_rate``: a moving one-second window (the ``limits`` library); a caller
  over the limit sleeps until its request fits.
- ``connection_slot``: a lease-based semaphore. In Redis it is a sorted set of
  leases, taken and counted in one Lua script so two processes cannot both take
  the last slot; a process that dies holding one loses it when the lease runs out.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from . import ProviderRetry

SLOT_LEASE_SECONDS = 120  # longer than any provider call's timeout
SLOT_WAIT_SECONDS = 60  # a call that cannot get a connection this long is retried later
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""

_lock = threading.Lock()
_storages: dict[str, tuple[Storage, MovingWindowRateLimiter]] = {}
_local_slots: dict[str, threading.BoundedSemaphore] = {}


def _limiter(uri: str) -> tuple[Storage, MovingWindowRateLimiter]:
    with _lock:
        if uri not in _storages:
            storage = storage_from_string(uri)
            assert isinstance(storage, Storage)  # a synchronous URI: the async storages are "async+..."
            _storages[uri] = (storage, MovingWindowRateLimiter(storage))
        return _storages[uri]


def wait_for_rate(uri: str, key: str, per_second: int) -> None:
    """Block until one more request under ``key`` fits in ``per_second`` over the last second."""
    _, limiter = _limiter(uri)
    item = RateLimitItemPerSecond(per_second)
    while not limiter.hit(item, "provider-rate", key):
        reset = limiter.get_window_stats(item, "provider-rate", key).reset_time
        time.sleep(min(max(reset - time.time(), 0.005), 1.0))


@contextmanager
def connection_slot(uri: str, key: str, slots: int) -> Iterator[None]:
    """Hold one of ``slots`` simultaneous connections of the account ``key`` for the block."""
    storage, _ = _limiter(uri)
    if isinstance(storage, MemoryStorage):
        with _lock:
            semaphore = _local_slots.setdefault(f"{uri}|{key}|{slots}", threading.BoundedSemaphore(slots))
        if not semaphore.acquire(timeout=SLOT_WAIT_SECONDS):
            raise ProviderRetry(f"no free {key} connection within {SLOT_WAIT_SECONDS} s")
        try:
            yield
        finally:
            semaphore.release()
        return
    client: Any = cast(Any, storage).get_connection()  # the redis client behind the limits storage
    name = f"provider-slots:{key}"
    lease = uuid.uuid4().hex
    take = client.register_script(_TAKE_SLOT)
    deadline = time.monotonic() + SLOT_WAIT_SECONDS
    while True:
        now = time.time()
        if take(keys=[name], args=[now, slots, now + SLOT_LEASE_SECONDS, lease, SLOT_LEASE_SECONDS * 2]):
            break
        if time.monotonic() > deadline:
            raise ProviderRetry(f"no free {key} connection within {SLOT_WAIT_SECONDS} s")
        time.sleep(0.01)
    try:
        yield
    finally:
        client.zrem(name, lease)
