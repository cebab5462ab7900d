"""The evidence ledger: an append-only hash chain of consent events.

Each event's hash covers every column of its chained record plus the previous
event's hash. Personal details (address, IP, user agent, name) are stored in
``event_details`` next to a random salt; the chained record keeps only the
digest of salt and details. Erasure deletes the details row, which makes the
digest unlinkable to any guessed address while the chain still verifies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import current_app
from sqlalchemy import Connection, Integer, String, bindparam, create_engine, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.pool import NullPool

from .database import AnySession, UnitOfWork, unit_of_work
from .fastpath import Prepared
from .models import EVENT_IDS, ConsentEvent, EventDetail, LedgerHead, random_hex, utcnow

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


def _canonical_details(details: Mapping[str, Any]) -> str:
    """``canonical`` of an event's details. Nearly always every key and value is text (an
    address, an IP, a user agent): that is written out directly, the same text without the
    encoder's walk of a dict (an import writes one for each of a million rows)."""
    if all(type(key) is str and type(value) is str for key, value in details.items()):
        items = sorted(details.items())
        return "{" + ",".join([_encode_text(key) + ":" + _encode_text(value) for key, value in items]) + "}"
    return canonical(dict(details))


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


# From this many events, ``append`` chains them in the caller's transaction (see there).
CHAIN_AT_ONCE_FROM = 100


def append(uow: UnitOfWork, items: list[Evidence], *, chain: bool | None = None) -> int:
    """Record events inside the caller's transaction; answers how many.

    On PostgreSQL, a few events (a request's: a sign-up, an opt-out, a webhook's) are
    written pending: each with its ``id`` and a ``content_hash`` keyed with the anchor key,
    and no lock on the chain's head, so requests in any number of processes and hosts never
    queue behind one another on the ledger. Once the transaction has committed, the
    sequencer is asked to chain them (``sequence_pending``: after the answer in a request,
    at once elsewhere; the outbox worker and ``ledger sequence`` pick up whatever is left).
    The evidence is durable from the commit; its place in the chain follows within
    ``LEDGER_MAX_MERGE_DELAY_SECONDS``.

    They are chained here and now, under the head's lock, when ``chain`` is true; when
    there are ``CHAIN_AT_ONCE_FROM`` or more (an import's, a purge's: bulk work outside
    requests, for which a second pass over a million rows would cost more than the lock);
    and on SQLite, where the transaction already holds the database's one write lock, so
    chaining costs no extra waiting and a second transaction would (bench/README.md).
    Events pending meanwhile are chained after them. A request's events carry their
    content hash either way.

    The events and their details are written with one multi-row insert each, not as ORM
    objects.
    """
    if not items:
        return 0
    uow.flush()  # pending ORM changes first, so the order of writes stays the caller's
    ids = _allocate_ids(uow, len(items))
    key = anchor_key()
    now = utcnow()
    stamp = _stamp(now)
    bulk = len(items) >= CHAIN_AT_ONCE_FROM
    chain_now = (bulk or uow.dialect.name == "sqlite") if chain is None else chain
    records: list[tuple[Any, ...]] = []
    details: list[dict[str, Any]] = []
    # Items often share one facts mapping (an import's, a purge's): each is encoded once.
    encoded: dict[int, str] = {}
    # Each details row's own 16 random bytes, all from one read of the system's random source.
    salts = iter(random_hex(sum(1 for item in items if item.details), 16))
    for event_id, item in zip(ids, items, strict=True):
        digest = None
        if item.details:
            salt = next(salts)
            details_json = _canonical_details(item.details)
            digest = details_digest(salt, details_json)
            details.append(
                {"event_id": event_id, "subscription_ref": item.subscription_ref, "salt": salt, "details": details_json}
            )
        facts = encoded.get(id(item.facts))
        if facts is None:
            facts = encoded[id(item.facts)] = canonical(dict(item.facts))
        # The record's values in _FIELDS order, as record_hash reads them; no place in the chain yet.
        records.append(
            (
                stamp, item.channel, digest, facts, item.notice, item.notice_version, None, None,
                item.subscription_ref, item.type,
            )
        )  # fmt: skip
    # A pending event needs its content hash; a request's carries it even when chained at once.
    hashed = not (bulk and chain_now)
    content_hashes: list[str | None] = [_content_hash(key, v) for v in records] if hashed else [None] * len(records)
    if chain_now:
        links: list[tuple[int | None, str | None, str | None]] = list(_chain(uow, key, records))
    else:
        links = [(None, None, None)] * len(records)
        uow.after_commit(_request_sequencing)
    events = [
        {
            "id": event_id,
            "seq": seq,
            "at": now,
            "type": values[_TYPE],
            "notice": values[_NOTICE],
            "notice_version": values[_NOTICE_VERSION],
            "subscription_ref": values[_REF],
            "channel": values[_CHANNEL],
            "facts": values[_FACTS],
            "details_digest": values[_DIGEST],
            "prev_hash": prev_hash,
            "hash": event_hash,
            "content_hash": content_hash,
        }
        for event_id, values, (seq, prev_hash, event_hash), content_hash in zip(
            ids, records, links, content_hashes, strict=True
        )
    ]
    uow.send_many(_INSERT_EVENTS, events)
    uow.send_many(_INSERT_DETAILS, details)
    return len(items)


