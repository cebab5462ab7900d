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
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from .database import parameters
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


def append(session: Session, items: list[Evidence]) -> int:
    """Append events at the chain's tip, inside the caller's transaction; answers the head's seq (0 if none given).

    The head row is locked (``FOR UPDATE``; on SQLite the transaction already
    holds the write lock), so concurrent writers queue and never fork the chain.
    The events are written with one multi-row insert, not as ORM objects: a
    purge or an import appends thousands at a time.
    """
    if not items:
        return 0
    session.flush()  # pending ORM changes first, so the order of writes stays the caller's
    conn = session.connection()  # Core statements on the transaction's connection: no ORM layer per call
    head = conn.execute(_READ_HEAD).one_or_none()
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
    conn.execute(_INSERT_EVENTS, parameters(events))
    if details:
        conn.execute(_INSERT_DETAILS, parameters(details))
    if head is None:
        conn.execute(insert(_HEAD).values(id=HEAD_ID, seq=seq, hash=prev))
    else:
        conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
    return seq


# Every evidence write runs these: built once as Core statements, they skip the
# ORM's per-call statement construction and bookkeeping (see bench/README.md).
_HEAD = LedgerHead.__table__
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_INSERT_EVENTS = insert(ConsentEvent.__table__)
_INSERT_DETAILS = insert(EventDetail.__table__)


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


def _events(session: Session, batch: int = 5000) -> Iterator[tuple[Any, ...]]:
    """Every event in chain order as plain tuples: the record's values in ``_FIELDS`` order,
    then its hash, its details' salt and text.

    Plain tuples, not ORM objects or mappings: ``ledger verify`` walks every event ever written.
    """
    e, d = ConsentEvent.__table__.c, EventDetail.__table__.c
    query = (
        select(*(e[name] for name in _FIELDS), e.hash, d.salt, d.details)
        .outerjoin(EventDetail.__table__, d.seq == e.seq)
        .order_by(e.seq)
        .limit(batch)
    )
    conn = session.connection()
    last = 0
    while True:
        rows = conn.execute(query.where(e.seq > last)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][_SEQ]


# Where each value sits in a row of ``_events``: the record's fields, then hash, salt, details.
_SEQ, _PREV, _DIGEST = _FIELDS.index("seq"), _FIELDS.index("prev_hash"), _FIELDS.index("details_digest")
_HASH = len(_FIELDS)


def _check(event: tuple[Any, ...], prev_hash: str) -> str | None:
    """Why this event does not fit after ``prev_hash``, or None if it does."""
    if event[_PREV] != prev_hash:
        return "its previous-hash does not match the event before it"
    values = (_stamp(event[0]), *event[1:_HASH])
    if _sha256(_record_text(values)) != event[_HASH]:
        return "its content does not match its hash (a field was changed)"
    salt, text = event[_HASH + 1], event[_HASH + 2]
    if salt is not None and details_digest(salt, text) != event[_DIGEST]:
        return "its personal details do not match their digest"
    return None


def verify(session: Session) -> Verification:
    """Walk the whole chain; report the first event that does not fit."""
    prev_hash, count = GENESIS, 0
    for event in _events(session):
        expected = count + 1
        if event[_SEQ] != expected:
            reason = f"event {expected} is missing (next found: {event[_SEQ]})"
            return Verification(False, count, prev_hash, expected, reason)
        problem = _check(event, prev_hash)
        if problem:
            return Verification(False, count, prev_hash, event[_SEQ], problem)
        prev_hash, count = event[_HASH], count + 1
    head_seq, head_hash = _recorded_head(session)
    if head_seq != count or head_hash != prev_hash:
        reason = f"the recorded head is event {head_seq}, but the chain ends at event {count}"
        return Verification(False, count, prev_hash, count + 1 if head_seq > count else None, reason)
    return Verification(True, count, prev_hash)


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
