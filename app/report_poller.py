"""Read opt-outs that webhooks miss from the provider's event report.

APSIS flows do not fire for opt-outs made by import or through the API, so
``providers poll-apsis`` reads the email event report (UNSUBSCRIBED, BOUNCED,
ABUSE) from a stored cursor and applies each row through the same domain
function as a webhook; a row seen twice has one effect. The report allows one
call a minute for the account: the time of the last call is stored, a run that
comes too soon does nothing, and each run reads the notice read longest ago, so
the command is safe from cron every minute whatever the number of notices.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import consent
from .database import unit_of_work
from .extensions import db
from .models import ProviderCursor, utc_naive, utcnow
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
        occurred_at=utc_naive(row["occurred_at"]) if isinstance(row.get("occurred_at"), str) else None,
    )


ACCOUNT_SLOT = "apsis-email-events:calls"


def _claim_call() -> tuple[bool, float]:
    """Take this minute's report call for the APSIS account; (allowed, seconds to wait).

    The limit is the account's, whatever the number of notices: one row holds
    the time of the last call, locked while it is read and moved on.
    """
    now = utcnow()
    try:
        with unit_of_work() as uow:
            row = uow.session.get(ProviderCursor, ACCOUNT_SLOT, with_for_update=True)
            if row is None:
                row = ProviderCursor(name=ACCOUNT_SLOT)
                uow.session.add(row)
            if row.last_called_at is not None and now - row.last_called_at < CALL_INTERVAL:
                return False, (row.last_called_at + CALL_INTERVAL - now).total_seconds()
            row.last_called_at = now
    except IntegrityError:  # another run created the row at the same moment, and has the call
        return False, CALL_INTERVAL.total_seconds()
    return True, 0.0


def _cursor_name(notice: Notice) -> str:
    return f"apsis-email-events:{notice.slug}:{notice.provider['section']}"


def _read_cursor(name: str) -> tuple[str | None, datetime | None]:
    """(cursor, time of the last read) of one notice's report position."""
    row = db.session.execute(
        select(ProviderCursor.cursor, ProviderCursor.last_called_at).where(ProviderCursor.name == name)
    ).first()
    db.session.rollback()
    return (row.cursor, row.last_called_at) if row else (None, None)


def _store_cursor(name: str, cursor: str | None) -> None:
    with unit_of_work() as uow:
        row = uow.session.get(ProviderCursor, name, with_for_update=True)
        if row is None:
            uow.session.add(ProviderCursor(name=name, cursor=cursor, last_called_at=utcnow()))
        else:
            row.cursor, row.last_called_at = cursor or row.cursor, utcnow()


def _poll(notice: Notice, provider: ApsisProvider, since: datetime | None) -> dict[str, Any]:
    name = _cursor_name(notice)
    cursor, _ = _read_cursor(name)
    start = (since or utcnow() - FIRST_RUN_LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        rows, next_cursor, more = provider.email_events(notice, REPORT_TYPES, cursor, None if cursor else start)
    except (ProviderRetry, ProviderPermanent) as exc:
        raise PollError(f"APSIS report for {notice.slug}: {exc}") from None
    outcomes: Counter[str] = Counter()
    failed = []
    for row in rows:
        try:
            event = _event(notice, row)
            outcomes[event if isinstance(event, str) else consent.apply_provider_event(event)] += 1
        except Exception:
            log.exception("APSIS report row %s for %s could not be applied", row.get("id"), notice.slug)
            db.session.rollback()
            failed.append(str(row.get("id")))
    db.session.remove()
    if failed:
        # The cursor stays: the next run reads this page again, and the rows
        # already applied are then recognised as duplicates.
        raise PollError(f"APSIS report rows {', '.join(failed)} for {notice.slug} failed; see the log")
    _store_cursor(name, next_cursor)
    return {"notice": notice.slug, "events": len(rows), "outcomes": dict(outcomes), "has_more": more}


def poll_apsis(slugs: list[str] | None = None, since: datetime | None = None) -> dict[str, Any]:
    """One report call for the notice read longest ago (of those named, or all APSIS ones)."""
    chosen = [n for n in consent.notices().values() if n.provider["kind"] == "apsis"]
    if slugs:
        unknown = set(slugs) - {n.slug for n in chosen}
        if unknown:
            raise PollError(f"no APSIS notice named {', '.join(sorted(unknown))}")
        chosen = [n for n in chosen if n.slug in slugs]
    if not chosen:
        raise PollError("no notice uses APSIS")
    try:
        provider = ApsisProvider.from_config(current_app.config)
    except ProviderNotConfigured as exc:
        raise PollError(f"APSIS is not configured: {exc}") from None

    def last_read(notice: Notice) -> datetime:
        return _read_cursor(_cursor_name(notice))[1] or datetime.min

    notice = min(chosen, key=last_read)
    allowed, wait = _claim_call()
    if not allowed:
        return {"notice": notice.slug, "skipped": f"the report allows one call a minute; next in {wait:.0f} s"}
    try:
        return _poll(notice, provider, since)
    finally:
        provider.close()