def _allocate_ids(uow: UnitOfWork, count: int) -> list[int]:
    """``count`` new event ids: from the id sequence on PostgreSQL (no lock: numbers a rolled-back
    transaction took are skipped, nothing else); on SQLite the transaction already holds the
    write lock, so the ids after the largest are this writer's alone."""
    if uow.dialect.name == "postgresql":
        return [row.id for row in uow.run(_NEXT_IDS, {"count": count})]
    largest = uow.run(_LARGEST_ID)[0].id or 0
    return list(range(largest + 1, largest + 1 + count))


def _chain(
    uow: UnitOfWork, key: bytes, records: list[tuple[Any, ...]], locked: list[Any] | None = None
) -> list[tuple[int, str, str]]:
    """Give ``records`` (values in ``_FIELDS`` order, seq and prev_hash empty) the next places in
    the chain, inside the caller's transaction: answers (seq, prev_hash, hash) of each.

    The head row is locked (``FOR UPDATE``; on SQLite the transaction already holds the write
    lock), so two chaining writers queue and never fork the chain. The new head is signed with
    the anchor key (see "the anchor" below), but only when the head it extends carries this
    service's signature: otherwise the next event would vouch for a chain rewritten in the
    database. Such a head stays unsigned, and ``ledger verify`` says so, until an operator has
    run ``ledger verify --sign-head``. The chain's first events also write the first
    checkpoint, once committed. ``locked``: the head row as the caller already read and locked it.
    """
    found = uow.run(_READ_HEAD) if locked is None else locked
    head = found[0] if found else None
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    first_seq = seq
    vouched = head is None or _head_is_signed(key, head.seq, head.hash, head.signature)
    if head is not None and not vouched and head.signature is not None:
        # Logged once: the head written below is unsigned, and it is ``ledger verify`` that reports that.
        current_app.logger.error(
            "the ledger head (event %s) carries a signature this service did not make: the chain may have "
            "been rewritten; new events stay unsigned until `ledger verify --sign-head`",
            head.seq,
        )
    links = []
    for values in records:
        seq += 1
        chained = (*values[:_PREV], prev, seq, *values[_SEQ + 1 :])
        event_hash = _sha256(_record_text(chained))
        links.append((seq, prev, event_hash))
        prev = event_hash
    signature = _sign(key, _HEAD_SALT, seq, prev) if vouched else None
    if head is None:
        uow.send(_START_HEAD, {"id": HEAD_ID, "seq": seq, "hash": prev, "signature": signature})
    else:
        uow.send(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev, "new_signature": signature})
    if first_seq == 0 and vouched and links:
        # A checkpoint must exist whenever events do, with or without a worker; only the
        # chain's start writes a file, every later one leaves that to the worker. One of the
        # empty chain first, before the commit: it holds whether or not the commit comes, and
        # a process killed between the commit and the file below still leaves a checkpoint.
        path = checkpoint_path()
        _checkpoint_empty_chain(path, key)
        uow.after_commit(functools.partial(_checkpoint_first_events, path, key, seq, prev))
    return links


# --- the sequencer: pending events take their place in the chain ----------------
#
# Certificate Transparency logs answer a submission with a promise to include it within a
# maximum merge delay, and sequence submissions in batches; the ledger does the same. A
# request commits its event with a content hash keyed with the anchor key, which someone
# with only database access cannot forge; ``sequence`` checks that hash before it gives
# the event its place, so what is chained is what the request wrote. A pending event whose
# content hash does not match is never chained: it stays pending, and ``ledger verify``,
# ``/readyz`` and the metrics report it once it is older than the merge delay.

_CONTENT_SALT = "newsletter-consent/ledger-content/v1"
SEQUENCE_BATCH = 5000


