"""Evidence is written by requests without the chain's lock, and chained by a sequencer.

What a person and an operator notice: an opt-out is answered while the chain's head is held
elsewhere; evidence left unchained past the merge delay makes ``/readyz``, ``/healthz``,
``/metrics`` and ``ledger verify`` say so; a pending event changed in the database is never
chained; and a sequencer killed in the middle of a batch, or two racing, neither lose an
event nor chain one twice.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update

from app import ledger
from app.database import unit_of_work
from app.extensions import db
from app.ledger import Evidence
from app.models import ConsentEvent, Subscription
from app.notices import get_notice

from .support import REPO, run_flask, subscribe_and_confirm, unsubscribe_path


def chained_and_pending(app) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with app.app_context():
        chained = db.session.execute(select(func.count()).where(ConsentEvent.seq.is_not(None))).scalar_one()
        waiting = db.session.execute(select(func.count()).where(ConsentEvent.seq.is_(None))).scalar_one()
        db.session.remove()
    return chained, waiting


def write_pending(app, monkeypatch, count: int, batch: int = 5000) -> None:  # type: ignore[no-untyped-def]
    """``count`` opt-out events written as requests write them, left pending: as if every web
    process had died between its commit and its sequencing run."""
    monkeypatch.setattr(ledger, "_request_sequencing", lambda: None)
    with app.app_context():
        notice = get_notice("mysoft")
        for start in range(0, count, batch):
            with unit_of_work(orm=False) as uow:
                items = [
                    Evidence.under("opted_out", notice, None, "api", {"n": n})
                    for n in range(start, min(count, start + batch))
                ]
                ledger.append(uow, items, chain=False)
        db.session.remove()


def test_an_opt_out_is_answered_while_another_process_holds_the_chain(app, app_env, client, mailbox, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite lets one writer in at a time: a held write lock stops every write, the chain's or not")
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "held@example.com", "Held")
    address = database_url.replace("postgresql+psycopg://", "postgresql://")
    # The plain test client: it returns with the answer, not once the work after it is done.
    person = FlaskClient(app, app.response_class, use_cookies=False)
    with psycopg.connect(address) as holder:
        # Another sequencer in the middle of a batch: the head row locked.
        holder.execute("SELECT seq FROM ledger_head WHERE id = 1 FOR UPDATE")
        answers: list[int] = []
        request = threading.Thread(
            target=lambda: answers.append(
                person.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"}).status_code
            )
        )
        request.start()
        request.join(timeout=15)
        answered = not request.is_alive()
        assert chained_and_pending(app)[1] == 1  # the opt-out's evidence: committed, waiting for its place
        holder.rollback()  # lets an old-style request that queued on the head finish, either way
        request.join(timeout=30)
    assert answered, "the opt-out waited for the chain's head"
    assert answers == [200]
    assert app.extensions["after_response"].wait_idle(timeout=30)  # the process's sequencer got the head
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.notice == "munkeby")).scalar_one()
        assert sub.status == "unsubscribed"
        db.session.remove()
    assert chained_and_pending(app)[1] == 0
    verified = run_flask(app_env, "ledger", "verify")
    assert verified.returncode == 0, verified.stderr


def sequencer_check(client) -> dict[str, object]:  # type: ignore[no-untyped-def]
    [check] = [check for check in client.get("/readyz").get_json()["checks"] if check["name"] == "ledger_sequencer"]
    return check


def test_evidence_left_unchained_past_the_merge_delay_is_reported_everywhere(app, app_env, client, monkeypatch):
    app.config["LEDGER_MAX_MERGE_DELAY_SECONDS"] = 1
    app_env = {**app_env, "LEDGER_MAX_MERGE_DELAY_SECONDS": "1"}
    write_pending(app, monkeypatch, 3)
    assert sequencer_check(client)["ok"] is True  # young enough yet
    time.sleep(1.5)
    checks = {"ledger_sequencer": sequencer_check(client)}
    assert checks["ledger_sequencer"]["ok"] is False
    assert "3 evidence events have waited more than 1 s" in checks["ledger_sequencer"]["detail"]
    health = client.get("/healthz")
    assert health.status_code == 200  # liveness: a restart would not chain anything
    assert health.get_json()["ledger"]["pending_events"] == 3
    assert health.get_json()["ledger"]["within_merge_delay"] is False
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "consent_ledger_pending_events 3.0" in metrics
    assert "consent_ledger_max_merge_delay_seconds 1.0" in metrics
    verified = run_flask(app_env, "ledger", "verify")
    assert verified.returncode == 1
    assert "3 events have waited more than 1 s for their place in the chain" in verified.stderr

    sequenced = run_flask(app_env, "ledger", "sequence")
    assert sequenced.returncode == 0, sequenced.stderr
    assert json.loads(sequenced.stdout) == {"chained": 3, "pending": 0}
    assert sequencer_check(client) == {"name": "ledger_sequencer", "ok": True, "detail": "no evidence waiting"}
    verified = run_flask(app_env, "ledger", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 3 events verified"), verified.stderr


def test_a_pending_event_changed_in_the_database_is_never_chained(app, app_env, monkeypatch):
    write_pending(app, monkeypatch, 5)
    with app.app_context():
        ids = list(db.session.execute(select(ConsentEvent.id).order_by(ConsentEvent.id)).scalars())
        # Someone with database access turns the second event into another person's consent.
        db.session.execute(update(ConsentEvent).where(ConsentEvent.id == ids[1]).values(type="consent_confirmed"))
        db.session.commit()
        db.session.remove()
    result = run_flask(app_env, "ledger", "sequence")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"chained": 4, "pending": 1}
    assert f"pending evidence event id {ids[1]} does not match its content hash" in result.stderr
    with app.app_context():
        left = db.session.execute(select(ConsentEvent.id, ConsentEvent.seq).where(ConsentEvent.id == ids[1])).one()
        assert left.seq is None
        db.session.remove()
    verified = run_flask(app_env, "ledger", "verify")
    assert verified.returncode == 1
    assert f"pending event id {ids[1]} does not match its content hash" in verified.stderr


def _sequencer(env: dict[str, str], batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "ledger", "sequence", "--batch", str(batch)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_sequencer_killed_mid_batch_and_two_racing_lose_nothing_and_chain_nothing_twice(app, app_env, monkeypatch):
    total, batch = 40_000, 10_000
    write_pending(app, monkeypatch, total)
    assert chained_and_pending(app) == (0, total)
    rng = random.Random(8058)
    kills = 0
    for _ in range(6):
        process = _sequencer(app_env, batch)
        time.sleep(rng.uniform(0.5, 2.5))
        if process.poll() is not None:
            process.communicate(timeout=30)  # finished before the kill; close its pipes
            break
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        kills += 1
        chained, waiting = chained_and_pending(app)
        # One transaction a batch: a kill never leaves part of a batch chained.
        assert chained % batch == 0 and chained + waiting == total
        if waiting <= batch:
            break
    assert kills >= 1
    # Two sequencers racing for the rest.
    racing = [_sequencer(app_env, 3_000), _sequencer(app_env, 3_000)]
    outputs = [process.communicate(timeout=300) for process in racing]
    assert [process.returncode for process in racing] == [0, 0], [err for _out, err in outputs]
    assert chained_and_pending(app) == (total, 0)
    with app.app_context():
        seqs = db.session.execute(select(func.count(func.distinct(ConsentEvent.seq)), func.max(ConsentEvent.seq))).one()
        assert tuple(seqs) == (total, total)  # every event once, no gap, no seq given twice
        facts = db.session.execute(select(ConsentEvent.facts)).scalars()
        assert sorted(json.loads(value)["n"] for value in facts) == list(range(total))
        db.session.remove()
    verified = run_flask(app_env, "ledger", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith(f"ok: {total} events verified"), verified.stderr


def test_events_of_a_request_are_chained_after_its_answer(app, client, mailbox):
    mail = subscribe_and_confirm(client, mailbox, "mysoft", "after@example.com")
    assert client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    chained, waiting = chained_and_pending(app)
    assert waiting == 0 and chained >= 4  # sign-up, confirmation sent, consent, opt-out (and the deletion)
    with app.app_context():
        assert ledger.check(db.session).ok
        assert db.session.execute(text("SELECT count(*) FROM consent_events WHERE content_hash IS NULL")).scalar() == 0
        db.session.remove()


def test_changed_events_filling_a_whole_batch_do_not_stop_the_genuine_ones_behind_them(app, app_env, monkeypatch):
    write_pending(app, monkeypatch, 7)
    with app.app_context():
        ids = list(db.session.execute(select(ConsentEvent.id).order_by(ConsentEvent.id)).scalars())
        # The three oldest pending events changed in the database: more than one batch of them.
        db.session.execute(update(ConsentEvent).where(ConsentEvent.id.in_(ids[:3])).values(channel="forged"))
        db.session.commit()
        db.session.remove()
    result = run_flask(app_env, "ledger", "sequence", "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"chained": 4, "pending": 3}
    with app.app_context():
        left = db.session.execute(select(ConsentEvent.id).where(ConsentEvent.seq.is_(None))).scalars()
        assert sorted(left) == ids[:3]
        db.session.remove()
