"""A worker killed mid-batch loses nothing: its lease expires and another takes over."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import select

from app import outbox
from app.extensions import db
from app.models import LedgerHead

from .fakes.mailchimp import FakeMailchimp
from .support import link_in, provider_env, sign_up, start_worker, subscribe_and_confirm

LIST_ID = "munkeby0001"
LEASE_SECONDS = 5  # the shortest lease the settings allow


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp), "OUTBOX_LEASE_SECONDS": str(LEASE_SECONDS)}


@pytest.mark.e2e  # a worker process
def test_jobs_of_a_killed_worker_are_taken_over_after_the_lease(app, app_env, client, mailbox, runner, mailchimp):
    addresses = [f"kill{i}@example.com" for i in range(5)]
    for address in addresses:
        subscribe_and_confirm(client, mailbox, "munkeby", address)
    mailchimp.latency = 30  # every call hangs, so the worker dies with its batch in flight
    worker = start_worker(app_env)
    try:
        deadline = time.monotonic() + 30
        while mailchimp.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mailchimp.in_flight > 0, "the worker never reached the provider"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=10)  # reap it and close its pipe
    mailchimp.latency = 0
    status = json.loads(runner.invoke(args=["outbox", "status"]).stdout)
    assert status["counts"]["running"] == 5  # still leased to the dead worker

    time.sleep(LEASE_SECONDS + 0.5)
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    status = json.loads(runner.invoke(args=["outbox", "status"]).stdout)
    # 5 provider syncs, plus the 5 sign-ups and their 10 confirmation and welcome mails done earlier
    assert status["counts"] == {"pending": 0, "running": 0, "done": 20, "dead": 0, "discarded": 0}
    assert [mailchimp.member(LIST_ID, a)["status"] for a in addresses] == ["subscribed"] * 5


def test_a_confirmation_mail_the_web_process_never_sent_is_sent_by_the_worker(
    app, client, mailbox, runner, monkeypatch
):
    # The web process commits the sign-up and answers, then dies before its sender runs.
    monkeypatch.setattr(app.extensions["after_response"], "run", lambda job_id: None)
    assert sign_up(client, "munkeby", "anna@example.com").status_code == 303
    monkeypatch.undo()
    assert mailbox.to("anna@example.com") == []
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    [mail] = mailbox.to("anna@example.com")
    assert client.post(link_in(mail, "confirm")).status_code == 200


def test_a_mail_written_claimed_by_a_thread_that_died_is_sent_by_the_worker_once_its_lease_ends(
    app, client, mailbox, runner, monkeypatch
):
    """The sign-up job writes its confirmation mail already leased to its own thread, which runs
    it right after the commit; if the process dies in between, the lease keeps the worker off the
    job until it runs out, then the worker sends it."""
    real = outbox._process
    monkeypatch.setattr(outbox, "_process", lambda job: None if job.kind == "mail" else real(job))
    assert sign_up(client, "munkeby", "anna@example.com").status_code == 303
    monkeypatch.undo()
    assert mailbox.to("anna@example.com") == []
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    assert mailbox.to("anna@example.com") == []  # still leased to the thread that died
    assert json.loads(runner.invoke(args=["outbox", "status"]).stdout)["counts"]["running"] == 1
    lease = app.config["OUTBOX_LEASE_SECONDS"]
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=lease + 1)):
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
        [mail] = mailbox.to("anna@example.com")
        assert client.post(link_in(mail, "confirm")).status_code == 200


@pytest.mark.e2e  # a worker process
def test_worker_stops_cleanly_on_sigterm(app, app_env):
    worker = start_worker(app_env)
    assert worker.stderr is not None
    first = ""
    for line in worker.stderr:  # the signal handlers are in place once it says so
        first += line
        if "outbox worker started" in line:
            break
    worker.send_signal(signal.SIGTERM)
    _, rest = worker.communicate(timeout=15)
    assert worker.returncode == 0, first + rest
    assert "outbox worker stopped" in rest


@pytest.mark.e2e  # a worker process
def test_a_running_worker_keeps_a_signed_checkpoint_of_the_ledger(app, app_env, client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "kept@example.com")
    worker = start_worker(app_env)
    try:
        checkpoint = Path(app.config["LEDGER_CHECKPOINT_FILE"])
        first = checkpoint.stat().st_ino  # written with the chain's first events, before any worker ran
        deadline = time.monotonic() + 20
        while checkpoint.stat().st_ino == first and time.monotonic() < deadline:  # each write is a new file
            time.sleep(0.2)
        record = json.loads(checkpoint.read_text())
        with app.app_context():
            head = db.session.execute(select(LedgerHead.seq, LedgerHead.hash)).one()
        assert (record["seq"], record["hash"]) == tuple(head) and head.seq > 0
        assert len(record["signature"]) == 64
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=15)