def _content_hash(key: bytes, values: tuple[Any, ...]) -> str:
    """The keyed hash of a record's content: every chained field but its place (seq, prev_hash)."""
    content = (*values[:_PREV], None, None, *values[_SEQ + 1 :])
    text = _CONTENT_SALT + "\n" + _record_text(content)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _request_sequencing() -> None:
    """After a commit that left events pending: chain them (after the answer, in a request)."""
    from . import after_response  # imported here: after_response must not import the ledger back

    after_response.schedule_sequencing(sequence_pending)


def sequence_pending(batch: int = SEQUENCE_BATCH) -> int:
    """Chain every pending event, batch by batch; answers how many were chained.

    Each run waits for the head's lock: a run that starts after a commit chains what that
    commit wrote, unless a run before it already has, so nothing committed is left behind
    (runs after many requests' commits in one process collapse into one: ``after_response``).
    """
    total, after = 0, 0
    while True:
        done, seen, after = _sequence_after(batch, after)
        total += done
        # Every event up to ``after`` is chained now, or does not match its content hash and
        # stays pending: the next batch starts past them, so no number of changed events
        # stops the genuine ones behind them from being chained.
        if seen < batch:
            return total


def sequence(limit: int = SEQUENCE_BATCH) -> int:
    """Chain up to ``limit`` pending events, oldest id first, in one transaction; answers how many.

    If the process dies before the commit, nothing of the batch is chained and the next run
    chains it; an event is given its place by an UPDATE of a row whose ``seq`` is still
    empty, under the head's lock, so it is never chained twice.
    """
    return _sequence_after(limit, 0)[0]


def _sequence_after(limit: int, after: int) -> tuple[int, int, int]:
    """``sequence`` for the pending events with an id above ``after``: answers how many were
    chained, how many were read, and the highest id read (``after`` when none)."""
    key = anchor_key()
    with unit_of_work(orm=False) as uow:
        # The head first: the pending rows read after it is locked are those no other
        # sequencer is chaining (it has committed, and the rows it chained have a seq).
        head = uow.run(_READ_HEAD)
        rows = list(uow.run(_PENDING, {"limit": limit, "after": after}))
        last = rows[-1].id if rows else after
        good: list[tuple[int, tuple[Any, ...]]] = []
        for row in rows:
            if _genuine(key, row):
                good.append((row.id, _pending_values(row)))
            else:
                _report_forged(row.id)
        if not good:
            return 0, len(rows), last
        links = _chain(uow, key, [values for _id, values in good], locked=head)
        _place(uow, [event_id for event_id, _values in good], links)
    return len(good), len(rows), last


def _place(uow: UnitOfWork, ids: list[int], links: list[tuple[int, str, str]]) -> None:
    """Give the events ``ids`` their (seq, prev_hash, hash). On PostgreSQL in one statement, the
    places as arrays: a statement per event cost the server a planning and an execution each, and
    the driver its Python, for every request's event (bench/README.md). SQLite runs one statement
    per event in its own C loop, in the process."""
    if uow.dialect.name == "postgresql":
        seqs, prevs, hashes = (list(column) for column in zip(*links, strict=True))
        uow.send(_PLACE_EVENTS, {"ids": ids, "seqs": seqs, "prevs": prevs, "hashes": hashes})
        return
    uow.send_many(
        _PLACE_EVENT,
        [
            {"event_id": event_id, "new_seq": seq, "new_prev": prev_hash, "new_hash": event_hash}
            for event_id, (seq, prev_hash, event_hash) in zip(ids, links, strict=True)
        ],
    )


def _pending_values(row: Any) -> tuple[Any, ...]:
    """A pending row's record values in ``_FIELDS`` order (no seq or prev_hash yet)."""
    return (
        _stamp(row.at), row.channel, row.details_digest, row.facts, row.notice, row.notice_version, None, None,
        row.subscription_ref, row.type,
    )  # fmt: skip


def _genuine(key: bytes, row: Any) -> bool:
    """Whether a pending row is what this service wrote: its content hash matches."""
    return row.content_hash is not None and _same(_content_hash(key, _pending_values(row)), row.content_hash)


_reported_forged: set[int] = set()


def _report_forged(event_id: int) -> None:
    if event_id not in _reported_forged:
        _reported_forged.add(event_id)
        current_app.logger.error(
            "pending evidence event id %s does not match its content hash: it was changed or written "
            "outside this service, and is not chained",
            event_id,
        )


@dataclass(frozen=True)
class Pending:
    """Events not chained yet: how many, the oldest one's age, and how many are older than the bound."""

    count: int
    oldest_seconds: float | None
    overdue: int
    bound_seconds: float


