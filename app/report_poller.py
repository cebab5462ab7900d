"""Read the opt-outs that webhooks miss from APSIS's email event export.

APSIS flows do not fire for every opt-out (imports, the API), so ``providers
poll-apsis`` reads the account's email events the way APSIS documents them: an
asynchronous export (developer.apsis.com post_emails-reports-1 and
get_emails-reports-report-id-1). Each run moves one step of a small state machine,
kept in the database so a run can stop anywhere and the next one go on:

1. no export under way: ask for one covering ``[cursor, now)`` (``start_at <=
   server_time < end_at``); APSIS takes one such request a minute per account, so
   the time of the last one is stored and a run that comes too soon does nothing;
2. an export under way: ask for its status, waiting a bounded time; still not
   ``completed``: stop, and the next run asks again;
3. completed: download the gzip CSV as it streams, apply each UNSUBSCRIBED, BOUNCED
   and ABUSE row through the same domain function as a webhook (a row's identity is
   its ``correlation_id``, type and address, so a row read twice has one effect),
   then move the cursor to the export's end.

A run that cannot finish (the export failed, its link expired, a row could not be
applied) exits non-zero with the reason; the cursor then stays where it was and the
next run reads that window again. The export has no section column, so its rows are
applied to the one notice that uses APSIS; with several, the command refuses
(README, open questions).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy.exc import IntegrityError

from . import addresses, consent
from .database import unit_of_work
from .extensions import db
from .models import ProviderCursor, utcnow
from .notices import Notice
from .notices import notices as registered_notices
from .providers import ProviderNotConfigured, ProviderPermanent, ProviderRetry
from .providers.apsis import ApsisProvider, ExportExpired

log = logging.getLogger(__name__)

REPORT_KINDS = {"UNSUBSCRIBED": "unsubscribe", "BOUNCED": "bounce", "ABUSE": "complaint"}
CALL_INTERVAL = timedelta(seconds=60)
FIRST_RUN_LOOKBACK = timedelta(days=7)
DEFAULT_WAIT_SECONDS = 30.0
ACCOUNT_SLOT = "apsis-email-events:calls"  # when the account last asked for an export
STATE = "apsis-email-export"  # the export under way, and where the next one starts


class PollError(Exception):
    """The run could not finish; the message says why (the cursor did not move)."""


def _iso(at: datetime) -> str:
    return at.replace(tzinfo=UTC).isoformat(timespec="milliseconds")


def _ms_time(raw: str | None) -> datetime | None:
    """A time in milliseconds since the epoch, as naive UTC; None for 0, blank or nonsense."""
    try:
        ms = int(str(raw or "").strip())
        return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None) if ms > 0 else None
    except (ValueError, OverflowError, OSError):
        return None


def _event(notice: Notice, row: dict[str, str]) -> consent.ProviderEvent | str:
    kind_name = str(row.get("type") or "").upper()
    kind = REPORT_KINDS.get(kind_name)
    if kind is None:
        return "ignored"  # sent, delivered, opened, clicked
    correlation = str(row.get("correlation_id") or "").strip()
    if not correlation:
        return "invalid_row"
    try:
        email = addresses.normalise_email(str(row.get("address") or ""))
    except addresses.InvalidInput:
        return "invalid_address"
    return consent.ProviderEvent(
        provider="apsis",
        kind=kind,
        notice=notice,
        email=email,
        identity=f"report:{correlation}:{kind_name}:{email}",
        channel="report",
        reason=kind_name.lower(),
        occurred_at=_ms_time(row.get("event_time")),
    )


def _claim_call() -> tuple[bool, float]:
    """Take this minute's export request for the APSIS account; (allowed, seconds to wait)."""
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


def _read_state() -> dict[str, Any]:
    row = db.session.get(ProviderCursor, STATE)
    raw = row.cursor if row is not None else None
    db.session.rollback()
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    return state if isinstance(state, dict) else {}


def _store_state(state: dict[str, Any]) -> None:
    with unit_of_work() as uow:
        row = uow.session.get(ProviderCursor, STATE, with_for_update=True)
        if row is None:
            row = ProviderCursor(name=STATE)
            uow.session.add(row)
        row.cursor = json.dumps(state, sort_keys=True)
        row.last_called_at = utcnow()


