"""GDPR Art. 14 for harvested addresses: informed on time, and the mail recorded as evidence.

Mysoft imports B2B addresses from open web sources on legitimate interest; each
such contact gets the Art. 14 information mail. When the mail server has taken
it, the ledger holds an ``art14_informed`` event with the time; the import warns
when the contacts were obtained more than a month ago (Art. 14(3)(a)); and the
dashboard's list of contacts still uninformed after 25 days is read here too.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from flask_babel import force_locale
from sqlalchemy import select, update

from app import create_app, import_jobs, importer, mail
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, ServiceMark, Subscription, utcnow

from .support import PUBLIC_URL, REPO, Mailbox, SmtpSink

SOURCE = "https://www.bolag.se/om-oss/kontakt"
MAIL_FROM = "nyheter@news.example.org"


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink) -> dict[str, str]:
    return {**app_env, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "MAIL_FROM": MAIL_FROM}


def import_harvested(runner, addresses: list[str], *extra: str, source_date: date | None = None):  # type: ignore[no-untyped-def]
    day = (source_date or date.today()).isoformat()
    args = ["contacts", "import", "-", "--notice", "mysoft", "--source", SOURCE, "--source-date", day, *extra]
    result = runner.invoke(args=args, input="email\n" + "".join(f"{a}\n" for a in addresses))
    assert result.exit_code == 0, result.output
    return result


def run_outbox(runner) -> int:  # type: ignore[no-untyped-def]
    result = runner.invoke(args=["outbox", "run", "--once"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["processed"]


def informed_events(app) -> list[ConsentEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        events = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "art14_informed")).scalars().all()
        db.session.expunge_all()
        return list(events)


def exported_events(runner, address: str, kind: str) -> list[dict]:  # type: ignore[type-arg, no-untyped-def]
    result = runner.invoke(args=["subjects", "export", address])
    assert result.exit_code == 0, result.output
    return [e for e in json.loads(result.stdout)["events"] if e["type"] == kind]


def art14_jobs_due_now(app) -> None:  # type: ignore[no-untyped-def]
    """Make a retry due at once rather than after its backoff."""
    with app.app_context():
        db.session.execute(update(OutboxJob).values(next_attempt_at=utcnow()))
        db.session.commit()


def parts(message: EmailMessage) -> tuple[str, str]:
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


# --- the evidence ---------------------------------------------------------------------------


def test_the_mail_taken_by_the_mail_server_is_recorded_with_the_time_it_was_sent(app, runner, smtp):
    import_harvested(runner, ["ada@bolag.se"])
    assert informed_events(app) == []  # queued is not sent
    before = utcnow()
    run_outbox(runner)
    after = utcnow()

    [message] = smtp.messages("ada@bolag.se")
    [event] = exported_events(runner, "ada@bolag.se", "art14_informed")
    assert event["channel"] == "mail" and event["notice"] == "mysoft"
    sent_at = datetime.fromisoformat(event["facts"]["sent_at"].removesuffix("Z"))
    assert before <= sent_at <= after
    sent_header = message["Date"].datetime.replace(tzinfo=None)
    assert abs(sent_at - sent_header) < timedelta(seconds=5)


def test_a_failed_send_records_nothing_and_the_retry_that_succeeds_records_once(app, runner, smtp):
    smtp.stop()
    import_harvested(runner, ["ada@bolag.se"])
    run_outbox(runner)
    assert informed_events(app) == []
    with app.app_context():
        [job] = db.session.execute(select(OutboxJob).where(OutboxJob.kind == "mail")).scalars().all()
        assert job.state == "pending" and "SMTP unavailable" in (job.last_error or "")

    smtp.start()  # back, on the same port
    art14_jobs_due_now(app)
    run_outbox(runner)
    assert len(smtp.messages("ada@bolag.se")) == 1
    assert len(informed_events(app)) == 1

    # A worker that sent and recorded, then died before marking the job done: the
    # job runs again after its lease, and neither mails nor records a second time.
    with app.app_context():
        db.session.execute(update(OutboxJob).where(OutboxJob.kind == "mail").values(state="pending"))
        db.session.commit()
    art14_jobs_due_now(app)
    run_outbox(runner)
    assert len(smtp.messages("ada@bolag.se")) == 1
    assert len(informed_events(app)) == 1


def test_a_mail_written_to_the_development_folder_informs_nobody_and_records_nothing(app, runner, smtp):
    app.config["SMTP_HOST"] = ""  # as without SMTP_HOST: mail goes to instance/mail/
    evidence_kept_since(app, days=60)
    import_harvested(runner, ["ada@bolag.se"])
    run_outbox(runner)
    written = Mailbox(Path(app.config["MAIL_DIR"])).to("ada@bolag.se")
    assert len(written) == 1 and smtp.messages("ada@bolag.se") == []  # written, never handed to a server
    assert informed_events(app) == []
    assert exported_events(runner, "ada@bolag.se", "art14_informed") == []
    imported_days_ago(app, "ada@bolag.se", 26)
    with app.app_context():
        assert [u.email for u in importer.uninformed_contacts(["mysoft"])] == ["ada@bolag.se"]


def test_someone_who_opted_out_or_was_erased_before_the_send_gets_nothing_and_no_event(app, client, runner, smtp):
    import_harvested(runner, ["otto@bolag.se", "eva@bolag.se"])
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.email == "otto@bolag.se")).scalar_one()
        # The link every mail to Otto carries; he used one from an earlier mailing.
        link = mail.unsubscribe_link("mysoft", sub.ref, sub.email_hash).removeprefix(PUBLIC_URL)
    assert client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert runner.invoke(args=["subjects", "erase", "eva@bolag.se"]).exit_code == 0

    run_outbox(runner)
    assert smtp.messages("otto@bolag.se") == [] and smtp.messages("eva@bolag.se") == []
    assert informed_events(app) == []


# --- the mail -------------------------------------------------------------------------------


def art14_mail(app, runner, smtp, lang: str) -> EmailMessage:  # type: ignore[no-untyped-def]
    import_harvested(runner, ["ada@bolag.se"], source_date=date(2026, 11, 20))
    with app.app_context():
        db.session.execute(update(Subscription).values(lang=lang))
        db.session.commit()
    run_outbox(runner)
    [message] = smtp.messages("ada@bolag.se")
    return message


def test_the_right_to_object_comes_first_on_its_own_with_the_one_click_link(app, runner, smtp):
    message = art14_mail(app, runner, smtp, "en")
    unsubscribe = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"])
    assert unsubscribe
    link = unsubscribe.group(1)
    plain, html = parts(message)

    objection = plain.index("You have the right to object")
    assert plain.index("at any time", objection) < plain.index("we then stop at once", objection)
    # The link follows the objection at once, before any of the other information.
    assert objection < plain.index(link) < plain.index("Who we are")
    assert not re.search(r"(?m)^- .*right to object", plain)  # not one item in the list of the rest

    heading = re.search(r"<h2[^>]*>([^<]*)</h2>\s*<p>([^<]*You have the right to object[^<]*)", html)
    assert heading, html
    assert html.index(heading.group(0)) < html.index(f'href="{link}"') < html.index("<ul>")
    assert "Your right to object" in heading.group(1)


def test_the_mail_says_where_the_address_came_from_in_the_persons_language(app, runner, smtp):
    plain, html = parts(art14_mail(app, runner, smtp, "en"))
    assert f"imported from {SOURCE}, collected Nov 20, 2026" in plain
    assert f"imported from {SOURCE}, collected Nov 20, 2026" in html
    assert "import: " not in plain  # the stored code is not what a person reads
    # Art. 14(1)(f): whether the data leaves the EU/EEA, and the processor by its own name.
    assert "Transfers outside the EU/EEA: The data is not transferred outside the EU/EEA." in plain
    assert "our newsletter provider APSIS, as our processor" in plain


def test_the_swedish_mail_says_the_source_with_a_swedish_date(app, runner, smtp):
    plain, html = parts(art14_mail(app, runner, smtp, "sv"))
    assert plain.startswith("Hej!") and '<html lang="sv">' in html
    assert f"{SOURCE}, " in plain and "20 nov. 2026" in plain  # the date as a Swedish reader writes it
    assert "Uppgifterna överförs inte utanför EU/EES." in plain and "Uppgifterna överförs inte utanför EU/EES." in html


# --- on time ---------------------------------------------------------------------------------


def test_a_source_date_more_than_a_month_old_warns_naming_the_deadline_and_imports_all_the_same(app, runner):
    stale = date.today() - timedelta(days=40)
    result = import_harvested(runner, ["ada@bolag.se"], source_date=stale)
    assert json.loads(result.stdout)["added"] == 1
    warning = result.stderr
    assert "Art. 14(3)(a)" in warning and "one month" in warning
    assert importer.one_month_after(stale).isoformat() in warning
    assert "warning" not in result.stdout  # the data on stdout stays JSON

    fresh = import_harvested(runner, ["bo@bolag.se"], source_date=date.today() - timedelta(days=20))
    assert "Art. 14" not in fresh.stderr


def test_a_dashboard_import_of_contacts_obtained_over_a_month_ago_logs_the_warning_and_runs(app, runner, caplog):
    stale = date.today() - timedelta(days=45)
    spec = {"lawful_basis": "legitimate_interest", "source": SOURCE, "source_date": stale.isoformat(), "proof": None}
    with app.app_context():
        upload = import_jobs.store_upload(io.BytesIO(b"email\nada@bolag.se\n"), "kontakter.csv", "mysoft", spec, "anna")
        import_jobs.queue(upload.id, "email", {}, dry_run=False)
    with caplog.at_level(logging.WARNING, logger="app.import_jobs"):
        run_outbox(runner)
    assert "Art. 14(3)(a)" in caplog.text and importer.one_month_after(stale).isoformat() in caplog.text
    assert len(exported_events(runner, "ada@bolag.se", "imported")) == 1


def test_a_dry_run_of_late_contacts_says_what_to_do_when_they_are_imported(app, runner, smtp):
    stale = date.today() - timedelta(days=40)
    result = import_harvested(runner, ["ada@bolag.se"], "--dry-run", source_date=stale)
    warning = result.stderr
    assert f"passed on {importer.one_month_after(stale).isoformat()}" in warning
    assert "Inform them as soon as they are imported" in warning
    assert "imported all the same" not in warning and "goes out now" not in warning
    run_outbox(runner)
    assert smtp.messages() == [] and json.loads(result.stdout)["dry_run"] is True


def notices_without_art14(folder: Path) -> Path:
    """The shipped notices, with Mysoft no longer sending the Art. 14 mail to imported contacts."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "notices").glob("*.toml"):
        text = source.read_text(encoding="utf-8")
        if source.stem == "mysoft":
            assert "inform_imported = true" in text
            text = text.replace("inform_imported = true", "inform_imported = false")
        (folder / source.name).write_text(text, encoding="utf-8")
    return folder