def pending(session: AnySession, notices: Collection[str] | None = None) -> Pending:
    """What waits for the sequencer, against ``LEDGER_MAX_MERGE_DELAY_SECONDS``: all of it, or
    (``notices``) the events under those notices only, for a controller's own staff."""
    bound = float(current_app.config["LEDGER_MAX_MERGE_DELAY_SECONDS"])
    now = utcnow()
    scope = _PENDING_ONLY if notices is None else _PENDING_ONLY & _EV.c.notice.in_(sorted(notices))
    count, oldest = session.execute(select(func.count(), func.min(_EV.c.at)).where(scope)).one()
    overdue = 0
    if oldest is not None and (now - oldest).total_seconds() > bound:
        overdue = session.execute(
            select(func.count()).where(scope, _EV.c.at < now - timedelta(seconds=bound))
        ).scalar_one()
    age = None if oldest is None else max(0.0, (now - oldest).total_seconds())
    return Pending(count, age, overdue, bound)


# Every evidence write runs these, prepared once (see bench/README.md and app/fastpath.py).
_HEAD = LedgerHead.__table__
_LOCKED_HEAD = select(_HEAD.c.seq, _HEAD.c.hash, _HEAD.c.signature).where(_HEAD.c.id == HEAD_ID).with_for_update()
_READ_HEAD = Prepared(_LOCKED_HEAD)
_MOVE_HEAD = Prepared(
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"), signature=bindparam("new_signature"))
)
_START_HEAD = Prepared(insert(_HEAD))
_INSERT_EVENTS = Prepared(insert(ConsentEvent.__table__))
_INSERT_DETAILS = Prepared(insert(EventDetail.__table__))
_EV = ConsentEvent.__table__
_NEXT_IDS = Prepared(
    select(func.nextval(literal(EVENT_IDS)).label("id")).select_from(func.generate_series(1, bindparam("count")))
)
_LARGEST_ID = Prepared(select(func.max(_EV.c.id).label("id")))
_PENDING_ONLY = _EV.c.seq.is_(None)
_PENDING = Prepared(
    select(
        _EV.c.id, _EV.c.at, _EV.c.channel, _EV.c.details_digest, _EV.c.facts, _EV.c.notice, _EV.c.notice_version,
        _EV.c.subscription_ref, _EV.c.type, _EV.c.content_hash,
    )
    .where(_PENDING_ONLY, _EV.c.id > bindparam("after"))
    .order_by(_EV.c.id)
    .limit(bindparam("limit"))
)  # fmt: skip
_PLACE_EVENT = Prepared(
    update(_EV)
    .where(_EV.c.id == bindparam("event_id"), _PENDING_ONLY)
    .values(seq=bindparam("new_seq"), prev_hash=bindparam("new_prev"), hash=bindparam("new_hash"))
)
_PLACES = func.unnest(
    bindparam("ids", type_=ARRAY(Integer)),
    bindparam("seqs", type_=ARRAY(Integer)),
    bindparam("prevs", type_=ARRAY(String)),
    bindparam("hashes", type_=ARRAY(String)),
).table_valued("id", "seq", "prev_hash", "hash").render_derived(name="places")
_PLACE_EVENTS = Prepared(  # PostgreSQL only: UPDATE ... FROM unnest(arrays)
    update(_EV)
    .where(_EV.c.id == _PLACES.c.id, _PENDING_ONLY)
    .values(seq=_PLACES.c.seq, prev_hash=_PLACES.c.prev_hash, hash=_PLACES.c.hash)
)


class Head(NamedTuple):
    seq: int
    hash: str
    signature: str | None


def _recorded_head(session: AnySession) -> Head:
    """The head row (the chain's start when there is none), read without a lock."""
    query = select(_HEAD.c.seq, _HEAD.c.hash, _HEAD.c.signature).where(_HEAD.c.id == HEAD_ID)
    head = session.execute(query).one_or_none()
    return Head(head.seq, head.hash, head.signature) if head is not None else Head(0, GENESIS, None)


@dataclass
class Verification:
    ok: bool
    count: int
    head: str
    broken_seq: int | None = None
    reason: str = ""
    # ``check`` only: the event that the checkpoint outside the database vouches for, and when it was written.
    checkpoint_seq: int | None = None
    checkpoint_at: str | None = None
    signed_now: bool = False  # ``sign_head`` signed the recorded head
    # ``verify`` and ``check``: events written but not chained yet, and the oldest one's age.
    pending: int = 0
    pending_oldest_seconds: float | None = None


