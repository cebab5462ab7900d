"""The evidence ledger: an append-only hash chain of consent events.

Each event's hash covers every column of its chained record plus the previous
event's hash. Personal details (address, IP, user agent, name) are stored in
``event_details`` next to a random salt; the chained record keeps only the
digest of salt and details. Erasure deletes the details row, which makes the
digest unlinkable to any guessed address while the chain still verifies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ConsentEvent, EventDetail, LedgerHead, utcnow

if TYPE_CHECKING:
    from .notices import Notice

GENESIS = "0" * 64
HEAD_ID = 1


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(event: ConsentEvent) -> str:
    return _sha256(
        canonical(
            {
                "seq": event.seq,
                "at": _stamp(event.at),
                "type": event.type,
                "notice": event.notice,
                "notice_version": event.notice_version,
                "subscription_ref": event.subscription_ref,
                "channel": event.channel,
                "facts": event.facts,
                "details_digest": event.details_digest,
                "prev_hash": event.prev_hash,
            }
        )
    )


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


def append(session: Session, items: list[Evidence]) -> list[ConsentEvent]:
    """Append events at the chain's tip, inside the caller's transaction.

    The head row is locked (``FOR UPDATE``; on SQLite the transaction already
    holds the write lock), so concurrent writers queue and never fork the chain.
    """
    if not items:
        return []
    head = session.execute(select(LedgerHead).where(LedgerHead.id == HEAD_ID).with_for_update()).scalar_one_or_none()
    if head is None:
        head = LedgerHead(id=HEAD_ID, seq=0, hash=GENESIS)
        session.add(head)
    written = []
    for item in items:
        detail = None
        digest = None
        if item.details:
            salt = secrets.token_hex(16)
            details_json = canonical(dict(item.details))
            digest = details_digest(salt, details_json)
            detail = EventDetail(
                seq=head.seq + 1, subscription_ref=item.subscription_ref, salt=salt, details=details_json
            )
        event = ConsentEvent(
            seq=head.seq + 1,
            at=utcnow(),
            type=item.type,
            notice=item.notice,
            notice_version=item.notice_version,
            subscription_ref=item.subscription_ref,
            channel=item.channel,
            facts=canonical(dict(item.facts)),
            details_digest=digest,
            prev_hash=head.hash,
        )
        event.hash = record_hash(event)
        session.add(event)
        if detail is not None:
            session.add(detail)
        head.seq, head.hash = event.seq, event.hash
        written.append(event)
    session.flush()
    return written


@dataclass
class Verification:
    ok: bool
    count: int
    head: str
    broken_seq: int | None = None
    reason: str = ""


def _events(session: Session, batch: int = 5000) -> Iterator[tuple[ConsentEvent, EventDetail | None]]:
    last = 0
    while True:
        rows = session.execute(
            select(ConsentEvent, EventDetail)
            .outerjoin(EventDetail, EventDetail.seq == ConsentEvent.seq)
            .where(ConsentEvent.seq > last)
            .order_by(ConsentEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows  # type: ignore[misc]
        last = rows[-1][0].seq
        session.expunge_all()


def _check(event: ConsentEvent, detail: EventDetail | None, prev_hash: str) -> str | None:
    """Why this event does not fit after ``prev_hash``, or None if it does."""
    if event.prev_hash != prev_hash:
        return "its previous-hash does not match the event before it"
    if record_hash(event) != event.hash:
        return "its content does not match its hash (a field was changed)"
    if detail is not None and details_digest(detail.salt, detail.details) != event.details_digest:
        return "its personal details do not match their digest"
    return None


def verify(session: Session) -> Verification:
    """Walk the whole chain; report the first event that does not fit."""
    prev_hash, count = GENESIS, 0
    for event, detail in _events(session):
        expected = count + 1
        if event.seq != expected:
            reason = f"event {expected} is missing (next found: {event.seq})"
            return Verification(False, count, prev_hash, expected, reason)
        problem = _check(event, detail, prev_hash)
        if problem:
            return Verification(False, count, prev_hash, event.seq, problem)
        prev_hash, count = event.hash, count + 1
    head = session.get(LedgerHead, HEAD_ID)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if head_seq != count or head_hash != prev_hash:
        reason = f"the recorded head is event {head_seq}, but the chain ends at event {count}"
        return Verification(False, count, prev_hash, count + 1 if head_seq > count else None, reason)
    return Verification(True, count, prev_hash)
