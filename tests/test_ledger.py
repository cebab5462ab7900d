"""The evidence ledger is tamper-evident: every kind of change is found."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from app import create_app, ledger
from app.extensions import db
from app.models import ConsentEvent, EventDetail, LedgerHead

from .support import sign_up, subscribe_and_confirm, unsubscribe_path
from .test_dashboard import create_user, log_in, subscription_ref

EVENT_IDS_WHERE = "SELECT id FROM consent_events WHERE"
FIRST_EVENT_ID = select(ConsentEvent.id).where(ConsentEvent.seq == 1).scalar_subquery()


def details_of(where: str) -> str:
    """SQL deleting the personal details of the events ``where`` selects (details hang off the event's id)."""
    return f"DELETE FROM event_details WHERE event_id IN ({EVENT_IDS_WHERE} {where})"

def make_history(client, mailbox) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        mail = subscribe_and_confirm(client, mailbox, "munkeby", f"p{i}@example.com", f"Person {i}")
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})


def verify(runner):  # type: ignore[no-untyped-def]
    return runner.invoke(args=["ledger", "verify"])


def recorded_head(app):  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(LedgerHead.seq, LedgerHead.hash, LedgerHead.signature)).one()


def checkpoint_file(app) -> Path:  # type: ignore[no-untyped-def]
    return Path(app.config["LEDGER_CHECKPOINT_FILE"])


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
    assert result.exit_code == 1 and "BROKEN at event 4" in result.stderr and result.stdout == ""


def test_changed_personal_details_are_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    forged = update(EventDetail).where(EventDetail.event_id == FIRST_EVENT_ID)
    tamper(app, forged.values(details='{"email":"x@evil.example"}'))
    result = verify(runner)
    assert result.exit_code == 1 and "BROKEN at event 1" in result.stderr


def test_deleted_middle_event_is_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, details_of("seq = 5"), "DELETE FROM consent_events WHERE seq = 5")
    result = verify(runner)
    assert result.exit_code == 1 and "event 5 is missing" in result.stderr


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
    tamper(app, details_of("seq >= 9"), "DELETE FROM consent_events WHERE seq >= 9")
    with app.app_context():
        assert db.session.execute(select(LedgerHead.seq)).scalar_one() == 10
    result = verify(runner)
    assert result.exit_code == 1 and "chain ends at event 8" in result.stderr


def test_a_tail_cut_with_the_head_moved_back_is_found_against_the_signed_checkpoint(app, client, mailbox, runner):
    make_history(client, mailbox)
    copied = recorded_head(app)  # an attacker who reads the database keeps the head of event 10, signature and all
    subscribe_and_confirm(client, mailbox, "mysoft", "later@example.com")  # events 11-13
    assert runner.invoke(args=["ledger", "checkpoint"]).exit_code == 0  # the worker does this every few minutes
    # The attacker cuts the events after 10 and puts the copied head back: the chain and
    # the head's signature verify again.
    tamper(
        app,
        details_of("seq > 10"),
        "DELETE FROM consent_events WHERE seq > 10",
        update(LedgerHead).values(seq=copied.seq, hash=copied.hash, signature=copied.signature),
    )
    with app.app_context():
        assert ledger.verify(db.session).ok
    result = verify(runner)
    assert result.exit_code == 1 and "no longer holds event 13" in result.stderr
    # Nor does the worker's round (or `ledger checkpoint`) move the checkpoint back to the cut chain.
    before = checkpoint_file(app).read_text()
    refused = runner.invoke(args=["ledger", "checkpoint"])
    assert refused.exit_code == 1 and "no longer holds event 13" in refused.stderr
    assert checkpoint_file(app).read_text() == before


def test_a_checkpoint_not_signed_with_the_service_key_is_refused(app, client, mailbox, runner):
    make_history(client, mailbox)
    assert verify(runner).exit_code == 0  # a good chain moves the checkpoint to its head
    path = Path(app.config["LEDGER_CHECKPOINT_FILE"])
    record = json.loads(path.read_text())
    assert record["seq"] == 10
    path.write_text(json.dumps({**record, "seq": 3}))  # pointing at an earlier event, unsigned
    result = verify(runner)
    assert result.exit_code == 1 and "is not signed with this service's key" in result.stderr


def test_each_hash_is_the_sha256_of_the_documented_canonical_record(app):
    """The hash format is a promise to every ledger already written: the SHA-256 of the
    record's JSON with sorted keys, no spaces, text as UTF-8, time as ...T...Z."""
    import hashlib
    import json

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

    assert ledger._record_text(values) == ledger.canonical(dict(zip(ledger._FIELDS, values, strict=True)))