def _events(conn: Connection, after: int = 0, upto: int | None = None, batch: int = 5000) -> Iterator[tuple[Any, ...]]:
    """The chained events after seq ``after`` (up to ``upto``, if given) in chain order, as plain
    tuples: the record's values in ``_FIELDS`` order, then its hash, its details' salt and text.

    Plain tuples, not ORM objects or mappings: ``ledger verify`` walks every event ever written.
    Each query asks for one range of seqs, not "the next N": the plan then stays an index range
    scan of N rows whatever the planner believes of a table that has just grown by a million.
    """
    last = after
    while upto is None or last < upto:
        high = last + batch if upto is None else min(last + batch, upto)
        rows = conn.execute(_EVENT_RANGE, {"low": last, "high": high}).all()
        if rows:
            details = _details_of(conn, [row[-1] for row in rows])
            for row in rows:
                yield (*row[:-1], *details.get(row[-1], _NO_DETAILS))
            last = high
            continue
        following = conn.execute(_NEXT_SEQ, {"low": last}).scalar()  # past a gap, or the end
        if following is None or (upto is not None and following > upto):
            return
        last = following - 1


_NO_DETAILS = (None, None)


def _details_of(conn: Connection, ids: list[int]) -> dict[int, tuple[str, str]]:
    """The salt and text of the details of those events (by event id) that still have them.

    Events are mostly chained in the order their ids were given, so a range of seqs is a
    near-dense range of ids, read as one index range; an event that waited long for its
    place widens the range, and then the ids are asked for by name instead.
    """
    low, high = min(ids), max(ids)
    if high - low < 2 * len(ids):
        found = conn.execute(_DETAIL_RANGE, {"low": low, "high": high})
    else:
        found = conn.execute(_DETAIL_NAMED, {"ids": ids})
    return {event_id: (salt, text) for event_id, salt, text in found}


_E, _D = ConsentEvent.__table__.c, EventDetail.__table__.c
_EVENT_RANGE = (
    select(*(_E[name] for name in _FIELDS), _E.hash, _E.id)
    .where(_E.seq > bindparam("low"), _E.seq <= bindparam("high"))
    .order_by(_E.seq)
)
_DETAIL_RANGE = select(_D.event_id, _D.salt, _D.details).where(
    _D.event_id >= bindparam("low"), _D.event_id <= bindparam("high")
)
_DETAIL_NAMED = select(_D.event_id, _D.salt, _D.details).where(_D.event_id.in_(bindparam("ids", expanding=True)))
_NEXT_SEQ = select(func.min(_E.seq)).where(_E.seq > bindparam("low"))


# Where each value sits in a row of ``_events``: the record's fields, then hash, salt, details.
_SEQ, _PREV, _DIGEST = _FIELDS.index("seq"), _FIELDS.index("prev_hash"), _FIELDS.index("details_digest")
_TYPE, _NOTICE, _NOTICE_VERSION = _FIELDS.index("type"), _FIELDS.index("notice"), _FIELDS.index("notice_version")
_REF, _CHANNEL, _FACTS = _FIELDS.index("subscription_ref"), _FIELDS.index("channel"), _FIELDS.index("facts")
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


def verify(session: AnySession, processes: int | None = None, parallel_from: int = PARALLEL_FROM) -> Verification:
    """Walk the whole chain; report the first event that does not fit, or a recorded head
    that this service did not sign (checked once, not per event).

    A long chain is cut into one range per core, each walked by a process of its
    own (hashing is CPU work); the seams are then checked here, range by range in
    chain order, so the answer is the one a single walk gives.
    """
    head = _recorded_head(session)
    result = _verify_chain(session, head, processes, parallel_from)
    if result.ok and not _head_is_signed(anchor_key(), *head):
        return replace(result, ok=False, reason=UNSIGNED_HEAD)
    if not result.ok:
        return result
    waiting, problem = _pending_problem(session)
    result = replace(result, pending=waiting.count, pending_oldest_seconds=waiting.oldest_seconds)
    return replace(result, ok=False, reason=problem) if problem else result


def _pending_problem(session: AnySession) -> tuple[Pending, str | None]:
    """The events waiting for their place, and why they break the promise, if they do: one whose
    content hash does not match (changed, or written behind the service's back), or events
    older than the merge delay (no sequencer is running)."""
    waiting = pending(session)
    if not waiting.count:
        return waiting, None
    key = anchor_key()
    for row in session.execute(_PENDING.statement, {"limit": waiting.count, "after": 0}):
        if not _genuine(key, row):
            return waiting, f"pending event id {row.id} does not match its content hash (changed, or not written here)"
    if waiting.overdue:
        return waiting, (
            f"{waiting.overdue} events have waited more than {waiting.bound_seconds:g} s for their place in the "
            "chain: no sequencer is running (`flask --app wsgi outbox run`, or `ledger sequence`)"
        )
    return waiting, None