def test_no_lateness_warning_where_no_art14_mail_would_go_out(app_env, app, tmp_path, smtp):
    quiet = create_app(env={**app_env, "NOTICES_DIR": str(notices_without_art14(tmp_path / "notices"))})
    try:
        runner = quiet.test_cli_runner()
        result = import_harvested(runner, ["ada@bolag.se"], source_date=date.today() - timedelta(days=40))
        assert json.loads(result.stdout)["added"] == 1
        assert "Art. 14" not in result.stderr
        run_outbox(runner)
        assert smtp.messages("ada@bolag.se") == []  # indeed no mail
    finally:
        with quiet.app_context():
            db.session.remove()
            db.engine.dispose()


def test_an_import_on_consent_is_no_art14_case_and_does_not_warn(app, runner):
    stale = (date.today() - timedelta(days=400)).isoformat()
    args = ["contacts", "import", "-", "--notice", "mysoft", "--source", "fair 2025", "--source-date", stale]
    result = runner.invoke(args=[*args, "--basis", "consent", "--proof", "signed sheets"], input="email\na@b.se\n")
    assert result.exit_code == 0 and "Art. 14" not in result.stderr


def test_the_month_is_a_calendar_month_ending_on_the_last_day_of_a_short_one(app):
    with app.test_request_context("/?lang=en"):
        assert importer.late_for_art14(date(2026, 1, 31), date(2026, 2, 28)) is None
        late = importer.late_for_art14(date(2026, 1, 31), date(2026, 3, 1))
        assert late is not None and "2026-02-28" in late and "2026-01-31" in late
        assert importer.late_for_art14(date(2026, 11, 2), date(2026, 12, 2)) is None
        assert importer.late_for_art14(date(2026, 11, 1), date(2026, 12, 2)) is not None
        with force_locale("en"):
            assert "Art. 14(3)(a)" in (importer.late_for_art14(date(2025, 12, 31), date(2026, 2, 1)) or "")


