"""The evidence ledger: an append-only hash chain of consent events.

Each event's hash covers every column of its chained record plus the previous
event's hash. Personal details (address, IP, user agent, name) are stored in
``event_details`` next to a random salt; the chained record keeps only the
digest of salt and details. Erasure deletes the details row, which makes the
digest unlinkable to any guessed address while the chain still verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
import secrets
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, create_engine, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .database import Prepared, UnitOfWork
from .models import ConsentEvent, EventDetail, LedgerHead, utcnow

if TYPE_CHECKING:
    from .notices import Notice

GENESIS = "0" * 64
HEAD_ID = 1


# One encoder for every call: ``json.dumps`` with options builds a new one each time,
# and ``ledger verify`` encodes every event ever written.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


# How that encoder writes one string (the C version where there is one).
_encode_text = json.encoder.encode_basestring


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stamp(at: datetime) -> str:
    """``%Y-%m-%dT%H:%M:%S.%fZ``; ``isoformat`` writes the same for a naive UTC time, faster."""
    if at.tzinfo is None and at.year >= 1000:
        return at.isoformat(timespec="microseconds") + "Z"
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The chained record's fields in the order canonical JSON sorts them.
_FIELDS = (
    "at",
    "channel",
    "details_digest",
    "facts",
    "notice",
    "notice_version",
    "prev_hash",
    "seq",
    "subscription_ref",
    "type",
)
_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in _FIELDS) + "}"
# How canonical JSON writes each type a record holds; any other type goes the general way.
_WRITE = {str: _encode_text, int: int.__repr__, type(None): lambda _value: "null"}


def _record_text(values: tuple[Any, ...]) -> str:
    """The canonical JSON of a record given its values in ``_FIELDS`` order (``at`` already stamped).

    Filled into a template, it is the same text ``canonical`` makes of the dict, without
    sorting keys or walking a dict per event: ``ledger verify`` does this for every event.
    """
    try:
        return _TEMPLATE % tuple([_WRITE[type(value)](value) for value in values])
    except KeyError:  # e.g. a float or a bool where text belongs: a changed row
        return canonical(dict(zip(_FIELDS, values, strict=True)))


def record_hash(event: ConsentEvent | Mapping[str, Any]) -> str:
    """The hash of one event: every column but the hash itself (a row object or its values)."""
    get = event.__getitem__ if isinstance(event, Mapping) else lambda key: getattr(event, key)
    values = tuple(_stamp(get(name)) if name == "at" else get(name) for name in _FIELDS)
    return _sha256(_record_text(values))


def details_digest(salt: str, details_json: str) -> str:
    return _sha256(salt + "\n" + details_json)


@dataclass
class Evidence:
    """An event to append; ``details`` holds whatever identifies a person."""

    type: str
    channel: str
    notice: str | None = None
    notice_version: str | None = None
    subscription_ref: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] | None = None

    @classmethod
    def under(
        cls,
        kind: str,
        notice: Notice,
        ref: str | None,
        channel: str,
        facts: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Evidence:
        """An event under a notice, stamped with the version the person was shown."""
        return cls(
            type=kind,
            channel=channel,
            notice=notice.slug,
            notice_version=notice.version,
            subscription_ref=ref,
            facts=facts or {},
            details=details,
        )


def append(uow: UnitOfWork, items: list[Evidence]) -> int:
    """Append events at the chain's tip, inside the caller's transaction; answers the head's seq (0 if none given).

    The head row is locked (``FOR UPDATE``; on SQLite the transaction already
    holds the write lock), so concurrent writers queue and never fork the chain.
    The events are written with one multi-row insert, not as ORM objects: a
    purge or an import appends thousands at a time.
    """
    if not items:
        return 0
    uow.flush()  # pending ORM changes first, so the order of writes stays the caller's
    found = uow.run(_READ_HEAD)
    head = found[0] if found else None
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    events: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    now = utcnow()
    for item in items:
        seq += 1
        digest = None
        if item.details:
            salt = secrets.token_hex(16)
            details_json = canonical(dict(item.details))
            digest = details_digest(salt, details_json)
            details.append(
                {"seq": seq, "subscription_ref": item.subscription_ref, "salt": salt, "details": details_json}
            )
        event = {
            "seq": seq,
            "at": now,
            "type": item.type,
            "notice": item.notice,
            "notice_version": item.notice_version,
            "subscription_ref": item.subscription_ref,
            "channel": item.channel,
            "facts": canonical(dict(item.facts)),
            "details_digest": digest,
            "prev_hash": prev,
        }
        event["hash"] = prev = record_hash(event)
        events.append(event)
    uow.send_many(_INSERT_EVENTS, events)
    uow.send_many(_INSERT_DETAILS, details)
    if head is None:
        uow.send(_START_HEAD, {"id": HEAD_ID, "seq": seq, "hash": prev})
    else:
        uow.send(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
    return seq


# Every evidence write runs these, prepared once (see bench/README.md).
_HEAD = LedgerHead.__table__
_READ_HEAD = Prepared(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update())
_MOVE_HEAD = Prepared(
    update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_START_HEAD = Prepared(insert(_HEAD))
_INSERT_EVENTS = Prepared(insert(ConsentEvent.__table__))
_INSERT_DETAILS = Prepared(insert(EventDetail.__table__))


def _recorded_head(session: Session) -> tuple[int, str]:
    """The head row's seq and hash (the chain's start when there is none), read without a lock."""
    head = session.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID)).one_or_none()
    return (head.seq, head.hash) if head is not None else (0, GENESIS)


@dataclass
class Verification:
    ok: bool
    count: int
    head: str
    broken_seq: int | None = None
    reason: str = ""


def _events(conn: Connection, after: int = 0, upto: int | None = None, batch: int = 5000) -> Iterator[tuple[Any, ...]]:
    """The events after seq ``after`` (up to ``upto``, if given) in chain order, as plain tuples:
    the record's values in ``_FIELDS`` order, then its hash, its details' salt and text.

    Plain tuples, not ORM objects or mappings: ``ledger verify`` walks every event ever written.
    Each query asks for one range of seqs, not "the next N": the plan then stays an index range
    scan of N rows whatever the planner believes of a table that has just grown by a million.
    """
    last = after
    while upto is None or last < upto:
        high = last + batch if upto is None else min(last + batch, upto)
        rows = conn.execute(_EVENT_RANGE, {"low": last, "high": high}).all()
        if rows:
            yield from rows
            last = high
            continue
        following = conn.execute(_NEXT_SEQ, {"low": last}).scalar()  # past a gap, or the end
        if following is None or (upto is not None and following > upto):
            return
        last = following - 1


_E, _D = ConsentEvent.__table__.c, EventDetail.__table__.c
# The range is stated for the details too: given only the join, PostgreSQL (with current
# statistics) hashes the whole details table for every range instead of reading the same
# range of its key (140 ms against 7 ms a range of 5,000 at a million events).
_EVENT_RANGE = (
    select(*(_E[name] for name in _FIELDS), _E.hash, _D.salt, _D.details)
    .outerjoin(
        EventDetail.__table__,
        (_D.seq == _E.seq) & (_D.seq > bindparam("low")) & (_D.seq <= bindparam("high")),
    )
    .where(_E.seq > bindparam("low"), _E.seq <= bindparam("high"))
    .order_by(_E.seq)
)
_NEXT_SEQ = select(func.min(_E.seq)).where(_E.seq > bindparam("low"))


# Where each value sits in a row of ``_events``: the record's fields, then hash, salt, details.
_SEQ, _PREV, _DIGEST = _FIELDS.index("seq"), _FIELDS.index("prev_hash"), _FIELDS.index("details_digest")
_HASH = len(_FIELDS)


_PREV_MISMATCH = "its previous-hash does not match the event before it"


def _check(event: tuple[Any, ...], prev_hash: str) -> str | None:
    """Why this event does not fit after ``prev_hash``, or None if it does."""
    if event[_PREV] != prev_hash:
        return _PREV_MISMATCH
    values = (_stamp(event[0]), *event[1:_HASH])
    if _sha256(_record_text(values)) != event[_HASH]:
        return "its content does not match its hash (a field was changed)"
    salt, text = event[_HASH + 1], event[_HASH + 2]
    if salt is not None and details_digest(salt, text) != event[_DIGEST]:
        return "its personal details do not match their digest"
    return None


# Below this many events, starting processes costs more than sharing the walk saves.
PARALLEL_FROM = 200_000


def verify(session: Session, processes: int | None = None, parallel_from: int = PARALLEL_FROM) -> Verification:
    """Walk the whole chain; report the first event that does not fit.

    A long chain is cut into one range per core, each walked by a process of its
    own (hashing is CPU work); the seams are then checked here, range by range in
    chain order, so the answer is the one a single walk gives.
    """
    processes = processes or min(os.cpu_count() or 1, 4)
    url = session.get_bind().url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    head_seq, _ = _recorded_head(session)
    if processes < 2 or head_seq < max(parallel_from, processes) or in_memory:
        parts = [_walk(session.connection(), 1, None)]
    else:
        size = head_seq // processes
        starts = [1 + i * size for i in range(processes)]
        ends: list[int | None] = [start - 1 for start in starts[1:]] + [None]  # the last range is open
        address = url.render_as_string(hide_password=False)
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_walk_range, [address] * processes, starts, ends))
    prev_hash, count = GENESIS, 0
    for part in parts:
        if part.count == 0 and part.problem is None:
            continue  # a range with no events: the next one's first event shows the gap
        expected = count + 1
        if part.first_seq != expected:
            return Verification(False, count, prev_hash, expected, _missing(expected, part.first_seq))
        if part.first_prev != prev_hash:
            return Verification(False, count, prev_hash, part.first_seq, _PREV_MISMATCH)
        if part.problem is not None:
            seq, reason, before, hash_before = part.problem
            return Verification(False, count + before, hash_before or prev_hash, seq, reason)
        prev_hash, count = part.last_hash, count + part.count
    head_seq, head_hash = _recorded_head(session)
    if head_seq != count or head_hash != prev_hash:
        reason = f"the recorded head is event {head_seq}, but the chain ends at event {count}"
        return Verification(False, count, prev_hash, count + 1 if head_seq > count else None, reason)
    return Verification(True, count, prev_hash)


@dataclass
class _Part:
    """One range of the chain as walked: its first event's seq and previous-hash (the seam,
    checked by the caller), the events that fit, the last one's hash, and the first problem
    inside the range as (seq, reason, events that fit before it, the hash before it)."""

    first_seq: int = 0
    first_prev: str = ""
    count: int = 0
    last_hash: str = ""
    problem: tuple[int, str, int, str | None] | None = None


def _missing(expected: int, found: int) -> str:
    return f"event {expected} is missing (next found: {found})"


def _walk(conn: Connection, first: int, last: int | None) -> _Part:
    """Check the events from seq ``first`` on (to ``last``) against each other."""
    part = _Part()
    for event in _events(conn, first - 1, last):
        seq = event[_SEQ]
        if part.count == 0:  # the range's first event: its link to the one before is the caller's
            part.first_seq, part.first_prev = seq, event[_PREV]
            problem = _check(event, event[_PREV])
        elif seq != part.first_seq + part.count:
            expected = part.first_seq + part.count
            part.problem = (expected, _missing(expected, seq), part.count, part.last_hash)
            return part
        else:
            problem = _check(event, part.last_hash)
        if problem:
            part.problem = (seq, problem, part.count, part.last_hash or None)
            return part
        part.last_hash = event[_HASH]
        part.count += 1
    return part


def _walk_range(address: str, first: int, last: int | None) -> _Part:
    """``_walk`` in a process of its own, on a connection of its own."""
    engine = create_engine(address, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return _walk(conn, first, last)
    finally:
        engine.dispose()


# --- checkpoints: the head, signed and kept outside the database ---------------
#
# An attacker with write access to the database can cut the chain's tail and move the
# recorded head back with it; the chain still verifies. A checkpoint file, signed with
# the service's key and kept where the database's users cannot write, remembers an event
# the chain must still hold: cutting below it is found.

_CHECKPOINT_SALT = "newsletter-consent/ledger-checkpoint/v1"


def _checkpoint_signature(key: str, seq: int, head_hash: str) -> str:
    message = f"{_CHECKPOINT_SALT}\n{seq}\n{head_hash}".encode()
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def write_checkpoint(session: Session, path: Path, key: str) -> dict[str, Any]:
    """Record the current head in ``path`` (atomically); answers what was written."""
    seq, head_hash = _recorded_head(session)
    record = {
        "seq": seq,
        "hash": head_hash,
        "at": utcnow().isoformat(timespec="seconds") + "Z",
        "signature": _checkpoint_signature(key, seq, head_hash),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return record


def check_checkpoint(session: Session, path: Path, keys: list[str]) -> str | None:
    """Why the chain does not hold the checkpointed event, or None if it does (or there is none)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        seq, head_hash, signature = int(record["seq"]), str(record["hash"]), str(record["signature"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"the checkpoint file {path} cannot be read"
    if not any(hmac.compare_digest(_checkpoint_signature(key, seq, head_hash), signature) for key in keys):
        return f"the checkpoint file {path} is not signed with this service's key"
    if seq == 0:
        return None
    found = session.execute(select(ConsentEvent.hash).where(ConsentEvent.seq == seq)).scalar_one_or_none()
    if found is None:
        return f"the chain no longer holds event {seq}, which the checkpoint of {record.get('at')} recorded"
    if found != head_hash:
        return f"event {seq} is not the one the checkpoint of {record.get('at')} recorded"
    return None
