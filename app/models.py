"""The stored model: subscriptions, consent events, suppressions, outbox jobs.

A person is held once per controller (notice): Munkeby and Mysoft are separate
controllers, so one's opt-out rule never touches the other's data. Events refer
to a subscription by an opaque ``subscription_ref`` that stays meaningless once
the subscription row is erased.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import Model


def utcnow() -> datetime:
    """Naive UTC, the one time representation stored in every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


def utc_naive(iso_text: str) -> datetime | None:
    """An ISO 8601 time from outside, as naive UTC; None when it is not one (or out of range)."""
    try:
        parsed = datetime.fromisoformat(iso_text.replace("Z", "+00:00"))
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    except (ValueError, OverflowError):
        return None


def new_ref() -> str:
    """A subscription's reference: 32 lower-case hex digits, the creation second then 96 random bits.

    The second comes first so that references made together sort together: every index on a
    reference (the subscriptions' own, the events', the details', the outbox's) then grows at
    its end instead of at a random page, which is what a large import spends most of its time
    on (bench/README.md, contact import). The 96 random bits keep a reference unguessable;
    mailed links are signed in any case. What a reference tells whoever holds a link is the
    second its subscription was created (SECURITY.md).
    """
    return new_refs(1)[0]


def new_refs(count: int) -> list[str]:
    """``count`` references (see ``new_ref``) from one read of the system's random source."""
    second = f"{int(time.time()) & 0xFFFFFFFF:08x}"
    return [second + digits for digits in random_hex(count, 12)]


def random_hex(count: int, size: int) -> list[str]:
    """``count`` strings of ``size`` random bytes each, as hex, from one read of the system's
    random source (a read per string costs a bulk write more than the rest of a row)."""
    digits = secrets.token_hex(size * count)
    return [digits[i : i + 2 * size] for i in range(0, 2 * size * count, 2 * size)]


