"""A purge that spans many batches deletes every row it should, and the provider forgets them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from app import retention
from app.extensions import db
from app.models import ConsentEvent, EventDetail, OutboxJob, Subscription, Suppression

from .fakes.mailchimp import FakeMailchimp
from .support import link_in, provider_env, subscribe_and_confirm

LIST_ID = "munkeby0001"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp)}


def test_a_purge_in_many_batches_deletes_each_person_here_and_at_mailchimp(
    app, client, mailbox, runner, mailchimp, monkeypatch
):
    monkeypatch.setattr(retention, "BATCH", 2)  # 5 people: three batches, the last one short
    gone = [f"gone{i}@firma.se" for i in range(5)]
    with time_machine.travel(START, tick=True):
        for address in [*gone, "stays@firma.se"]:
            welcome = subscribe_and_confirm(client, mailbox, "munkeby", address, "Name")
            if address in gone:
                opt_out = client.post(link_in(welcome, "unsubscribe"), data={"List-Unsubscribe": "One-Click"})
                assert opt_out.status_code == 200
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    assert [mailchimp.member(LIST_ID, a)["status"] for a in gone] == ["unsubscribed"] * 5
    with app.app_context():
        refs = db.session.execute(select(Subscription.ref).where(Subscription.email.in_(gone))).scalars().all()
        assert db.session.execute(
            select(func.count()).select_from(EventDetail).where(EventDetail.subscription_ref.in_(refs))
        ).scalar_one() > 0

    with time_machine.travel(START + timedelta(days=366), tick=True):
        result = runner.invoke(args=["retention", "purge"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["purged"] == {"munkeby": {"unsubscribed_days": 5}}
        with app.app_context():
            assert db.session.execute(select(Subscription.email)).scalars().all() == ["stays@firma.se"]
            details_left = db.session.execute(
                select(func.count()).select_from(EventDetail).where(EventDetail.subscription_ref.in_(refs))
            ).scalar_one()
            assert details_left == 0
            deleted = db.session.execute(
                select(ConsentEvent.subscription_ref).where(ConsentEvent.type == "personal_data_deleted")
            ).scalars()
            assert sorted(deleted) == sorted(refs)
            jobs = db.session.execute(
                select(OutboxJob.payload).where(OutboxJob.state == "pending", OutboxJob.kind == "sync_optout")
            ).scalars()
            assert sorted(job["personal_email"] for job in jobs) == sorted(gone)
            assert db.session.execute(select(func.count()).select_from(Suppression)).scalar_one() == 5
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0

    assert all(mailchimp.member(LIST_ID, a) is None for a in gone)
    assert mailchimp.member(LIST_ID, "stays@firma.se")["status"] == "subscribed"
    with app.app_context():
        payloads = db.session.execute(select(OutboxJob.payload).where(OutboxJob.kind == "sync_optout")).scalars()
        assert not any(address in json.dumps(p) for p in payloads for address in gone)  # wiped once done
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_purge_batches_are_sized_to_hold_the_lock_briefly():
    first = retention.FIRST_BATCH
    # A batch that took four times the target is followed by one a quarter its size ...
    assert retention.next_batch_size(first, 4 * retention.BATCH_SECONDS) == first // 4
    # ... a quick one by one at most twice its size, and never more than BATCH ...
    assert retention.next_batch_size(first, retention.BATCH_SECONDS / 100) == 2 * first
    assert retention.next_batch_size(retention.BATCH, retention.BATCH_SECONDS / 100) == retention.BATCH
    # ... and a stalled one by a small batch, not by none.
    assert retention.next_batch_size(first, 60.0) == first // 8
