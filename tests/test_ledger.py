"""The evidence ledger is tamper-evident: every kind of change is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from app.extensions import db
from app.models import ConsentEvent, EventDetail, LedgerHead

from .support import subscribe_and_confirm, unsubscribe_path


def make_history(client, mailbox) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        mail = subscribe_and_confirm(client, mailbox, "munkeby", f"p{i}@example.com", f"Person {i}")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})


def verify(runner):  # type: ignore[no-untyped-def]
    return runner.invoke(args=["ledger", "verify"])


def tamper(app, *statements) -> None:  # type: ignore[no-untyped-def]
    """Change the stored evidence behind the service's back, as an attacker would."""
    with app.app_context():
        for statement in statements:
            db.session.execute(text(statement) if isinstance(statement, str) else statement)
        db.session.commit()


def test_untouched_chain_verifies(client, mailbox, runner):
    make_history(client, mailbox)
    result = verify(runner)
    assert result.exit_code == 0 and result.stdout.startswith("ok: 10 events verified")


def test_changed_field_is_found_and_named(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, update(ConsentEvent).where(ConsentEvent.seq == 4).values(channel="api"))
    result = verify(runner)
    assert result.exit_code == 1 and "BROKEN at event 4" in result.stdout


def test_changed_personal_details_are_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, update(EventDetail).where(EventDetail.seq == 1).values(details='{"email":"x@evil.example"}'))
    result = verify(runner)
    assert result.exit_code == 1 and "BROKEN at event 1" in result.stdout


def test_deleted_middle_event_is_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, "DELETE FROM event_details WHERE seq = 5", "DELETE FROM consent_events WHERE seq = 5")
    result = verify(runner)
    assert result.exit_code == 1 and "event 5 is missing" in result.stdout


def test_swapped_events_are_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    with app.app_context():
        a, b = (db.session.get(ConsentEvent, seq) for seq in (3, 4))
        a_type, b_type = a.type, b.type
        a.type, b.type = b_type, a_type
        db.session.commit()
    assert verify(runner).exit_code == 1


def test_truncated_tail_is_found_against_the_recorded_head(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, "DELETE FROM event_details WHERE seq >= 9", "DELETE FROM consent_events WHERE seq >= 9")
    with app.app_context():
        assert db.session.execute(select(LedgerHead.seq)).scalar_one() == 10
    result = verify(runner)
    assert result.exit_code == 1 and "chain ends at event 8" in result.stdout


def test_a_tail_cut_with_the_head_moved_back_is_found_against_the_signed_checkpoint(app, client, mailbox, runner):
    make_history(client, mailbox)
    assert runner.invoke(args=["ledger", "checkpoint"]).exit_code == 0  # the worker does this every few minutes
    # The attacker cuts the last two events and moves the recorded head back with them:
    # the chain alone verifies again.
    with app.app_context():
        event_8 = db.session.execute(select(ConsentEvent.hash).where(ConsentEvent.seq == 8)).scalar_one()
    tamper(
        app,
        "DELETE FROM event_details WHERE seq >= 9",
        "DELETE FROM consent_events WHERE seq >= 9",
        update(LedgerHead).values(seq=8, hash=event_8),
    )
    result = verify(runner)
    assert result.exit_code == 1 and "no longer holds event 10" in result.stdout


def test_a_checkpoint_not_signed_with_the_service_key_is_refused(app, client, mailbox, runner):
    make_history(client, mailbox)
    assert verify(runner).exit_code == 0  # a good chain moves the checkpoint to its head
    path = Path(app.config["LEDGER_CHECKPOINT_FILE"])
    record = json.loads(path.read_text())
    assert record["seq"] == 10
    path.write_text(json.dumps({**record, "seq": 3}))  # pointing at an earlier event, unsigned
    result = verify(runner)
    assert result.exit_code == 1 and "not signed" in result.stdout