class NoticeVersion(Model):
    __tablename__ = "notice_versions"

    notice: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[dict] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscription(Model):
    __tablename__ = "subscriptions"
    __table_args__ = (
        # Address first: the key serves every lookup of an address, under one notice or all of
        # them (a data-rights request), so no index of the address alone is needed. An import
        # writes each key at a random place; one such index fewer is a fifth less of its time
        # on SQLite (bench/README.md, contact import).
        UniqueConstraint("email_hash", "notice", name="uq_subscriptions_email_hash_notice"),
        # The dashboard's address search (a prefix range in address order) and its
        # filtered, keyset-paged lists: each filter has an index that ends in the sort key.
        Index("ix_subscriptions_email_id", "email", "id"),
        Index("ix_subscriptions_notice_id", "notice", "id"),
        Index("ix_subscriptions_notice_status_id", "notice", "status", "id"),
        # The dashboard's list of subscribers by the notice version they consented under.
        Index("ix_subscriptions_notice_version_id", "notice", "notice_version", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True, default=new_ref)
    notice: Mapped[str] = mapped_column(String(32))
    # Compared byte by byte on PostgreSQL too, whatever the database's locale: a prefix
    # range (search >= p and < p + U+10FFFF) then holds exactly the addresses that start with p.
    email: Mapped[str] = mapped_column(String(254).with_variant(String(254, collation="C"), "postgresql"))
    email_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # pending | subscribed | unsubscribed
    lang: Mapped[str] = mapped_column(String(8), default="sv")
    source: Mapped[str] = mapped_column(String(500))
    lawful_basis: Mapped[str] = mapped_column(String(32), default="consent")
    notice_version: Mapped[str] = mapped_column(String(64))
    confirm_nonce: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmation_sent_at: Mapped[datetime | None]
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Retention facts. ``relationship``: "subscriber" (signed up themselves),
    # "prospect" (a contact added by the controller) or "customer" (reviewed
    # yearly, never purged by a rule). ``last_contact_at``: the last dialog
    # with the person, recorded through the API, the dashboard or an import.
    relationship: Mapped[str] = mapped_column(String(16), default="subscriber", server_default="subscriber")
    last_contact_at: Mapped[datetime | None]
    reviewed_at: Mapped[datetime | None]


class SubscriptionTally(Model):
    """How many subscriptions each (notice, notice version, status, lawful basis) holds, kept as
    the rows change, so the dashboard's counts never read the subscriptions table.

    The database keeps it, not the code: triggers on ``subscriptions`` (migration 0012) add a
    row of changes for every insert, delete and change of those four columns, whichever code or
    statement made it (a COPY, a purge, an erasure, a manual fix). A figure is the sum of its
    rows; ``app/tallies.py`` folds them back to one row a key now and then. Each write appends
    instead of updating one counter row, so two opt-outs never wait on each other's counter.
    """

    __tablename__ = "subscription_tallies"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    notice: Mapped[str] = mapped_column(String(32))
    notice_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    lawful_basis: Mapped[str] = mapped_column(String(32))
    n: Mapped[int] = mapped_column(BigInteger)


# Two of the dashboard's figures read few rows among many: the customers (whose yearly review
# may be due) and the contacts held on legitimate interest (who must be informed under Art. 14,
# and are counted apart from consenting subscribers). Each has a partial index, which holds only
# the rows its condition admits: a consenting subscriber is in neither and costs them nothing to
# write. The databases use such an index only for a query that states the same condition with
# its values written into the SQL, not bound as parameters; these expressions are that condition,
# for the index and for every query that means to use it.
CUSTOMER = Subscription.relationship == literal_column("'customer'")
HELD_ON_INTEREST = and_(
    Subscription.lawful_basis == literal_column("'legitimate_interest'"),
    Subscription.status == literal_column("'subscribed'"),
)
# The day a customer's review counts from: the last review, or else the day they were added.
# Both are in the customers' index, so the review count reads that index alone.
REVIEW_FROM = func.coalesce(Subscription.reviewed_at, Subscription.created_at)
Index(
    "ix_subscriptions_customer_review",
    Subscription.notice,
    Subscription.reviewed_at,
    Subscription.created_at,
    sqlite_where=CUSTOMER,
    postgresql_where=CUSTOMER,
)
# The status, the same in every row, is a column too: SQLite, which keeps no statistics, then
# sees as many equalities here as in (notice, status, id) and takes the smaller index.
Index(
    "ix_subscriptions_interest_held",
    Subscription.notice,
    Subscription.status,
    Subscription.confirmed_at,
    sqlite_where=HELD_ON_INTEREST,
    postgresql_where=HELD_ON_INTEREST,
)


EVENT_IDS = "consent_event_ids"
_UNCHAINED = text("seq IS NULL")


class ConsentEvent(Model):
    """One piece of consent evidence: written pending, then chained. Holds nothing personal but a digest.

    A request writes its event with ``id`` and a keyed ``content_hash`` of the record, and
    nothing else: no lock on the chain's head. The sequencer (``ledger.sequence``) later gives
    it its place in the chain, ``seq``, and ``prev_hash`` and ``hash``; ``hash`` covers every
    column of the chained record, including ``seq`` and ``prev_hash``, so changing, removing
    or reordering a chained event breaks the chain. Bulk work (an import, a purge) chains its
    own events as it writes them; those carry no ``content_hash``.
    """

    __tablename__ = "consent_events"
    __table_args__ = (
        Index("ix_consent_events_ref_type_at", "subscription_ref", "type", "at"),
        Index("ix_consent_events_notice_type_at", "notice", "type", "at"),  # the dashboard's daily chart
        # The sequencer's work list: only the few rows not chained yet are in it.
        Index("ix_consent_events_pending", "id", sqlite_where=_UNCHAINED, postgresql_where=_UNCHAINED),
    )

    # Allocated by ``ledger.append`` before the insert (its details row needs it): from this
    # sequence on PostgreSQL, under the write lock on SQLite.
    id: Mapped[int] = mapped_column(Sequence(EVENT_IDS), primary_key=True)
    seq: Mapped[int | None] = mapped_column(unique=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(40))
    notice: Mapped[str | None] = mapped_column(String(32))
    notice_version: Mapped[str | None] = mapped_column(String(64))
    subscription_ref: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(24))
    facts: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON
    details_digest: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    content_hash: Mapped[str | None] = mapped_column(String(64))


class EventDetail(Model):
    """Personal details of an event, outside the chain; erasure deletes the row."""

    __tablename__ = "event_details"

    event_id: Mapped[int] = mapped_column(ForeignKey("consent_events.id"), primary_key=True, autoincrement=False)
    subscription_ref: Mapped[str | None] = mapped_column(String(32), index=True)
    salt: Mapped[str] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON


