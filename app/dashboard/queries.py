"""What the dashboard shows, read in a few indexed queries.

Every query that reads people, counts or jobs takes the notices the user may see
(``notices``) and reads nothing outside them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l
from sqlalchemy import false, func, select, tuple_

from .. import retention, tallies
from ..extensions import db
from ..models import ConsentEvent, NoticeVersion, Subscription, Suppression, utcnow
from ..notices import Notice
from ..vocabulary import LawfulBasis, Status

CHART_DAYS = 30
# The chart's lines, in the legend's order: its colours alternate light, dark, light (static/dashboard.css).
CHART_SERIES = (
    ("signup_requested", _l("sign-ups")),
    ("consent_confirmed", _l("confirmations")),
    ("opted_out", _l("opt-outs")),
)
PAGE_SIZE = 50
OPT_OUT_DEADLINE_HOURS = 48


@dataclass(frozen=True)
class Tick:
    at: float  # the position along the axis, in SVG units
    value: int | date


@dataclass(frozen=True)
class Chart:
    """Sign-ups, confirmations and opt-outs per day, drawn as SVG on the server (no script, no
    third party): the plot area inside margins that hold the axes' ticks and titles."""

    days: list[date]
    series: list[tuple[str, LazyString, list[int]]]  # (event type, label, counts per day)
    width: int = 640
    height: int = 230
    left: int = 48  # room for the y axis's numbers and title
    right: int = 12
    top: int = 12
    bottom: int = 44  # room for the x axis's dates and title

    @property
    def peak(self) -> int:
        return max([0, *(max(counts, default=0) for _, _, counts in self.series)])

    @property
    def scale_top(self) -> int:
        """The y axis's top: the peak rounded up to 1, 2 or 5 times a power of ten (at least 2)."""
        step = 1
        while True:
            for factor in (1, 2, 5):
                if factor * step >= max(self.peak, 2):
                    return factor * step
            step *= 10

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom

    @property
    def plot_right(self) -> int:
        return self.width - self.right

    def x(self, index: int) -> float:
        span = self.plot_right - self.left
        return self.left + index * span / max(len(self.days) - 1, 1)

    def y(self, count: int) -> float:
        return self.plot_bottom - count * (self.plot_bottom - self.top) / self.scale_top

    def points(self, counts: list[int]) -> str:
        return " ".join(f"{self.x(i):.1f},{self.y(n):.1f}" for i, n in enumerate(counts))

    def y_ticks(self) -> list[Tick]:
        """Evenly spaced whole numbers up to the top: fifths of 5, 10, 50..., halves of 2, 20, 200..."""
        top = self.scale_top
        step = top // 5 if top % 5 == 0 else top // 2
        return [Tick(self.y(value), value) for value in range(0, top + 1, step)]

    def x_ticks(self) -> list[Tick]:
        """A date each week, counted back from today (the last day), so today is always labelled."""
        last = len(self.days) - 1
        return [Tick(self.x(i), self.days[i]) for i in range(last, -1, -7)][::-1]

    def totals(self) -> list[int]:
        return [sum(counts) for _, _, counts in self.series]

    def rows(self) -> list[tuple[date, list[int]]]:
        """The figures per day, as the table beside the chart lists them."""
        return [(day, [counts[i] for _, _, counts in self.series]) for i, day in enumerate(self.days)]


@dataclass(frozen=True)
class Counts:
    """One notice's people by what a marketer tells apart.

    ``subscribed`` counts only those who consented and are subscribed: a contact imported on
    legitimate interest is held as "subscribed" too (it may be mailed), but it is not a
    subscriber, so it is counted apart as ``legitimate_interest``.
    """

    subscribed: int = 0
    legitimate_interest: int = 0
    pending: int = 0
    unsubscribed: int = 0


def status_counts(notices: Collection[str]) -> dict[str, Counts]:
    """From the tallies the database keeps (``app/tallies.py``), never from the subscriptions:
    those held on legitimate interest are taken out of the subscribed."""
    found: dict[str, dict[str, int]] = {}
    for tally in tallies.counts(notices):
        counts = found.setdefault(tally.notice, {})
        counts[tally.status] = counts.get(tally.status, 0) + tally.n
        if tally.status == Status.SUBSCRIBED and tally.lawful_basis == LawfulBasis.LEGITIMATE_INTEREST:
            counts[Status.SUBSCRIBED] -= tally.n
            counts["legitimate_interest"] = counts.get("legitimate_interest", 0) + tally.n
    known = Counts.__dataclass_fields__
    return {notice: Counts(**{k: v for k, v in counts.items() if k in known}) for notice, counts in found.items()}


def suppression_counts(notices: Collection[str]) -> dict[str, int]:
    rows = db.session.execute(
        select(Suppression.notice, func.count())
        .where(Suppression.notice.in_(list(notices)))
        .group_by(Suppression.notice)
    ).all()
    return {notice: count for notice, count in rows}


def chart(notice: Notice, days: int = CHART_DAYS) -> tuple[Chart, float | None]:
    """Sign-ups, confirmations and opt-outs per day, and the confirmation rate over them (a share, 0 to 1)."""
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
    rate = confirmations / signups if signups else None
    return Chart(dates, series), rate


def versions(notice: Notice) -> list[dict[str, Any]]:
    """Each version of a notice ever shown, newest first, with how many hold a subscription under it."""
    counts: dict[str, int] = {}
    for tally in tallies.counts([notice.slug]):
        counts[tally.notice_version] = counts.get(tally.notice_version, 0) + tally.n
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