def test_each_hash_is_the_sha256_of_the_documented_canonical_record(app):
    """The hash format is a promise to every ledger already written: the SHA-256 of the
    record's JSON with sorted keys, no spaces, text as UTF-8, time as ...T...Z."""
    import hashlib
    import json

    from app import ledger
    from app.database import unit_of_work
    from app.ledger import Evidence

    with app.app_context():
        notice = app.extensions["notices"]["munkeby"]
        odd = {"reason": 'quote " back \\ slash', "name": "Åsa Öberg 😀", "line": "a\u2028b\nc", "n": 7, "none": None}
        with unit_of_work() as uow:
            ledger.append(
                uow,
                [
                    Evidence.under(
                        "opted_out", notice, "a" * 32, "one-click", odd, details={"email": "åsa@exempel.se"}
                    ),
                    Evidence.under("opted_out", notice, None, "api", {}),
                ],
            )
        rows = db.session.execute(select(ConsentEvent).order_by(ConsentEvent.seq)).scalars().all()
        assert len(rows) == 2
        for row in rows:
            record = {
                "seq": row.seq,
                "at": row.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "type": row.type,
                "notice": row.notice,
                "notice_version": row.notice_version,
                "subscription_ref": row.subscription_ref,
                "channel": row.channel,
                "facts": row.facts,
                "details_digest": row.details_digest,
                "prev_hash": row.prev_hash,
            }
            text_form = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            assert row.hash == hashlib.sha256(text_form.encode("utf-8")).hexdigest()
        assert json.loads(rows[0].facts) == odd
        assert ledger.verify(db.session).ok


TEXT_OR_NONE = st.one_of(st.none(), st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))


@settings(max_examples=2000, deadline=None, database=None)
@given(values=st.tuples(*(TEXT_OR_NONE for _ in range(7)), st.integers(min_value=0), TEXT_OR_NONE, TEXT_OR_NONE))
def test_records_are_written_exactly_as_their_canonical_json(values):
    """The fast way ``ledger verify`` writes a record is the same text as the general one,
    so every ledger written before keeps verifying."""
    from app import ledger

    assert ledger._record_text(values) == ledger.canonical(dict(zip(ledger._FIELDS, values, strict=True)))


def test_verify_says_so_when_the_checkpoint_cannot_be_written(app, client, mailbox, runner):
    make_history(client, mailbox)
    app.config["LEDGER_CHECKPOINT_FILE"] = "/dev/null/ledger-checkpoint.json"  # not a folder
    result = verify(runner)
    assert result.exit_code == 2 and result.stdout.startswith("ok: 10 events verified")
    assert "checkpoint could not be written" in result.stderr


def _deleted(where: str) -> list[str]:
    return [f"DELETE FROM event_details WHERE {where}", f"DELETE FROM consent_events WHERE {where}"]


# With two processes over 60 events the ranges are 1-30 and 31 on: these hit both sides of the seam.
TAMPERINGS = {
    "untouched": [],
    "a field inside the second range": ["UPDATE consent_events SET channel = 'x' WHERE seq = 40"],
    "the second range's first event": ["UPDATE consent_events SET channel = 'x' WHERE seq = 31"],
    "details in the first range": ["UPDATE event_details SET details = '{}' WHERE seq = 7"],
    "the event at the seam deleted": _deleted("seq = 31"),
    "the first range's last event deleted": _deleted("seq = 30"),
    "the whole second range deleted": _deleted("seq > 30"),
    "the link across the seam": ["UPDATE consent_events SET prev_hash = hash WHERE seq = 31"],
    "the first event deleted": _deleted("seq = 1"),
    "the tail cut": _deleted("seq > 55"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_chain_walked_in_parallel_ranges_gives_the_single_walks_answer(app, tampering):
    from app import ledger
    from app.database import unit_of_work
    from app.ledger import Evidence

    with app.app_context():
        notice = app.extensions["notices"]["munkeby"]
        with unit_of_work() as uow:
            ledger.append(
                uow,
                [
                    Evidence.under("opted_out", notice, f"{i:032x}", "web", {"n": i}, {"email": f"p{i}@example.com"})
                    for i in range(60)
                ],
            )
        db.session.remove()
    tamper(app, *TAMPERINGS[tampering])
    with app.app_context():
        single = ledger.verify(db.session, processes=1)
        parallel = ledger.verify(db.session, processes=2, parallel_from=0)
        db.session.remove()
    assert parallel == single
    assert single.ok == (tampering == "untouched")
