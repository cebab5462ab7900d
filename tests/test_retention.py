"""Each notice's retention rules, by travelling in time, on both databases."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import time_machine
from sqlalchemy import func, select

from app import import_jobs
from app.extensions import db
from app.models import ConsentEvent, DataRequest, EventDetail, OutboxJob, ProviderDelivery, Subscription, Suppression

from .support import link_in, sign_up, subscribe_and_confirm

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

BOTH = ("--notice", "munkeby", "--notice", "mysoft")


def at(days: float):  # type: ignore[no-untyped-def]
    """Travel to ``days`` after START; the clock keeps running there."""
    return time_machine.travel(START + timedelta(days=days), tick=True)


def purge(runner, dry_run: bool = False) -> dict:  # type: ignore[no-untyped-def]
    result = runner.invoke(args=["retention", "purge", *(["--dry-run"] if dry_run else [])])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def held(app, address: str, notice: str) -> Subscription | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(Subscription).where(Subscription.email == address, Subscription.notice == notice)
        ).scalar_one_or_none()


def count(app, model, *where) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def deleted_by_rule(app, rule: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.execute(
            select(ConsentEvent.facts).where(ConsentEvent.type == "personal_data_deleted")
        ).scalars()
        return sum(1 for facts in rows if json.loads(facts).get("rule") == rule)


def import_contacts(runner, notice: str, csv_text: str, *extra: str) -> None:  # type: ignore[no-untyped-def]
    args = ["contacts", "import", "-", "--notice", notice, "--source", "https://www.firma.se/kontakt"]
    args += ["--source-date", "2026-01-01", "--email-column", "email", *extra]
    if notice == "munkeby":
        args += ["--proof", "trade fair form 2025, binder 3"]
    result = runner.invoke(args=args, input=csv_text)
    assert result.exit_code == 0, result.output


def test_unconfirmed_sign_ups_go_after_their_period_and_nothing_else_does(app, client, mailbox, runner):
    with at(0):
        assert sign_up(client, "munkeby", "never@firma.se", "Never").status_code == 303
        assert sign_up(client, "mysoft", "never@firma.se").status_code == 303
        subscribe_and_confirm(client, mailbox, "munkeby", "stays@firma.se", "Stays")
    with at(29):
        assert purge(runner, dry_run=True)["would_purge"] == []
        purge(runner)
        assert held(app, "never@firma.se", "munkeby") is not None
    with at(31):
        planned = purge(runner, dry_run=True)
        assert sorted((row["notice"], row["email"], row["rule"]) for row in planned["would_purge"]) == [
            ("munkeby", "never@firma.se", "unconfirmed_days"),
            ("mysoft", "never@firma.se", "unconfirmed_days"),
        ]
        assert all(row["age_days"] in (30, 31) and row["limit_days"] == 30 for row in planned["would_purge"])
        assert held(app, "never@firma.se", "munkeby") is not None  # a dry run changes nothing
        report = purge(runner)
        assert report["purged"] == {"munkeby": {"unconfirmed_days": 1}, "mysoft": {"unconfirmed_days": 1}}
        assert held(app, "never@firma.se", "munkeby") is None and held(app, "never@firma.se", "mysoft") is None
        assert held(app, "stays@firma.se", "munkeby") is not None
        assert deleted_by_rule(app, "unconfirmed_days") == 2
        assert count(app, Suppression) == 0  # never opted out: free to sign up again
        assert not any("never" in m["To"] for m in mailbox.messages())  # their mail went with them
        again = purge(runner)
        assert again["purged"] == {}
    assert count(app, ConsentEvent, ConsentEvent.type == "retention_purged") == 2
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_unsubscribed_contacts_go_after_their_period_and_stay_suppressed(app, client, mailbox, runner):
    with at(0):
        welcome = subscribe_and_confirm(client, mailbox, "munkeby", "out@firma.se", "Out")
        client.post(link_in(welcome, "unsubscribe"), data={"List-Unsubscribe": "One-Click"})
    assert held(app, "out@firma.se", "munkeby").status == "unsubscribed"
    with at(364):
        assert purge(runner)["purged"] == {}
    with at(366):
        assert purge(runner)["purged"] == {"munkeby": {"unsubscribed_days": 1}}
        assert held(app, "out@firma.se", "munkeby") is None
        assert count(app, Suppression, Suppression.notice == "munkeby") == 1  # still never re-added
        with app.app_context():
            deletes = db.session.execute(select(OutboxJob.payload).where(OutboxJob.kind == "sync_optout")).scalars()
            assert any(p.get("action") == "delete" for p in deletes)  # Mailchimp forgets them too
        import_contacts(runner, "munkeby", "email\nout@firma.se\n")
        assert held(app, "out@firma.se", "munkeby") is None


def test_prospects_go_a_year_after_being_added_or_two_after_the_last_dialog(app, client, runner):
    with at(0):
        csv_text = "email;typ\nquiet@firma.se;prospekt\ntalks@firma.se;prospekt\nbuyer@firma.se;prospekt\n"
        import_contacts(runner, "munkeby", csv_text, "--relationship-column", "typ")  # on consent: say prospect
        assert held(app, "quiet@firma.se", "munkeby").relationship == "prospect"
        token = json.loads(runner.invoke(args=["tokens", "create", "crm", "--scope", "contact", *BOTH]).stdout)["token"]
    auth = {"Authorization": f"Bearer {token}"}
    with at(301):
        answer = client.post(
            "/api/v1/contacts",
            json={"email": "talks@firma.se", "notice": "munkeby", "last_contact_at": "2026-11-01T10:00:00Z"},
            headers=auth,
        )
        assert answer.status_code == 200 and answer.json["last_contact_at"] == "2026-11-01T10:00:00Z"
        answer = client.post(
            "/api/v1/contacts", json={"email": "buyer@firma.se", "notice": "munkeby", "relationship": "customer"},
            headers=auth,
        )
        assert answer.json["relationship"] == "customer"
    with at(364):
        assert purge(runner)["purged"] == {}
    with at(366):
        report = purge(runner)
        assert report["purged"] == {"munkeby": {"prospect_without_dialog_days": 1}}
        assert held(app, "quiet@firma.se", "munkeby") is None
        assert held(app, "talks@firma.se", "munkeby") is not None
        assert held(app, "buyer@firma.se", "munkeby") is not None  # customers are reviewed, not purged
        assert report["review_due"]["munkeby"] == 1
    last_contact = datetime(2026, 11, 1, 10, tzinfo=UTC)
    with time_machine.travel(last_contact + timedelta(days=729), tick=True):
        assert purge(runner)["purged"] == {}
    with time_machine.travel(last_contact + timedelta(days=731), tick=True):
        assert purge(runner)["purged"] == {"munkeby": {"prospect_with_dialog_days": 1}}
        assert held(app, "talks@firma.se", "munkeby") is None
        assert held(app, "buyer@firma.se", "munkeby") is not None
    assert count(app, Suppression) == 0  # a purged prospect did not opt out


def test_the_last_contact_comes_from_an_import_column_and_only_moves_forward(app, client, runner):
    with at(0):
        csv_text = "email;Senast;Typ\nold@firma.se;2025-12-01;prospekt\nkund@firma.se;;kund\nbad@firma.se;igår;\n"
        import_contacts(runner, "munkeby", csv_text, "--last-contact-column", "Senast", "--relationship-column", "Typ")
        old = held(app, "old@firma.se", "munkeby")
        assert old.last_contact_at == datetime(2025, 12, 1) and old.relationship == "prospect"
        assert held(app, "kund@firma.se", "munkeby").relationship == "customer"
        assert held(app, "bad@firma.se", "munkeby") is None  # a date that is not one skips the row
        token = json.loads(runner.invoke(args=["tokens", "create", "crm", "--scope", "contact", *BOTH]).stdout)["token"]
        earlier = client.post(
            "/api/v1/contacts",
            json={"email": "old@firma.se", "notice": "munkeby", "last_contact_at": "2025-06-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert earlier.json["last_contact_at"] == "2025-12-01T00:00:00Z"
    with time_machine.travel(datetime(2025, 12, 1, tzinfo=UTC) + timedelta(days=731), tick=True):
        assert purge(runner)["purged"] == {"munkeby": {"prospect_with_dialog_days": 1}}


def test_a_customer_review_is_listed_until_it_is_done(app, client, runner):
    with at(0):
        import_contacts(runner, "munkeby", "email;typ\nkund@firma.se;customer\n", "--relationship-column", "typ")
    with at(366):
        assert purge(runner, dry_run=True)["review_due"] == {"munkeby": 1}
        ref = held(app, "kund@firma.se", "munkeby").ref
        runner.invoke(args=["users", "create", "maria@munkeby.se", "--role", "marketer", "--password", "x" * 16, *BOTH])
        login = client.get("/dashboard/login").get_data(as_text=True)
        token = login.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        client.post("/dashboard/login", data={"csrf_token": token, "email": "maria@munkeby.se", "password": "x" * 16})
        overview = client.get("/dashboard/").get_data(as_text=True)
        assert 'data-figure="review-due">1<' in overview
        listed = client.get("/dashboard/subscribers?notice=munkeby&review=due").get_data(as_text=True)
        assert "kund@firma.se" in listed
        page = client.get(f"/dashboard/subscribers/{ref}").get_data(as_text=True)
        token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        assert client.post(f"/dashboard/subscribers/{ref}/reviewed", data={"csrf_token": token}).status_code == 303
        assert purge(runner, dry_run=True)["review_due"] == {"munkeby": 0}
        assert count(app, ConsentEvent, ConsentEvent.type == "customer_reviewed") == 1


def test_old_evidence_loses_its_personal_details_except_the_proof_of_a_current_consent(app, client, mailbox, runner):
    with at(0):
        welcome = subscribe_and_confirm(client, mailbox, "munkeby", "long@firma.se", "Long")
        client.post(link_in(welcome, "manage") + "/name", data={"notice": "munkeby", "name": "Long Time"})
    with app.app_context():
        kinds_with_details = set(
            db.session.execute(
                select(ConsentEvent.type).join(EventDetail, EventDetail.event_id == ConsentEvent.id)
            ).scalars()
        )
    assert {"signup_requested", "consent_confirmed", "rectified"} <= kinds_with_details
    with at(1094):
        assert purge(runner)["evidence_reduced"]["munkeby"] == 0
    with at(1096):
        assert purge(runner, dry_run=True)["evidence_reduced"]["munkeby"] == 1
        assert purge(runner)["evidence_reduced"]["munkeby"] == 1
        assert purge(runner)["evidence_reduced"]["munkeby"] == 0  # idempotent
    with app.app_context():
        left = set(
            db.session.execute(
                select(ConsentEvent.type).join(EventDetail, EventDetail.event_id == ConsentEvent.id)
            ).scalars()
        )
    assert left == {"signup_requested", "consent_confirmed"}  # still proving the consent relied on
    assert held(app, "long@firma.se", "munkeby").name == "Long Time"
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_old_delivery_keys_and_abandoned_uploads_are_cleared(app, client, runner):
    with at(0), app.app_context():
        db.session.add(ProviderDelivery(key="k" * 64, provider="mailchimp", kind="unsubscribe", outcome="applied"))
        db.session.add(DataRequest(kind="export", email_hash="h" * 64))
        db.session.commit()
        upload = import_jobs.store_upload(
            io.BytesIO(b"email\nleft@firma.se\n"), "left.csv", "mysoft", {"source": "x"}, "user:1"
        )
        path = import_jobs.upload_path(upload.id)
    assert path.exists()
    with at(6):
        assert purge(runner)["housekeeping"]["data_requests"] == 0
    with at(8):
        assert purge(runner, dry_run=True)["housekeeping"]["data_requests"] == 1
        report = purge(runner)
        assert report["housekeeping"]["import_uploads"] == 1
        assert report["housekeeping"]["data_requests"] == 1
        assert count(app, DataRequest) == 0
        assert not path.exists()
    with at(91):
        report = purge(runner)
        assert report["housekeeping"]["provider_deliveries"] == 1
        assert count(app, ProviderDelivery) == 0


def test_a_last_contact_before_2000_or_in_the_future_is_refused_and_changes_nothing(app, client, runner):
    with at(0):
        import_contacts(runner, "munkeby", "email;typ\nlead@firma.se;prospekt\n", "--relationship-column", "typ")
        token = json.loads(runner.invoke(args=["tokens", "create", "crm", "--scope", "contact", *BOTH]).stdout)["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for when in ("1999-12-31T23:59:59Z", "2027-01-01T00:00:00Z"):
            answer = client.post(
                "/api/v1/contacts",
                json={"email": "lead@firma.se", "notice": "munkeby", "last_contact_at": when},
                headers=auth,
            )
            assert answer.status_code == 422 and answer.json["error"] == "invalid_field", answer.json
            assert "last_contact_at" in answer.json["detail"]
        assert held(app, "lead@firma.se", "munkeby").last_contact_at is None

        ref = held(app, "lead@firma.se", "munkeby").ref
        runner.invoke(args=["users", "create", "maria@munkeby.se", "--role", "marketer", "--password", "x" * 16, *BOTH])
        login = client.get("/dashboard/login").get_data(as_text=True)
        csrf = login.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        client.post("/dashboard/login", data={"csrf_token": csrf, "email": "maria@munkeby.se", "password": "x" * 16})
        page = client.get(f"/dashboard/subscribers/{ref}?lang=en").get_data(as_text=True)
        csrf = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        answer = client.post(
            f"/dashboard/subscribers/{ref}/contact?lang=en",
            data={"csrf_token": csrf, "last_contact": "1999-12-31"},
            follow_redirects=True,
        )
        assert "Please check the values." in answer.get_data(as_text=True)
        assert held(app, "lead@firma.se", "munkeby").last_contact_at is None
        client.post(f"/dashboard/subscribers/{ref}/contact", data={"csrf_token": csrf, "last_contact": "2026-01-02"})
        assert held(app, "lead@firma.se", "munkeby").last_contact_at == datetime(2026, 1, 2)
    assert count(app, ConsentEvent, ConsentEvent.type == "contact_recorded") == 1
