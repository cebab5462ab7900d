"""Read opt-outs that webhooks miss from the provider's event report.

APSIS flows do not fire for opt-outs made by import or through the API, so
``providers poll-apsis`` reads the email event report (UNSUBSCRIBED, BOUNCED,
ABUSE) from a stored cursor and applies each row through the same domain
function as a webhook; a row seen twice has one effect. The report allows one
call a minute: the time of the last call is stored with the cursor, and a run
that comes too soon does nothing, so the command is safe from cron every minute.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app

from . import consent
from .database import unit_of_work
from .extensions import db
from .models import ProviderCursor, utcnow
from .notices import Notice
from .providers import ProviderNotConfigured, ProviderPermanent, ProviderRetry
from .providers.apsis import ApsisProvider

log = logging.getLogger(__name__)

REPORT_TYPES = ("UNSUBSCRIBED", "BOUNCED", "ABUSE")
REPORT_KINDS = {"UNSUBSCRIBED": "unsubscribe", "BOUNCED": "bounce", "ABUSE": "complaint"}
CALL_INTERVAL = timedelta(seconds=60)
FIRST_RUN_LOOKBACK = timedelta(days=7)


class PollError(Exception):
    """The report could not be read; the message says why (nothing was applied)."""


def _occurred(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _event(notice: Notice, row: dict[str, Any]) -> consent.ProviderEvent | str:
    kind = REPORT_KINDS.get(str(row.get("type", "")).upper())
    if kind is None or not row.get("id"):
        return "ignored"
    if kind == "bounce" and str(row.get("bounce_type", "hard")).lower() == "soft":
        return "ignored"  # a soft bounce is no reason to stop mailing
    try:
        email = consent.normalise_email(str(row.get("email", "")))
    except consent.InvalidInput:
        return "invalid_address"
    return consent.ProviderEvent(
        provider="apsis",
        kind=kind,
        notice=notice,
        email=email,
        identity=f"report:{row['id']}",
        channel="report",
        reason=str(row.get("type")).lower(),
        occurred_at=_occurred(row.get("occurred_at")),
    )


def _claim_call(name: str) -> tuple[bool, str | None, float]:
    """Take this minute's call for the report; answers (allowed, cursor, seconds to wait)."""
    now = utcnow()
    with unit_of_work() as uow:
        row = uow.session.get(ProviderCursor, name, with_for_update=True)
        if row is None:
            row = ProviderCursor(name=name)
            uow.session.add(row)
        if row.last_called_at is not None and now - row.last_called_at < CALL_INTERVAL:
            return False, row.cursor, (row.last_called_at + CALL_INTERVAL - now).total_seconds()
        row.last_called_at = now
        return True, row.cursor, 0.0


def _store_cursor(name: str, cursor: str | None) -> None:
    with unit_of_work() as uow:
        row = uow.session.get(ProviderCursor, name, with_for_update=True)
        if row is not None and cursor:
            row.cursor = cursor


def poll_notice(notice: Notice, since: datetime | None = None) -> dict[str, Any]:
    """Read one page of the report for one notice and apply it."""
    name = f"apsis-email-events:{notice.slug}:{notice.provider['section']}"
    try:
        provider = ApsisProvider.from_config(current_app.config)
    except ProviderNotConfigured as exc:
        raise PollError(f"APSIS is not configured: {exc}") from None
    allowed, cursor, wait = _claim_call(name)
    if not allowed:
        return {"notice": notice.slug, "skipped": f"the report allows one call a minute; next in {wait:.0f} s"}
    start = (since or utcnow() - FIRST_RUN_LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        rows, next_cursor, more = provider.email_events(notice, REPORT_TYPES, cursor, None if cursor else start)
    except (ProviderRetry, ProviderPermanent) as exc:
        raise PollError(f"APSIS report for {notice.slug}: {exc}") from None
    finally:
        provider.close()
    outcomes: Counter[str] = Counter()
    for row in rows:
        event = _event(notice, row)
        outcomes[event if isinstance(event, str) else consent.apply_provider_event(event)] += 1
    db.session.remove()
    # Only after every row is applied: a crash before this re-reads the page, and
    # the rows already applied are then recognised as duplicates.
    _store_cursor(name, next_cursor)
    return {"notice": notice.slug, "events": len(rows), "outcomes": dict(outcomes), "has_more": more}


def poll_apsis(slugs: list[str] | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    chosen = [n for n in consent.notices().values() if n.provider["kind"] == "apsis"]
    if slugs:
        unknown = set(slugs) - {n.slug for n in chosen}
        if unknown:
            raise PollError(f"no APSIS notice named {', '.join(sorted(unknown))}")
        chosen = [n for n in chosen if n.slug in slugs]
    return [poll_notice(notice, since) for notice in chosen]
