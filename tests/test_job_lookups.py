"""A person's queued jobs are reached through their reference, on SQLite too.

SQLite keeps no statistics, so given "these people's jobs, still pending or running" it
prefers the index that leads with the job's state, ``ix_outbox_jobs_due``, and walks every
pending job in the queue: after an import or in the middle of a purge, hundreds of
thousands, once for every batch (bench/README.md, retention purge). Here a purge runs
while other jobs wait, every statement it sends about jobs by their people's references
is explained as it was sent, and none may walk the queue by state or the whole table.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from .support import link_in, plans_with, sign_up, statements_sent, subscribe_and_confirm

JOBS_BY_REF = re.compile(r"\boutbox_jobs\b.*\bWHERE\b.*\bsubscription_ref\b", re.DOTALL | re.IGNORECASE)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    """SQLite only: PostgreSQL plans from statistics, and its plans are checked by the benchmarks."""
    return sqlite_database_url


def test_a_purge_finds_its_peoples_queued_jobs_by_reference_not_by_walking_the_queue(
    app, client, mailbox, runner, monkeypatch
):
    with time_machine.travel(START, tick=True):
        for i in range(3):
            welcome = subscribe_and_confirm(client, mailbox, "munkeby", f"gone{i}@firma.se")
            client.post(link_in(welcome, "unsubscribe"), data={"List-Unsubscribe": "One-Click"})
    # Others' sign-ups wait in the queue (their web process never sent the mail).
    monkeypatch.setattr(app.extensions["after_response"], "run", lambda job_id: None)
    for i in range(3):
        sign_up(client, "munkeby", f"waiting{i}@firma.se")
    monkeypatch.undo()

    with time_machine.travel(START + timedelta(days=366), tick=True), statements_sent(app, JOBS_BY_REF) as sent:
        result = runner.invoke(args=["retention", "purge"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["purged"] == {"munkeby": {"unsubscribed_days": 3}}
    assert sent, "the purge sent no statement about its people's jobs"
    assert plans_with(app, sent, r"SCAN outbox_jobs\b|\bix_outbox_jobs_due\b") == []


JOBS_BY_KIND = re.compile(r"\boutbox_jobs\b.*\bWHERE\b.*\bkind\b", re.DOTALL | re.IGNORECASE)


def test_an_erasure_finds_the_persons_waiting_sign_up_without_walking_the_queue(app, client, mailbox, runner):
    """An erasure cancels the person's sign-up still waiting in the outbox (it holds the address
    and would mail them); it reaches the waiting sign-ups by their kind, not by walking every
    pending job (after an import, hundreds of thousands of them) while it holds the write lock."""
    from .support import queue_sync_jobs

    with app.app_context():
        queue_sync_jobs("munkeby", 300, "unsubscribed", "sync_optout")
    waiting = app.extensions["after_response"]
    run = waiting.run
    waiting.run = lambda job_id: None  # the web process dies before it runs the sign-up
    try:
        assert sign_up(client, "munkeby", "changed.mind@firma.se").status_code == 303
    finally:
        waiting.run = run

    with statements_sent(app, JOBS_BY_KIND) as sent:
        erased = runner.invoke(args=["subjects", "erase", "changed.mind@firma.se"])
    assert json.loads(erased.stdout) == {"erased": ["munkeby"]}  # the queue held the address
    assert sent, "the erasure sent no statement about waiting sign-ups"
    assert plans_with(app, sent, r"SCAN outbox_jobs\b|\bix_outbox_jobs_due\b") == []

    with app.app_context():
        app.config.update(MAILCHIMP_API_KEY="")  # the sync jobs stay waiting; only mail would go
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    assert mailbox.to("changed.mind@firma.se") == []