def _the_notice(slugs: list[str] | None) -> Notice:
    apsis = [n for n in registered_notices().values() if n.provider["kind"] == "apsis"]
    if slugs:
        unknown = set(slugs) - {n.slug for n in apsis}
        if unknown:
            raise PollError(f"no APSIS notice named {', '.join(sorted(unknown))}")
    if not apsis:
        raise PollError("no notice uses APSIS")
    if len(apsis) > 1:
        raise PollError(
            "the APSIS email event export has no section column, so with several APSIS notices "
            f"({', '.join(n.slug for n in apsis)}) its rows cannot be told apart; use the flows' webhooks"
        )
    return apsis[0]


def _wait_for(provider: ApsisProvider, report_id: str, wait_seconds: float) -> dict[str, Any] | None:
    """The export's status once ``completed``, or None if it is not within ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.5
    while True:
        status = provider.export_status(report_id)
        state = status["status"].lower()
        if state == "completed":
            return status
        if state in ("failed", "error", "cancelled", "canceled", "expired"):
            raise PollError(f"the APSIS export {report_id} ended as {state!r}; the next run asks again")
        if time.monotonic() + pause > deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def _apply(notice: Notice, provider: ApsisProvider, url: str) -> tuple[Counter[str], list[str]]:
    outcomes: Counter[str] = Counter()
    failed: list[str] = []
    for row in provider.export_rows(url):
        try:
            event = _event(notice, row)
            outcomes[event if isinstance(event, str) else consent.apply_provider_event(event)] += 1
        except Exception:
            log.exception("APSIS export row %s could not be applied", row.get("correlation_id"))
            db.session.rollback()
            failed.append(str(row.get("correlation_id")))
    db.session.remove()
    return outcomes, failed


def poll_apsis(
    slugs: list[str] | None = None, since: datetime | None = None, wait_seconds: float = DEFAULT_WAIT_SECONDS
) -> dict[str, Any]:
    """One step (or, when the export is quick, all of them) of reading the event export."""
    notice = _the_notice(slugs)
    try:
        provider = ApsisProvider.from_config(current_app.config)
    except ProviderNotConfigured as exc:
        raise PollError(f"APSIS is not configured: {exc}") from None
    try:
        return _step(notice, provider, since, wait_seconds)
    except (ProviderRetry, ProviderPermanent) as exc:
        raise PollError(f"APSIS email event export: {exc}") from None
    finally:
        provider.close()


def _step(notice: Notice, provider: ApsisProvider, since: datetime | None, wait_seconds: float) -> dict[str, Any]:
    state = _read_state()
    if not state.get("report_id"):
        allowed, wait = _claim_call()
        if not allowed:
            return {"notice": notice.slug, "skipped": f"APSIS takes one export request a minute; next in {wait:.0f} s"}
        start = state.get("next_start") or _iso(since or utcnow() - FIRST_RUN_LOOKBACK)
        end = _iso(utcnow())
        report_id = provider.request_export(start, end)
        state = {"next_start": start, "report_id": report_id, "start_at": start, "end_at": end}
        _store_state(state)
    status = _wait_for(provider, state["report_id"], wait_seconds)
    if status is None:
        return {"notice": notice.slug, "waiting": state["report_id"], "note": "not ready; the next run asks again"}
    url = status.get("file_download_url")
    if not isinstance(url, str) or not url:
        raise PollError(f"the APSIS export {state['report_id']} is completed but names no file")
    try:
        outcomes, failed = _apply(notice, provider, url)
    except ExportExpired as exc:
        _store_state({"next_start": state["next_start"]})  # ask for the same window again
        raise PollError(f"{exc}; the next run asks for the same window again") from None
    if failed:
        # The cursor stays: the next export reads these rows again, and the ones
        # already applied are then recognised as duplicates.
        _store_state({"next_start": state["next_start"]})
        raise PollError(f"{len(failed)} APSIS export row(s) could not be applied; see the log")
    _store_state({"next_start": state["end_at"]})
    return {
        "notice": notice.slug,
        "window": [state["start_at"], state["end_at"]],
        "events": sum(outcomes.values()),
        "outcomes": dict(outcomes),
    }
