"""Contact import from CSV: lawful basis and source recorded, opt-outs respected."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import subscribe_and_confirm, text_body, unsubscribe_path

CSV = (
    "E-post;Namn;Företag\n"
    "ada@firma.se;Ada Lund;Firma AB\n"
    "not-an-address;Nils;X\n"
    "ADA@firma.se;Ada igen;Firma AB\n"
    "opted.out@example.com;Otto;Y\n"
    "held@example.com;Hedda;Z\n"
    "ny@bolag.se;;Bolag AB\n"
)
SOURCE = "https://www.firma.se/kontakt"


def write_csv(tmp_path, text: str = CSV):  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def import_args(path: str, *extra: str) -> list[str]:
    return [
        "contacts",
        "import",
        path,
        "--notice",
        "mysoft",
        "--source",
        SOURCE,
        "--source-date",
        "2026-11-01",
        "--email-column",
        "E-post",
        "--name-column",
        "Namn",
        *extra,
    ]


def prepare(client, mailbox) -> None:  # type: ignore[no-untyped-def]
    gone = subscribe_and_confirm(client, mailbox, "mysoft", "opted.out@example.com")
    client.post(unsubscribe_path(gone), data={"List-Unsubscribe": "One-Click"})
    subscribe_and_confirm(client, mailbox, "mysoft", "held@example.com")


def counts(app) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return tuple(  # type: ignore[return-value]
            db.session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Subscription, ConsentEvent, OutboxJob)
        )


def test_a_dry_run_reports_everything_and_writes_nothing(app, client, mailbox, runner, tmp_path):
    prepare(client, mailbox)
    before = counts(app)
    result = runner.invoke(args=import_args(write_csv(tmp_path), "--dry-run"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "dry_run": True,
        "rows": 6,
        "added": 2,
        "skipped_suppressed": 1,
        "skipped_existing": 1,
        "skipped_duplicate_in_file": 1,
        "skipped_invalid": 1,
    }
    assert counts(app) == before


def test_an_import_records_basis_and_source_and_informs_under_art_14(app, client, mailbox, runner, tmp_path):
    prepare(client, mailbox)
    result = runner.invoke(args=import_args(write_csv(tmp_path)))
    assert json.loads(result.stdout)["added"] == 2
    exported = json.loads(runner.invoke(args=["subjects", "export", "ada@firma.se"]).stdout)
    [sub] = exported["subscriptions"]
    assert sub["status"] == "subscribed" and sub["lawful_basis"] == "legitimate_interest"
    assert sub["source"] == f"import: {SOURCE} (2026-11-01)"
    assert sub["name"] is None  # Mysoft collects the address only
    [imported] = [e for e in exported["events"] if e["type"] == "imported"]
    assert imported["facts"]["collected_from_person"] is False and imported["facts"]["source"] == SOURCE
    assert runner.invoke(args=["subjects", "export", "opted.out@example.com"]).exit_code == 1  # not re-added

    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    mail = mailbox.last("ada@firma.se")
    body = text_body(mail)
    assert "art. 14" in body.lower() and SOURCE in body and "/unsubscribe/" in body
    assert mail["List-Unsubscribe"] and mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert runner.invoke(args=["subjects", "export", "ada@firma.se"]).exit_code == 1  # Mysoft's rule: deleted


def test_an_import_on_consent_needs_its_proof_and_sends_no_art_14_mail(app, client, runner, tmp_path):
    path = write_csv(tmp_path, "email,name\nanna@example.com,Anna Berg\n")
    base = ["contacts", "import", path, "--notice", "munkeby", "--source", "fair stand sign-up sheet"]
    refused = runner.invoke(args=[*base, "--basis", "consent"])
    assert refused.exit_code == 1 and "proof" in refused.output
    assert counts(app) == (0, 0, 0)
    done = runner.invoke(
        args=[*base, "--basis", "consent", "--proof", "signed sheets, binder 7", "--name-column", "name"]
    )
    assert json.loads(done.stdout)["added"] == 1
    with app.app_context():
        kinds = sorted(job.kind for job in db.session.execute(select(OutboxJob)).scalars())
    assert kinds == ["sync_consent"]
    assert (
        json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)["subscriptions"][0]["name"]
        == "Anna Berg"
    )


def test_bad_files_and_mappings_are_refused_clearly(app, runner, tmp_path):
    missing = runner.invoke(args=[*import_args(write_csv(tmp_path))[:-4], "--email-column", "mail"])
    assert missing.exit_code == 1 and "no column named 'mail'" in missing.output
    empty = runner.invoke(args=import_args(write_csv(tmp_path, "")))
    assert empty.exit_code == 1 and "header" in empty.output
    future = runner.invoke(args=[*import_args(write_csv(tmp_path)), "--source-date", "2999-01-01"])
    assert future.exit_code == 1 and "future" in future.output
    assert counts(app) == (0, 0, 0)