class LedgerHead(Model):
    """The chain's tip, one row, locked by every append so the chain cannot fork."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(default=0)
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC of (seq, hash) with a key that lives outside the database: whoever can only
    # write to the database cannot move the head to a rewritten chain.
    signature: Mapped[str | None] = mapped_column(String(64))


class Suppression(Model):
    """A keyed hash of an address that must not be mailed or re-added."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("notice", "email_hash", name="uq_suppressions_notice_email_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    notice: Mapped[str] = mapped_column(String(32))
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The condition of ``ix_outbox_jobs_failed``. Every statement that uses the index states it
# (or a comparison on ``last_error``, which implies it).
FAILED_JOB = text("last_error IS NOT NULL")


class OutboxJob(Model):
    """Work to do after a commit: a mail to send, later a provider call."""

    __tablename__ = "outbox_jobs"
    __table_args__ = (
        Index("ix_outbox_jobs_due", "state", "next_attempt_at"),
        # The few waiting jobs of one kind; a notice's jobs by kind and state (the dashboard).
        Index("ix_outbox_jobs_kind_state_notice", "kind", "state", "notice"),
        # The jobs that have failed at least once (dead letters, retries, waits for a setting),
        # by notice: a job that succeeds at its first try, nearly every one, is never in it.
        Index(
            "ix_outbox_jobs_failed",
            "notice",
            "state",
            "last_error",
            "kind",
            sqlite_where=FAILED_JOB,
            postgresql_where=FAILED_JOB,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    notice: Mapped[str | None] = mapped_column(String(32))
    subscription_ref: Mapped[str | None] = mapped_column(String(32), index=True)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | running | done | dead
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class ProviderDelivery(Model):
    """One inbound provider event we have handled (webhook or report row).

    Deliveries are at-least-once; the key (an HMAC of the delivery's content or
    its provider id, so it holds no address) makes a repeat a no-op.
    """

    __tablename__ = "provider_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(24))
    notice: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(24))
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ServiceMark(Model):
    """A moment in the service's own history that later code must know, by name.

    ``art14_evidence_since``: from when ``art14_informed`` evidence is recorded. Contacts
    imported before it were mailed by code that recorded nothing, so their having no
    evidence says nothing about whether they were informed.
    """

    __tablename__ = "service_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]


class ProviderCursor(Model):
    """Where a poller stopped reading a provider's report, and when it last asked."""

    __tablename__ = "provider_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(String(500))
    last_called_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(UserMixin, Model):
    """A marketer's dashboard account. Kept (deactivated, not deleted) so that
    evidence naming ``user:<id>`` as the actor stays answerable."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # admin | marketer | viewer
    # The notices (controllers) whose people this user may see and act on, space-separated.
    notices: Mapped[str] = mapped_column(String(200), default="", server_default="")
    active: Mapped[bool] = mapped_column(default=True)
    # Changes with the password: every session made before then ends.
    session_key: Mapped[str] = mapped_column(String(32), default=lambda: secrets.token_hex(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    def get_id(self) -> str:
        return f"{self.id}:{self.session_key}"

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def actor(self) -> str:
        """How evidence names this user: by id, so no employee address enters the ledger."""
        return f"user:{self.id}"


class ApiToken(Model):
    """A bearer token for the CRM API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated
    notices: Mapped[str] = mapped_column(String(200), default="", server_default="")  # space-separated slugs
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ContactImport(Model):
    """A CSV import started from the dashboard, run by the worker, with its progress.

    The uploaded file lies in the instance folder (mode 0600) until the import
    has run for real or is abandoned; it holds personal data.
    """

    __tablename__ = "contact_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    notice: Mapped[str] = mapped_column(String(32))
    file_name: Mapped[str | None] = mapped_column(String(100))
    columns: Mapped[list] = mapped_column(JSON, default=list)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)  # basis, source, date, proof, mapping
    state: Mapped[str] = mapped_column(String(16), default="uploaded")  # uploaded|queued|running|checked|done|failed
    dry_run: Mapped[bool] = mapped_column(default=False)
    rows: Mapped[int] = mapped_column(default=0)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class DataRequest(Model):
    """A self-service export or erasure asked for from the manage page.

    Its link is mailed to the address and works once, within its lifetime.
    """

    __tablename__ = "data_requests"
    __table_args__ = (
        Index("ix_data_requests_email_hash_created_at", "email_hash", "created_at"),
        Index("ix_data_requests_link_created_at", "link", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # export | erase
    email_hash: Mapped[str] = mapped_column(String(64))
    # A digest of the manage link that asked: each link has its own daily allowance, so a
    # forwarded newsletter cannot use up the person's own requests.
    link: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None]