def _verify_chain(session: AnySession, head: Head, processes: int | None, parallel_from: int) -> Verification:
    """The chain up to ``head`` (the head as read when the walk began: events appended
    meanwhile are the next walk's), its link to ``head``, and nothing past it."""
    processes = processes or min(os.cpu_count() or 1, 4)
    url = session.get_bind().engine.url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if processes < 2 or head.seq < max(parallel_from, processes) or in_memory:
        parts = [_walk(session.connection(), 1, head.seq)]
    else:
        size = head.seq // processes
        starts = [1 + i * size for i in range(processes)]
        ends = [start - 1 for start in starts[1:]] + [head.seq]
        address = url.render_as_string(hide_password=False)
        report = walk_progress.get()
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_walk_range, address, start, end) for start, end in zip(starts, ends, strict=True)]
            for future in as_completed(futures):
                if report is not None:
                    report(future.result().count)
            parts = [future.result() for future in futures]
    result = _join(parts, 0, GENESIS)
    if not result.ok:
        return result
    count, prev_hash = result.count, result.head
    if count != head.seq:
        reason = f"the recorded head is event {head.seq}, but the chain ends at event {count}"
        return Verification(False, count, prev_hash, count + 1, reason)
    if prev_hash != head.hash:
        return Verification(False, count, prev_hash, None, f"the recorded head's hash is not that of event {count}")
    following = session.execute(_NEXT_SEQ, {"low": head.seq}).scalar()
    # An append commits its events and its head together: an event past the head that the
    # head, read again now, has not reached was put there behind the service's back.
    if following is not None and _recorded_head(session).seq < following:
        reason = f"the chain goes on past the recorded head (event {head.seq}): event {following} follows it"
        return Verification(False, count, prev_hash, following, reason)
    return result


def _join(parts: list[_Part], count: int, prev_hash: str) -> Verification:
    """The walked ranges joined in chain order after ``count`` events ending in ``prev_hash``."""
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


# Told how many events a walk has checked, as it goes (``ledger verify``'s progress bar).
# Set for the walk in this process only; ranges walked in other processes report when done.
walk_progress: ContextVar[Callable[[int], None] | None] = ContextVar("walk_progress", default=None)
WALK_REPORT_EVERY = 5000


def _walk(conn: Connection, first: int, last: int | None) -> _Part:
    """Check the events from seq ``first`` on (to ``last``) against each other."""
    part = _Part()
    report = walk_progress.get()
    for event in _events(conn, first - 1, last):
        if report is not None and part.count % WALK_REPORT_EVERY == 0 and part.count:
            report(WALK_REPORT_EVERY)
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


# --- the anchor: the head signed with a key the database does not hold ----------
#
# Whoever can write to the database can rewrite an event, recompute every later hash and
# move the recorded head to the new tip: the chain alone verifies again. So every head is
# signed (HMAC-SHA256) with a key that lives outside the database, and a head without this
# service's signature fails ``ledger verify``. What a copied signature still allows is a
# rollback: cutting the tail and restoring an older head together with its signature. The
# checkpoint file, signed with the same key and kept where the database's users cannot
# write, remembers an event the chain must still hold, so a rollback below it is found
# too; one to a state after the last checkpoint is not (SECURITY.md).
#
# The key is derived from SUPPRESSION_PEPPER, not SECRET_KEY: SECRET_KEY is rotated, and
# a rotation would leave every signed head unverifiable; the pepper never is (a new pepper
# would orphan every suppression entry as well).

_ANCHOR_LABEL = b"newsletter-consent/ledger-anchor/v1"
_HEAD_SALT = "newsletter-consent/ledger-head/v1"
_CHECKPOINT_SALT = "newsletter-consent/ledger-checkpoint/v1"
_SIGN_HEAD_HINT = "`flask --app wsgi ledger verify --sign-head`"

UNSIGNED_HEAD = (
    "the recorded head is not signed with this service's key: the chain may have been rewritten "
    f"(a database upgraded from before heads were signed needs {_SIGN_HEAD_HINT} once)"
)


class AnchorError(Exception):
    """The checkpoint cannot be moved: the message says why, for the operator."""


