"""What the dashboard shows, read in a few indexed queries.

Every query that reads people, counts or jobs takes the notices the user may see
(``notices``) and reads nothing outside them.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import false, func, select, tuple_

from .. import retention
from ..extensions import db
from ..models import ConsentEvent, EventDetail, NoticeVersion, Subscription, Suppression, utcnow
from ..notices import Notice

CHART_DAYS = 30
CHART_SERIES = (("signup_requested", "sign-ups"), ("consent_confirmed", "confirmations"), ("opted_out", "opt-outs"))
PAGE_SIZE = 50
OPT_OUT_DEADLINE_HOURS = 48


@dataclass(frozen=True)
class Chart:
    """A small line chart drawn as SVG on the server (no script, no third party)."""

    days: list[date]
    series: list[tuple[str, str, list[int]]]  # (event type, label, counts per day)
    width: int = 640
    height: int = 160

    @property
    def peak(self) -> int:
        return max([1, *(max(counts) for _, _, counts in self.series)])

    def points(self, counts: list[int]) -> str:
        step = self.width / max(len(counts) - 1, 1)
        return " ".join(
            f"{i * step:.1f},{self.height - (n / self.peak) * (self.height - 10):.1f}" for i, n in enumerate(counts)
        )


def status_counts(notices: Collection[str]) -> dict[str, dict[str, int]]:
    rows = db.session.execute(
        select(Subscription.notice, Subscription.status, func.count())
        .where(Subscription.notice.in_(list(notices)))
        .group_by(Subscription.notice, Subscription.status)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for notice, status, n in rows:
        counts.setdefault(notice, {})[status] = n
    return counts


def suppression_counts(notices: Collection[str]) -> dict[str, int]:
    rows = db.session.execute(
        select(Suppression.notice, func.count())
        .where(Suppression.notice.in_(list(notices)))
        .group_by(Suppression.notice)
    ).all()
    return {notice: count for notice, count in rows}


def chart(notice: Notice, days: int = CHART_DAYS) -> tuple[Chart, float | None]:
    """Sign-ups, confirmations and opt-outs per day, and the confirmation rate over them."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    day = func.date(ConsentEvent.at)
    rows = db.session.execute(
        select(ConsentEvent.type, day, func.count())
        .where(
            ConsentEvent.notice == notice.slug,
            ConsentEvent.type.in_([kind for kind, _ in CHART_SERIES]),
            ConsentEvent.at >= first,
        )
        .group_by(ConsentEvent.type, day)
    ).all()
    found = {(kind, str(d)): n for kind, d, n in rows}
    dates = [first + timedelta(days=i) for i in range(days)]
    series = [(kind, label, [found.get((kind, d.isoformat()), 0) for d in dates]) for kind, label in CHART_SERIES]
    signups, confirmations = sum(series[0][2]), sum(series[1][2])
    rate = round(100 * confirmations / signups, 1) if signups else None
    return Chart(dates, series), rate


def versions(notice: Notice) -> list[dict[str, Any]]:
    """Each version of a notice ever shown, newest first, with how many hold a subscription under it."""
    counts = dict(
        db.session.execute(
            select(Subscription.notice_version, func.count())
            .where(Subscription.notice == notice.slug)
            .group_by(Subscription.notice_version)
        ).all()
    )
    rows = db.session.execute(
        select(NoticeVersion.version, NoticeVersion.first_seen_at)
        .where(NoticeVersion.notice == notice.slug)
        .order_by(NoticeVersion.first_seen_at.desc())
    ).all()
    return [
        {"version": v, "first_seen_at": at, "subscriptions": counts.get(v, 0), "current": v == notice.version}
        for v, at in rows
    ]


def review_due(notice: Notice) -> int:
    query = retention.review_due_query(notice)
    if query is None:
        return 0
    return db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()


def subscribers(
    *,
    notices: Collection[str],
    notice: str | None,
    status: str | None,
    search: str | None,
    after: int | None,
    version: str | None = None,
    review_due_for: Notice | None = None,
) -> tuple[list[Subscription], int | None]:
    """One page by keyset: as fast on page 1,000 as on page 1.

    A list is newest first (``id < after``). A search is in address order, so the
    index walks the matching range and stops after a page however many match;
    ``after`` is still the last row's id, and its address is looked up (a page
    whose last row was deleted meanwhile starts the search over).
    """
    query = select(Subscription)
    if review_due_for is not None:
        due = retention.review_due_query(review_due_for)
        query = due if due is not None else query.where(false())
    if notice:
        query = query.where(Subscription.notice == notice)
    else:
        query = query.where(Subscription.notice.in_(list(notices)))
    if status:
        query = query.where(Subscription.status == status)
    if version:
        query = query.where(Subscription.notice_version == version)
    if search:
        # A prefix range on the stored (lower-case) address, byte-wise: see Subscription.email.
        query = query.where(Subscription.email >= search, Subscription.email < search + "\U0010ffff")
        last = db.session.get(Subscription, after) if after else None
        if last is not None and last.notice in notices:
            query = query.where(tuple_(Subscription.email, Subscription.id) > (last.email, last.id))
        query = query.order_by(Subscription.email, Subscription.id)
    else:
        if after:
            query = query.where(Subscription.id < after)
        query = query.order_by(Subscription.id.desc())
    rows = list(db.session.execute(query.limit(PAGE_SIZE + 1)).scalars())
    next_after = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    return rows[:PAGE_SIZE], next_after


def timeline(ref: str) -> list[dict[str, Any]]:
    rows = db.session.execute(
        select(ConsentEvent, EventDetail)
        .outerjoin(EventDetail, EventDetail.seq == ConsentEvent.seq)
        .where(ConsentEvent.subscription_ref == ref)
        .order_by(ConsentEvent.seq)
    ).all()
    return [
        {
            "seq": event.seq,
            "type": event.type,
            "at": event.at,
            "channel": event.channel,
            "notice_version": event.notice_version,
            "facts": json.loads(event.facts or "{}"),
            "details": json.loads(detail.details) if detail is not None else None,
        }
        for event, detail in rows
    ]