def imported_days_ago(app, address: str, days: float) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.execute(
            update(Subscription)
            .where(Subscription.email == address)
            .values(confirmed_at=utcnow() - timedelta(days=days))
        )
        db.session.commit()


def evidence_kept_since(app, days: float) -> datetime:  # type: ignore[no-untyped-def]
    """Set when the service began to record Art. 14 mails (migration 0007 sets it at upgrade)."""
    at = utcnow() - timedelta(days=days)
    with app.app_context():
        db.session.merge(ServiceMark(name=importer.ART14_EVIDENCE_SINCE, at=at))
        db.session.commit()
    return at


def imported_by_older_code(app, address: str, days: float) -> None:  # type: ignore[no-untyped-def]
    """As the code before the evidence made a contact: imported ``days`` ago, its Art. 14 job
    done and its payload wiped, and no ``art14_informed`` event."""
    with app.app_context():
        ref = db.session.execute(select(Subscription.ref).where(Subscription.email == address)).scalar_one()
        db.session.execute(
            update(OutboxJob)
            .where(OutboxJob.subscription_ref == ref, OutboxJob.kind == "mail")
            .values(state="done", payload={})
        )
        db.session.commit()
    imported_days_ago(app, address, days)


def test_contacts_imported_before_the_evidence_was_kept_are_counted_apart_not_called_uninformed(app, runner):
    evidence_kept_since(app, days=30)
    import_harvested(runner, ["old@bolag.se", "older@bolag.se", "new@bolag.se"])  # no worker: none sent
    imported_by_older_code(app, "old@bolag.se", 40)
    imported_by_older_code(app, "older@bolag.se", 300)
    imported_days_ago(app, "new@bolag.se", 26)
    with app.app_context():
        assert [u.email for u in importer.uninformed_contacts(["mysoft"])] == ["new@bolag.se"]
        assert importer.unknown_if_informed(["mysoft"]) == 2
        assert importer.unknown_if_informed(["munkeby"]) == 0