@functools.lru_cache(maxsize=8)
def _derived_key(pepper: str) -> bytes:
    return hmac.digest(pepper.encode("utf-8"), _ANCHOR_LABEL, "sha256")


def anchor_key() -> bytes:
    """The key that signs heads and checkpoints, from the running app's SUPPRESSION_PEPPER."""
    return _derived_key(current_app.config["SUPPRESSION_PEPPER"])


def _sign(key: bytes, salt: str, seq: int, head_hash: str) -> str:
    return hmac.new(key, f"{salt}\n{seq}\n{head_hash}".encode(), hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    # As bytes: ``compare_digest`` refuses a str with non-ASCII characters, which a forger may write.
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def _head_is_signed(key: bytes, seq: int, head_hash: str, signature: str | None) -> bool:
    if seq == 0:
        return head_hash == GENESIS  # no event yet: nothing to vouch for
    return signature is not None and _same(_sign(key, _HEAD_SALT, seq, head_hash), signature)


def checkpoint_path() -> Path:
    return Path(current_app.config["LEDGER_CHECKPOINT_FILE"])


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    signature: str


def _read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path``, None if there is no file; AnchorError if it cannot be read."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Checkpoint(int(record["seq"]), str(record["hash"]), str(record.get("at")), str(record["signature"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AnchorError(f"the checkpoint file {path} cannot be read ({type(exc).__name__})") from exc


def _checkpoint_problem(session: AnySession, path: Path, checkpoint: Checkpoint) -> str | None:
    """Why the chain does not hold the checkpointed event, or None if it does."""
    message = f"{_CHECKPOINT_SALT}\n{checkpoint.seq}\n{checkpoint.hash}".encode()
    # Checkpoints written before the anchor key were signed with SECRET_KEY (or a fallback).
    config = current_app.config
    earlier = [key.encode("utf-8") for key in (config["SECRET_KEY"], *config["SECRET_KEY_FALLBACKS"])]
    if not any(
        _same(hmac.new(key, message, hashlib.sha256).hexdigest(), checkpoint.signature)
        for key in (anchor_key(), *earlier)
    ):
        return f"the checkpoint file {path} is not signed with this service's key"
    if checkpoint.seq == 0:
        return None
    found = session.execute(select(ConsentEvent.hash).where(ConsentEvent.seq == checkpoint.seq)).scalar_one_or_none()
    if found is None:
        return f"the chain no longer holds event {checkpoint.seq}, which the checkpoint of {checkpoint.at} recorded"
    if found != checkpoint.hash:
        return f"event {checkpoint.seq} is not the one the checkpoint of {checkpoint.at} recorded"
    return None


def _no_checkpoint(path: Path, count: int) -> str:
    return (
        f"there is no checkpoint file at {path}, but the ledger holds {count} events: nothing outside the "
        f"database vouches for them (if the file was lost, not removed to hide a rewrite, {_SIGN_HEAD_HINT} "
        "writes a new one)"
    )


def check(session: AnySession, processes: int | None = None, parallel_from: int = PARALLEL_FROM) -> Verification:
    """``verify``, and the checkpoint outside the database: it must exist once there are events,
    be signed with this service's key, and name an event the chain still holds. What ``ledger
    verify`` and the dashboard's consent certificate report."""
    result = verify(session, processes, parallel_from)
    if not result.ok:
        return result
    checkpoint, problem = _held_checkpoint(session)
    if problem:
        return replace(result, ok=False, reason=problem)
    if checkpoint is None and result.count:
        return replace(result, ok=False, reason=_no_checkpoint(checkpoint_path(), result.count))
    if checkpoint is None:
        return result
    return replace(result, checkpoint_seq=checkpoint.seq, checkpoint_at=checkpoint.at)


def _held_checkpoint(session: AnySession) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint (None if there is no file), or why it does not hold: unreadable, not signed
    with this service's key, or naming an event the chain no longer holds."""
    path = checkpoint_path()
    try:
        checkpoint = _read_checkpoint(path)
    except AnchorError as exc:
        return None, str(exc)
    if checkpoint is None:
        return None, None
    return checkpoint, _checkpoint_problem(session, path, checkpoint)


def sign_head(session: AnySession, processes: int | None = None, parallel_from: int = PARALLEL_FROM) -> Verification:
    """Sign the recorded head once the whole chain verifies and the checkpoint, where there is
    one, is still held; for a database upgraded from before heads were signed, or a head left
    unsigned after a rewrite was found and dealt with. The caller then writes the checkpoint
    (``renew_checkpoint(create=True)``)."""
    result = _verify_chain(session, _recorded_head(session), processes, parallel_from)
    if not result.ok:
        return result
    checkpoint, problem = _held_checkpoint(session)
    if problem:
        return replace(result, ok=False, reason=problem)
    key = anchor_key()
    with unit_of_work() as uow:
        head = uow.session.execute(_LOCKED_HEAD).one_or_none()  # locked: no append moves it while it is signed
        if head is None:
            return result  # no head row and (the walk says) no events: nothing to sign
        if head.seq != result.count:  # events appended during the walk: check them too
            result = _join([_walk(uow.conn, result.count + 1, head.seq)], result.count, result.head)
            if not result.ok:
                return result
        if (result.count, result.head) != (head.seq, head.hash):
            reason = f"the recorded head is event {head.seq}, but the chain ends at event {result.count}"
            return replace(result, ok=False, reason=reason)
        if not _head_is_signed(key, *head):
            signature = _sign(key, _HEAD_SALT, head.seq, head.hash)
            uow.session.execute(update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(signature=signature))
            result = replace(result, signed_now=True)
    return replace(result, checkpoint_seq=checkpoint.seq if checkpoint else None)


def renew_checkpoint(session: AnySession, create: bool = False) -> dict[str, Any]:
    """Move the checkpoint to the recorded head and answer what was written (the worker, ``ledger
    checkpoint``, a ``ledger verify`` that passed). It is never moved to a head this service did
    not sign, nor away from an event the chain no longer holds: that would erase the evidence of
    a rollback. Nor is a missing one made for events that exist, unless ``create`` (an operator
    who has just verified the chain: ``ledger verify --sign-head``). AnchorError says why not."""
    path, key = checkpoint_path(), anchor_key()
    head = _recorded_head(session)
    if not _head_is_signed(key, *head):
        raise AnchorError(UNSIGNED_HEAD)
    checkpoint = _read_checkpoint(path)
    if checkpoint is None and head.seq > 0 and not create:
        raise AnchorError(_no_checkpoint(path, head.seq))
    if checkpoint is not None:
        problem = _checkpoint_problem(session, path, checkpoint)
        if problem:
            raise AnchorError(problem)
        if checkpoint.seq > head.seq:
            raise AnchorError(f"the recorded head (event {head.seq}) is behind the checkpoint (event {checkpoint.seq})")
    return _write_checkpoint(path, key, head.seq, head.hash)


def _checkpoint_empty_chain(path: Path, key: bytes) -> None:
    """Where there is no checkpoint yet: one of the empty chain (event 0), which vouches for
    nothing but holds for any chain; the first events' checkpoint replaces it once committed.
    A file already there is left alone, as ``_checkpoint_first_events`` leaves it."""
    try:
        if _read_checkpoint(path) is None:
            _write_checkpoint(path, key, 0, GENESIS)
    except (OSError, AnchorError) as exc:  # reported as the first checkpoint's failure is
        current_app.logger.error("the ledger's first checkpoint could not be written to %s: %s", path, exc)


def _checkpoint_first_events(path: Path, key: bytes, seq: int, head_hash: str) -> None:
    """Once the chain's first events are committed: the first checkpoint. A checkpoint of a
    later event already there is left alone (the chain starting afresh under it is what
    ``ledger verify`` must then report), and so is a file this service cannot read."""
    try:
        existing = _read_checkpoint(path)
        if existing is None or existing.seq == 0:
            _write_checkpoint(path, key, seq, head_hash)
        else:
            current_app.logger.warning(
                "the ledger starts afresh but %s holds a checkpoint of event %s; left for `ledger verify`",
                path,
                existing.seq,
            )
    except (OSError, AnchorError) as exc:  # the events are committed; the operator must see this
        current_app.logger.error("the ledger's first checkpoint could not be written to %s: %s", path, exc)


def _write_checkpoint(path: Path, key: bytes, seq: int, head_hash: str) -> dict[str, Any]:
    record = {
        "seq": seq,
        "hash": head_hash,
        "at": utcnow().isoformat(timespec="seconds") + "Z",
        "signature": _sign(key, _CHECKPOINT_SALT, seq, head_hash),
    }
    _replace_file(path, json.dumps(record) + "\n")
    # The log keeps every checkpoint too: a second copy outside the database.
    current_app.logger.info("ledger checkpoint: event %s, hash %s", seq, head_hash)
    return record


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (and a folder made for it likewise)."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A name of its own per writer: the worker, ``ledger verify`` and a first append may write at once.
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