def test_verify_says_so_when_the_checkpoint_cannot_be_written(app, client, mailbox, runner, monkeypatch):
    make_history(client, mailbox)

    def full_disk(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ledger, "_replace_file", full_disk)
    result = verify(runner)
    assert result.exit_code == 2 and result.stdout.startswith("ok: 10 events verified")
    assert "checkpoint could not be written" in result.stderr


def _deleted(where: str) -> list[str]:
    return [details_of(where), f"DELETE FROM consent_events WHERE {where}"]


# With two processes over 60 events the ranges are 1-30 and 31 on: these hit both sides of the seam.
TAMPERINGS = {
    "untouched": [],
    "a field inside the second range": ["UPDATE consent_events SET channel = 'x' WHERE seq = 40"],
    "the second range's first event": ["UPDATE consent_events SET channel = 'x' WHERE seq = 31"],
    "details in the first range": [
        f"UPDATE event_details SET details = '{{}}' WHERE event_id IN ({EVENT_IDS_WHERE} seq = 7)"
    ],
    "the event at the seam deleted": _deleted("seq = 31"),
    "the first range's last event deleted": _deleted("seq = 30"),
    "the whole second range deleted": _deleted("seq > 30"),
    "the link across the seam": ["UPDATE consent_events SET prev_hash = hash WHERE seq = 31"],
    "the first event deleted": _deleted("seq = 1"),
    "the tail cut": _deleted("seq > 55"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_chain_walked_in_parallel_ranges_gives_the_single_walks_answer(app, tampering):
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


# --- the anchor: a signed head and a checkpoint outside the database ---------


HEAD_SALT, CHECKPOINT_SALT = "newsletter-consent/ledger-head/v1", "newsletter-consent/ledger-checkpoint/v1"


def anchor_signature(pepper: str, salt: str, seq: int, head_hash: str) -> str:
    """The documented signature: HMAC-SHA256 with a key derived from SUPPRESSION_PEPPER alone."""
    key = hmac.new(pepper.encode(), b"newsletter-consent/ledger-anchor/v1", hashlib.sha256).digest()
    return hmac.new(key, f"{salt}\n{seq}\n{head_hash}".encode(), hashlib.sha256).hexdigest()


def rewrite(app, seq: int, **changes: object) -> None:  # type: ignore[no-untyped-def]
    """What someone with database access and this code, but not the key, can do: change an
    event, recompute its hash and every later one, and move the recorded head to the new tip."""
    with app.app_context():
        rows = db.session.execute(select(ConsentEvent).where(ConsentEvent.seq >= seq).order_by(ConsentEvent.seq))
        prev = None
        for row in rows.scalars():
            if row.seq == seq:
                for name, value in changes.items():
                    setattr(row, name, value)
            row.prev_hash = prev or row.prev_hash
            row.hash = prev = ledger.record_hash(row)
        db.session.execute(update(LedgerHead).values(hash=prev))
        db.session.commit()


def test_every_head_is_signed_with_a_key_derived_from_the_pepper_not_the_secret_key(app, app_env, client, mailbox):
    make_history(client, mailbox)
    head = recorded_head(app)
    pepper = app.config["SUPPRESSION_PEPPER"]
    assert head.signature == anchor_signature(pepper, HEAD_SALT, head.seq, head.hash)
    # SECRET_KEY is rotated from time to time; the ledger's anchor holds across a rotation.
    rotated = create_app(env={**app_env, "SECRET_KEY": "rotated-secret-" + "z" * 32})
    with rotated.app_context():
        try:
            assert ledger.check(db.session).ok
        finally:
            db.session.remove()
            db.engine.dispose()


@pytest.mark.parametrize("forged", ["left as it was", "removed", "made with the secret key"])
def test_a_rewritten_event_with_every_later_hash_and_the_head_recomputed_is_found(app, client, mailbox, runner, forged):
    make_history(client, mailbox)
    head = recorded_head(app)
    rewrite(app, 4, channel="api")  # the chain's hashes and links all fit again
    signature = {
        "left as it was": head.signature,
        "removed": None,
        "made with the secret key": anchor_signature(app.config["SECRET_KEY"], HEAD_SALT, 10, recorded_head(app).hash),
    }[forged]
    tamper(app, update(LedgerHead).values(signature=signature))
    result = verify(runner)
    assert result.exit_code == 1
    assert "the recorded head is not signed with this service's key" in result.stderr
    assert "BROKEN at event" not in result.stderr  # every event fits: only the key tells
    # The service goes on (an opt-out must never fail), but no later sign-up vouches for the rewritten chain.
    subscribe_and_confirm(client, mailbox, "munkeby", "after@example.com")
    assert recorded_head(app).signature is None
    result = verify(runner)
    assert result.exit_code == 1 and "not signed with this service's key" in result.stderr


def test_a_fresh_installation_with_no_worker_has_a_checkpoint_once_it_has_events(app, client, mailbox, runner):
    folder = checkpoint_file(app).parent / "anchor"
    app.config["LEDGER_CHECKPOINT_FILE"] = str(folder / "ledger-checkpoint.json")
    assert not folder.exists()
    sign_up(client, "munkeby", "first@example.com")  # the chain's first event, from a web request
    path = checkpoint_file(app)
    record = json.loads(path.read_text())
    assert 0 < record["seq"] <= recorded_head(app).seq  # the first append's head
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Ordinary appends leave the file to the worker and to `ledger verify`.
    make_history(client, mailbox)
    assert json.loads(path.read_text()) == record
    result = verify(runner)
    assert result.exit_code == 0 and result.stdout.startswith(f"ok: {recorded_head(app).seq} events verified")
    assert json.loads(path.read_text())["seq"] == recorded_head(app).seq  # moved to the head
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_process_killed_after_the_chains_first_commit_still_leaves_a_checkpoint(
    app, client, mailbox, runner, monkeypatch
):
    """The first events' checkpoint is written once they are committed; a process killed in
    between leaves the empty chain's, written before the commit, and the chain verifies."""
    monkeypatch.setattr(ledger, "_checkpoint_first_events", lambda *args: None)  # killed after the commit
    sign_up(client, "munkeby", "first@example.com")
    assert json.loads(checkpoint_file(app).read_text())["seq"] == 0
    monkeypatch.undo()
    result = verify(runner)
    assert result.exit_code == 0 and result.stdout.startswith(f"ok: {recorded_head(app).seq} events verified")
    assert json.loads(checkpoint_file(app).read_text())["seq"] == recorded_head(app).seq  # moved to the head


def test_a_deleted_checkpoint_fails_verify_until_an_operator_writes_a_new_one(app, client, mailbox, runner):
    make_history(client, mailbox)
    checkpoint_file(app).unlink()
    result = verify(runner)
    assert result.exit_code == 1 and "there is no checkpoint file" in result.stderr and result.stdout == ""
    # The worker's round does not quietly make a new one over events nobody anchored.
    refused = runner.invoke(args=["ledger", "checkpoint"])
    assert refused.exit_code == 1 and "there is no checkpoint file" in refused.stderr
    assert not checkpoint_file(app).exists()
    signed = runner.invoke(args=["ledger", "verify", "--sign-head"])
    assert signed.exit_code == 0 and signed.stdout.startswith("ok: 10 events verified")
    assert json.loads(checkpoint_file(app).read_text())["seq"] == 10
    assert verify(runner).exit_code == 0


def test_a_checkpoint_signed_with_another_key_is_refused(app, client, mailbox, runner):
    make_history(client, mailbox)
    head = recorded_head(app)
    forged = anchor_signature("another-pepper", CHECKPOINT_SALT, head.seq, head.hash)
    checkpoint_file(app).write_text(json.dumps({"seq": head.seq, "hash": head.hash, "signature": forged}))
    result = verify(runner)
    assert result.exit_code == 1 and "is not signed with this service's key" in result.stderr
    refused = runner.invoke(args=["ledger", "verify", "--sign-head"])  # nor is it replaced by one that is
    assert refused.exit_code == 1 and "is not signed with this service's key" in refused.stderr


def test_a_chain_started_afresh_under_an_earlier_checkpoint_is_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    assert verify(runner).exit_code == 0  # the checkpoint now names event 10
    tamper(app, "DELETE FROM event_details", "DELETE FROM consent_events")
    tamper(app, update(LedgerHead).values(seq=0, hash=ledger.GENESIS, signature=None))
    subscribe_and_confirm(client, mailbox, "munkeby", "again@example.com")  # a new chain, signed by the service
    assert json.loads(checkpoint_file(app).read_text())["seq"] == 10  # the first append left it alone
    result = verify(runner)
    assert result.exit_code == 1 and "no longer holds event 10" in result.stderr


def test_after_upgrading_an_unsigned_head_is_signed_once_the_chain_and_the_earlier_checkpoint_verify(
    app, client, mailbox, runner
):
    """A database from before heads were signed: its head has no signature, and its checkpoint
    (if the worker wrote one) was signed with SECRET_KEY."""
    make_history(client, mailbox)
    head = recorded_head(app)
    legacy = hmac.new(
        app.config["SECRET_KEY"].encode(),
        f"{CHECKPOINT_SALT}\n{head.seq}\n{head.hash}".encode(),
        hashlib.sha256,
    ).hexdigest()
    at = "2026-11-30T12:00:00Z"
    checkpoint_file(app).write_text(json.dumps({"seq": head.seq, "hash": head.hash, "at": at, "signature": legacy}))
    tamper(app, update(LedgerHead).values(signature=None))  # as migration 0006 leaves it
    subscribe_and_confirm(client, mailbox, "mysoft", "meanwhile@example.com")  # the service keeps working
    assert recorded_head(app).signature is None
    result = verify(runner)
    assert result.exit_code == 1 and "ledger verify --sign-head" in result.stderr
    assert runner.invoke(args=["ledger", "checkpoint"]).exit_code == 1  # the worker waits for the operator
    signed = runner.invoke(args=["ledger", "verify", "--sign-head"])
    assert signed.exit_code == 0, signed.stderr
    assert "signed the recorded head (event 13)" in signed.stderr
    record = json.loads(checkpoint_file(app).read_text())
    pepper = app.config["SUPPRESSION_PEPPER"]
    assert record["signature"] == anchor_signature(pepper, CHECKPOINT_SALT, 13, record["hash"])
    subscribe_and_confirm(client, mailbox, "munkeby", "later@example.com")
    assert recorded_head(app).signature is not None  # appends sign again
    assert verify(runner).exit_code == 0


def test_sign_head_refuses_a_chain_that_does_not_verify(app, client, mailbox, runner):
    make_history(client, mailbox)
    tamper(app, update(LedgerHead).values(signature=None))
    tamper(app, update(ConsentEvent).where(ConsentEvent.seq == 6).values(type="opted_out"))
    result = runner.invoke(args=["ledger", "verify", "--sign-head"])
    assert result.exit_code == 1 and "BROKEN at event 6" in result.stderr
    assert recorded_head(app).signature is None


def test_events_past_the_recorded_head_are_found(app, client, mailbox, runner):
    make_history(client, mailbox)
    head = recorded_head(app)
    tamper(app, details_of("seq = 10"), update(LedgerHead).values(seq=9))
    with app.app_context():
        event_9 = db.session.execute(select(ConsentEvent.hash).where(ConsentEvent.seq == 9)).scalar_one()
    tamper(app, update(LedgerHead).values(hash=event_9, signature=head.signature))
    result = verify(runner)
    assert result.exit_code == 1 and "the chain goes on past the recorded head (event 9)" in result.stderr


@pytest.fixture
def certificate(app, client, mailbox, runner):  # type: ignore[no-untyped-def]
    """Anna's consent certificate as a marketer sees it (read again on each call)."""
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    ref = subscription_ref(app, "anna@example.com")
    create_user(runner, "maria@munkeby.se", "marketer")
    marketer = app.test_client()
    assert log_in(marketer, "maria@munkeby.se").status_code == 302
    return lambda: marketer.get(f"/dashboard/subscribers/{ref}/certificate?lang=en").get_data(as_text=True)


def test_the_certificate_says_when_the_head_is_not_signed(app, certificate):
    page = certificate()
    assert 'data-figure="anchor"' in page and "signed with this service's key" in page
    rewrite(app, 2, channel="forged")
    page = certificate()
    assert 'class="warn" data-figure="chain"' in page and "Chain check FAILED:" in page
    assert "not signed with this service&#39;s key" in page
    assert 'data-figure="anchor"' not in page


def test_the_certificate_checks_the_same_anchor_as_ledger_verify(app, runner, certificate):
    page = certificate()
    assert 'data-figure="anchor"' in page and "recorded outside the database" in page
    assert "is still in the chain" in page
    checkpoint_file(app).unlink()  # what `ledger verify` fails on, the certificate fails on too
    page = certificate()
    assert 'class="warn" data-figure="chain"' in page and "there is no checkpoint file" in page
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 1


TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, TEXT | st.none() | st.integers() | st.lists(TEXT, max_size=2), max_size=5))
def test_details_are_written_as_the_documented_canonical_json(details):
    """An event's details digest covers the canonical JSON of its details: the text written
    directly for all-text details is the canonical encoder's, for any text (quotes, backslashes,
    control and non-ASCII characters), and anything else goes through the encoder."""
    texts = {key: value for key, value in details.items() if isinstance(value, str)}
    for each in (details, texts):
        assert ledger._canonical_details(each) == json.dumps(
            each, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