def test_contacts_imported_25_days_ago_and_not_yet_informed_are_listed(app, runner, smtp):
    evidence_kept_since(app, days=60)
    import_harvested(runner, ["informed@bolag.se"])
    run_outbox(runner)  # informed at once
    smtp.stop()  # the rest are not: the mail server is down
    import_harvested(runner, ["waiting@bolag.se", "recent@bolag.se"])
    run_outbox(runner)
    for address in ("informed@bolag.se", "waiting@bolag.se"):
        imported_days_ago(app, address, 26)
    imported_days_ago(app, "recent@bolag.se", 10)

    with app.app_context():
        [late] = importer.uninformed_contacts(["mysoft"])
        assert (late.notice, late.email, late.days_since) == ("mysoft", "waiting@bolag.se", 26)
        ref = db.session.execute(select(Subscription.ref).where(Subscription.email == "waiting@bolag.se")).scalar()
        assert late.ref == ref and abs(late.imported_at - (utcnow() - timedelta(days=26))) < timedelta(minutes=1)
        assert importer.uninformed_contacts(["munkeby"]) == []  # another controller's user sees none of them
        assert [u.email for u in importer.uninformed_contacts(["mysoft"], older_than_days=5)] == [
            "waiting@bolag.se",
            "recent@bolag.se",
        ]
        assert len(importer.uninformed_contacts(["mysoft"], older_than_days=5, limit=1)) == 1
