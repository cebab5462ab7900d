"""The unit tier: the domain rules, called as functions, on SQLite only.

Each test gets the migrated SQLite file the suite copies for every test, and no
HTTP client, mail server or provider: what is under test is the rule itself (the
notice's opt-out rule, a provider event's effect, a retention decision), read back
from the rows it leaves. ``python -m pytest tests/unit`` runs this tier in seconds;
the same rules are driven end to end over HTTP, on both databases, by the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.addresses import email_hash
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription, Suppression
from app.notices import get_notice


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    """SQLite only: this tier checks rules, the suite checks them on PostgreSQL too."""
    return sqlite_database_url


@pytest.fixture
def domain(app: Flask) -> Any:
    """An application context to call the domain functions in."""
    with app.app_context():
        yield app


def hold(
    notice: str,
    email: str,
    status: str,
    *,
    confirmed_at: datetime | None = None,
    relationship: str = "subscriber",
    created_at: datetime | None = None,
    unsubscribed_at: datetime | None = None,
    last_contact_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> Subscription:
    """A subscription in the given state, written as the service would have left it."""
    found = get_notice(notice)
    assert found is not None
    sub = Subscription(
        notice=notice,
        email=email,
        email_hash=email_hash(email),
        status=status,
        source="unit test",
        lawful_basis=found.lawful_basis,
        notice_version=found.version,
        confirmed_at=confirmed_at,
        relationship=relationship,
        unsubscribed_at=unsubscribed_at,
        last_contact_at=last_contact_at,
    )
    if created_at is not None:
        sub.created_at = created_at
    db.session.add(sub)
    db.session.commit()
    if updated_at is not None:  # the column moves on every write; set it last
        table = Subscription.__table__
        db.session.execute(table.update().where(table.c.id == sub.id).values(updated_at=updated_at))
        db.session.commit()
    return sub


TOLD = {"sync_consent": "subscribe", "sync_optout": "unsubscribe"}


@dataclass(frozen=True)
class Held:
    """What the service holds about one address under one notice, after a rule ran."""

    status: str | None  # None: no subscription row (never held, or deleted)
    suppressed: bool
    provider: tuple[str, ...]  # what the provider is queued to be told: subscribe, unsubscribe, delete
    evidence: tuple[str, ...]  # the types of the evidence recorded, in order


def held(notice: str, email: str, since_seq: int = 0) -> Held:
    ehash = email_hash(email)
    db.session.rollback()
    sub = db.session.execute(
        select(Subscription).where(Subscription.notice == notice, Subscription.email_hash == ehash)
    ).scalar_one_or_none()
    suppressed = db.session.execute(
        select(Suppression.id).where(Suppression.notice == notice, Suppression.email_hash == ehash)
    ).first()
    jobs = db.session.execute(
        select(OutboxJob).where(OutboxJob.notice == notice, OutboxJob.kind.like("sync%")).order_by(OutboxJob.id)
    ).scalars()
    provider = tuple("delete" if job.payload.get("action") == "delete" else TOLD[job.kind] for job in jobs)
    evidence = tuple(
        db.session.execute(
            select(ConsentEvent.type)
            .where(ConsentEvent.notice == notice, ConsentEvent.seq > since_seq)
            .order_by(ConsentEvent.seq)
        ).scalars()
    )
    return Held(sub.status if sub else None, suppressed is not None, provider, evidence)


def last_seq() -> int:
    return db.session.execute(select(ConsentEvent.seq).order_by(ConsentEvent.seq.desc()).limit(1)).scalar() or 0
