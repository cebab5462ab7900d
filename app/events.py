"""Evidence events as every reader shows them: one serializer, one reading of the stored JSON.

The API's event pages (``/api/v1/events``), the dashboard's timeline of a subscription
and the subject export (``export_by_hash``) all turn a ledger event, and the personal
details kept beside it, into the same plain dictionary here. What differs between them
is chosen by the caller:

- whether the personal ``details`` appear: pass the ``EventDetail`` row to include them
  (the API does so only for one person's own events; the export and the dashboard always);
- whether ``subscription_ref`` appears (``with_ref``): the API's consumers page through
  events of many people and need it to tell them apart; the export is one person's
  document and the timeline one subscription's, so theirs leave it out;
- the ``notice`` shown: the event's own, or the one given (the export names the notice of
  the subscription an event belongs to).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from .extensions import db
from .models import ConsentEvent, EventDetail


def ledger_facts(event: ConsentEvent) -> dict[str, Any]:
    """The chained, non-personal facts of an event (canonical JSON in the ledger)."""
    facts = json.loads(event.facts or "{}")
    return facts if isinstance(facts, dict) else {}


def ledger_details(detail: EventDetail) -> dict[str, Any]:
    """The personal details of an event, kept outside the chain until erased."""
    details = json.loads(detail.details or "{}")
    return details if isinstance(details, dict) else {}


def event_time(at: datetime) -> str:
    """A stored (naive UTC) event time as ISO 8601 with microseconds and a ``Z``."""
    return at.isoformat(timespec="microseconds") + "Z"


def serialize_event(
    event: ConsentEvent,
    detail: EventDetail | None = None,
    notice: str | None = None,
    *,
    with_ref: bool = False,
) -> dict[str, Any]:
    """One event as a JSON-ready dictionary.

    Always: ``seq`` (None while the event waits for its place in the chain: ``ledger.append``),
    ``type``, ``at`` (``event_time``), ``notice`` (``notice`` if given,
    else the event's), ``notice_version``, ``channel`` and ``facts``. ``details`` only
    when ``detail`` is given; ``subscription_ref`` only ``with_ref``.
    """
    item: dict[str, Any] = {
        "seq": event.seq,
        "type": event.type,
        "at": event_time(event.at),
        "notice": notice if notice is not None else event.notice,
        "notice_version": event.notice_version,
        "channel": event.channel,
        "facts": ledger_facts(event),
    }
    if with_ref:
        item["subscription_ref"] = event.subscription_ref
    if detail is not None:
        item["details"] = ledger_details(detail)
    return item


def with_details() -> Select[ConsentEvent, EventDetail]:
    """Events joined to their details; a row's detail is None where there are none (or they were erased)."""
    return select(ConsentEvent, EventDetail).outerjoin(EventDetail, EventDetail.event_id == ConsentEvent.id)


def events_of(refs: Collection[str]) -> list[tuple[ConsentEvent, EventDetail | None]]:
    """The events of the given subscriptions with their details, in the order they were written
    (an event's place in the chain may follow a moment later)."""
    if not refs:
        return []
    query = with_details().where(ConsentEvent.subscription_ref.in_(list(refs))).order_by(ConsentEvent.id)
    return [(event, detail) for event, detail in db.session.execute(query).all()]
