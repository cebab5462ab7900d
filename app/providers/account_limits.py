"""Provider limits that hold per account, across every worker and process.

Mailchimp allows 10 simultaneous connections per account and APSIS 100 requests a
second per account (10 a second per profile). Each is the account's, so two outbox
workers pacing themselves separately would together exceed it. The counters live
where the rate limits of the web routes live, ``RATELIMIT_STORAGE_URL``: Redis when
several processes work (then the limit holds across all of them), process memory
for the embedded default (one worker, as the README asks of SQLite).

- ``request_slot``: a place among the requests an account may make in any one second. A
  request holds its place from the moment it is let through until one second after its
  answer came. It reached the provider somewhere in between, so however late it left or
  however long it travelled, no second at the provider holds more than the limit. A count
  of requests let through, as a rate limiter keeps, bounds only when they left: on a busy
  host, requests let through in one second reach the provider together in the next, and
  the provider refuses them (seen at 105 a second against a limit of 95). Asked to
  (``even=True``), one process also hands its places out evenly, one every ``1/limit``
  seconds, so a second's requests leave spread over it rather than in one burst.
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

from limits.storage import MemoryStorage, Storage, storage_from_string

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

# A request's place in the second: taken if fewer than ARGV[1] are held, held as in flight
# until ARGV[2] seconds from now (a process that dies mid-request frees it then). Answers
# "taken", or the seconds until the earliest place held is due to end. The server's clock,
# so that processes on several hosts count on one (replicate_commands: a script that reads the
# clock may write after it on Redis before 5 too).
_TAKE_PLACE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 'taken'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(first[2]) - now)
"""
# The answer came: the place is held for one more second from now.
_END_PLACE = """
redis.replicate_commands()
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000 + 1.0, ARGV[1])
"""
PLACE_POLL_SECONDS = 0.01  # a request waiting for a place asks again this often (Redis)

_lock = threading.Lock()
_storages: dict[str, Storage] = {}
_local_slots: dict[str, threading.BoundedSemaphore] = {}


def _storage(uri: str) -> Storage:
    with _lock:
        if uri not in _storages:
            storage = storage_from_string(uri)
            assert isinstance(storage, Storage)  # a synchronous URI: the async storages are "async+..."
            _storages[uri] = storage
        return _storages[uri]


class _Second:
    """One process's places in an account's second (the embedded default, no Redis)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ends: dict[object, float] = {}  # place -> when it ends; inf while its request is out
        self.users = 0  # threads waiting for or holding a place (under _lock): kept while any
        self.changed = threading.Condition()

    def take(self) -> object:
        place = object()
        with self.changed:
            while True:
                now = time.monotonic()
                for held, end in list(self.ends.items()):
                    if end <= now:
                        del self.ends[held]
                if len(self.ends) < self.limit:
                    self.ends[place] = float("inf")
                    return place
                first = min(self.ends.values())
                self.changed.wait(None if first == float("inf") else first - now)

    def end(self, place: object) -> None:
        with self.changed:
            self.ends[place] = time.monotonic() + 1.0
            self.changed.notify_all()  # a waiter that had only requests out to wait for now has a time


class _Spacer:
    """This process's requests under one key, one every ``1/per_second`` seconds."""

    def __init__(self, per_second: int) -> None:
        self.interval = 1.0 / per_second
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)


_local_seconds: dict[str, _Second] = {}
_spacers: dict[str, _Spacer] = {}
FORGET_AT = 1000  # seconds kept per process before idle ones (a profile's, say) are forgotten


@contextmanager
def _local_second(name: str, per_second: int) -> Iterator[_Second]:
    with _lock:
        second = _local_seconds.get(name)
        if second is None:
            if len(_local_seconds) >= FORGET_AT:
                now = time.monotonic()
                for other, idle in list(_local_seconds.items()):
                    # No thread has it, so nothing changes it: its places all ended, it counts nothing.
                    if idle.users == 0 and all(end <= now for end in idle.ends.values()):
                        del _local_seconds[other]
            second = _local_seconds[name] = _Second(per_second)
        second.users += 1
    try:
        yield second
    finally:
        with _lock:
            second.users -= 1


@contextmanager
def request_slot(uri: str, key: str, per_second: int, even: bool = False) -> Iterator[None]:
    """Make the block's request as one of the ``per_second`` that the account ``key`` may make
    in any one second (see the module's docstring): it waits for a place, holds it while the
    request is out and for one second after."""
    storage = _storage(uri)
    name = f"{uri}|{key}|{per_second}"
    if even:
        with _lock:
            spacer = _spacers.setdefault(name, _Spacer(per_second))
        spacer.wait()
    if isinstance(storage, MemoryStorage):
        with _local_second(name, per_second) as second:
            place = second.take()
            try:
                yield
            finally:
                second.end(place)
        return
    client: Any = cast(Any, storage).get_connection()  # the redis client behind the limits storage
    counter = f"provider-second:{key}"
    lease = uuid.uuid4().hex
    take, end = client.register_script(_TAKE_PLACE), client.register_script(_END_PLACE)
    deadline = time.monotonic() + SLOT_WAIT_SECONDS
    while True:
        answer = take(keys=[counter], args=[per_second, SLOT_LEASE_SECONDS, lease, SLOT_LEASE_SECONDS * 2])
        if answer in (b"taken", "taken"):
            break
        if time.monotonic() > deadline:
            raise ProviderRetry(f"no place in {key}'s second within {SLOT_WAIT_SECONDS} s")
        time.sleep(min(max(float(answer), 0.001), PLACE_POLL_SECONDS))
    try:
        yield
    finally:
        end(keys=[counter], args=[lease])


@contextmanager
def connection_slot(uri: str, key: str, slots: int) -> Iterator[None]:
    """Hold one of ``slots`` simultaneous connections of the account ``key`` for the block."""
    storage = _storage(uri)
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
