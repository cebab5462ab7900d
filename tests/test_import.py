"""Contact import from CSV: lawful basis and source recorded, opt-outs respected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from app import importer
from app.extensions import db
from app.importer import BATCH_SIZE
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import REPO, link_in, subscribe_and_confirm, text_body, unsubscribe_path

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
    manage = client.get(link_in(mail, "manage") + "?lang=en").get_data(as_text=True)
    assert "ada@firma.se" in manage and SOURCE in manage  # the person's own page, from the mail
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


GOOD = BATCH_SIZE + 500  # more than one batch
GOOD_ROWS = "".join(f"person{i}@firma.se;Person {i}\n" for i in range(GOOD))
MALFORMED = {
    "a header field over 64 KiB": (b"E-post;" + b"x" * 70_000 + b"\n" + b"ada@firma.se;Ada\n", "at line 1"),
    "a field over 64 KiB after a whole batch": (
        ("E-post;Namn\n" + GOOD_ROWS + "bad@firma.se;" + "x" * 70_000 + "\n").encode(),
        f"at line {GOOD + 2}",
    ),
    "an Excel export in Windows-1252": (
        "E-post;Namn\nåsa@firma.se;Åsa Öberg\n".encode("cp1252"),
        "line 2 is not UTF-8",
    ),
    "Windows-1252 after a whole batch": (
        ("E-post;Namn\n" + GOOD_ROWS).encode() + "örjan@firma.se;Örjan\n".encode("cp1252"),
        f"line {GOOD + 2} is not UTF-8",
    ),
    "UTF-16 (NUL bytes)": ("E-post;Namn\nada@firma.se;Ada\n".encode("utf-16"), "NUL byte"),
    "one endless line": (b"E-post\n" + b"a" * (2**20 + 10) + b"\n", "line 2 is longer than 1 MiB"),
}


@pytest.mark.parametrize("content, where", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_file_is_refused_clearly_and_changes_nothing(app, runner, tmp_path, content, where):
    path = tmp_path / "contacts.csv"
    path.write_bytes(content)
    for extra in ((), ("--dry-run",)):
        result = runner.invoke(args=[*import_args(str(path))[:-2], *extra])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        assert where in result.output and ("UTF-8" in result.output or "not valid CSV" in result.output)
    assert counts(app) == (0, 0, 0)


def test_a_file_piped_to_standard_input_is_checked_whole_before_anything_is_written(app, app_env):
    def flask_import(content: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *import_args("-")[:-2]],
            cwd=REPO,
            env=app_env,
            input=content,
            capture_output=True,
            timeout=60,
        )

    refused = flask_import(MALFORMED["Windows-1252 after a whole batch"][0])
    assert refused.returncode == 1 and f"line {GOOD + 2} is not UTF-8".encode() in refused.stderr
    assert b"Traceback" not in refused.stderr
    assert counts(app) == (0, 0, 0)
    done = flask_import(("E-post;Namn\n" + GOOD_ROWS).encode())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == GOOD
    assert counts(app) == (GOOD, GOOD, 2 * GOOD)  # each once: a subscription, an event, a sync and an Art. 14 mail
    verified = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "ledger", "verify"], cwd=REPO, env=app_env, capture_output=True
    )
    assert verified.returncode == 0, verified.stderr


def test_a_batch_that_fails_stops_the_import_with_its_error_and_keeps_what_was_written(app, tmp_path, monkeypatch):
    """Each batch is its own transaction: a failing one ends the import with its error, the
    batches before it stay and none after it is written."""
    written = []
    real = importer._import_batch

    def second_fails(spec, batch, result):  # type: ignore[no-untyped-def]
        if written:
            raise RuntimeError("the database went away")
        real(spec, batch, result)
        written.append(len(batch))

    monkeypatch.setattr(importer, "_import_batch", second_fails)
    path = tmp_path / "contacts.csv"
    path.write_text("E-post;Namn\n" + GOOD_ROWS + "".join(f"more{i}@firma.se;M\n" for i in range(BATCH_SIZE)))
    with app.app_context():
        spec = importer.ImportSpec(
            app.extensions["notices"]["mysoft"], "E-post", None, "legitimate_interest", SOURCE,
            datetime(2026, 11, 1).date(), None, "test",
        )  # fmt: skip
        with path.open("rb") as binary, pytest.raises(RuntimeError, match="went away"):
            importer.run_import(spec, importer.TextLines(binary))
    assert written == [BATCH_SIZE]
    assert counts(app)[0] == BATCH_SIZE


def test_a_file_larger_than_a_window_adds_each_new_address_once(app, client, mailbox, runner, tmp_path, monkeypatch):
    """A file larger than a window is written window by window, each in its hash order: every
    new address is added once, a duplicate in a later window is still a duplicate, and held and
    opted-out addresses are skipped wherever they fall."""
    monkeypatch.setattr(importer, "WINDOW_SIZE", 7)
    monkeypatch.setattr(importer, "BATCH_SIZE", 3)
    prepare(client, mailbox)
    people = [f"person{i}@firma.se" for i in range(30)]
    lines = [f"{address};Namn {i}" for i, address in enumerate(people)]
    lines.insert(5, "held@example.com;Hedda")
    lines.insert(17, "opted.out@example.com;Otto")
    # Again, four windows after the first spelling and in the same window as it.
    lines += ["PERSON3@firma.se;Sent igen", "person28@firma.se;Sent igen"]
    result = runner.invoke(args=import_args(write_csv(tmp_path, "E-post;Namn\n" + "\n".join(lines) + "\n")))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "dry_run": False,
        "rows": 34,
        "added": 30,
        "skipped_suppressed": 1,
        "skipped_existing": 1,
        "skipped_duplicate_in_file": 2,
        "skipped_invalid": 0,
    }
    with app.app_context():
        held = db.session.execute(
            select(Subscription.email, func.count()).where(Subscription.notice == "mysoft").group_by(Subscription.email)
        ).all()
        imported = db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "imported")
        ).scalar_one()
    assert dict(held) == {**{address: 1 for address in people}, "held@example.com": 1}
    assert imported == 30
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_each_notice_allows_only_its_own_import_bases(app, runner, tmp_path):
    path = write_csv(tmp_path, "email\nanna@example.com\n")
    munkeby = ["contacts", "import", path, "--notice", "munkeby", "--source", "https://www.firma.se/kontakt"]
    refused = runner.invoke(args=[*munkeby, "--basis", "legitimate_interest"])
    assert refused.exit_code == 1
    assert "the Munkeby Systems notice allows imports only on consent, not on legitimate_interest" in refused.output
    assert counts(app) == (0, 0, 0)

    mysoft = ["contacts", "import", path, "--notice", "mysoft", "--source", "https://www.firma.se/kontakt"]
    on_consent = runner.invoke(args=[*mysoft, "--basis", "consent", "--proof", "web form 2025, export 12"])
    assert json.loads(on_consent.stdout)["added"] == 1
    [sub] = json.loads(runner.invoke(args=["subjects", "export", "anna@example.com"]).stdout)["subscriptions"]
    assert sub["lawful_basis"] == "consent"


def relationships(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return {email: rel for email, rel in db.session.execute(select(Subscription.email, Subscription.relationship))}


def test_the_basis_sets_the_relationship_unless_a_column_says_otherwise(app, runner, tmp_path):
    on_consent = "email;typ\nsigned@firma.se;\nkund@firma.se;Kund\n"
    on_consent += "prospekt@firma.se;PROSPEKT\nprenumerant@firma.se;Prenumerant\n"
    args = ["contacts", "import", write_csv(tmp_path, on_consent), "--notice", "munkeby", "--source", "fair 2025"]
    result = runner.invoke(args=[*args, "--proof", "signed sheets, binder 7", "--relationship-column", "typ"])
    assert json.loads(result.stdout)["added"] == 4
    assert relationships(app) == {
        "signed@firma.se": "subscriber",
        "kund@firma.se": "customer",
        "prospekt@firma.se": "prospect",
        "prenumerant@firma.se": "subscriber",
    }

    harvested = "email;typ\nfound@bolag.se;\nbuyer@bolag.se;customer\nclaims@bolag.se;subscriber\nodd@bolag.se;friend\n"
    args = ["contacts", "import", write_csv(tmp_path, harvested), "--notice", "mysoft", "--source", SOURCE]
    result = json.loads(runner.invoke(args=[*args, "--relationship-column", "typ"]).stdout)
    # Without consent no one is a subscriber: such a row is refused like any other invalid one.
    assert result["added"] == 2 and result["skipped_invalid"] == 2
    assert {k: v for k, v in relationships(app).items() if k.endswith("@bolag.se")} == {
        "found@bolag.se": "prospect",
        "buyer@bolag.se": "customer",
    }


START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(days: float):  # type: ignore[no-untyped-def]
    return time_machine.travel(START + timedelta(days=days), tick=True)


@pytest.fixture
def munkeby_also_on_legitimate_interest(app_env, tmp_path, request):  # type: ignore[no-untyped-def]
    """The app with Munkeby's notice also allowing imports on legitimate interest (it has prospect rules)."""
    folder = tmp_path / "notices"
    shutil.copytree(REPO / "notices", folder)
    path = folder / "munkeby.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace('import_lawful_bases = ["consent"]', 'import_lawful_bases = ["consent", "legitimate_interest"]'),
        encoding="utf-8",
    )
    app_env["NOTICES_DIR"] = str(folder)
    return request.getfixturevalue("app")


def still_held(app, address: str) -> bool:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(Subscription.id).where(Subscription.email == address)).first() is not None


def test_consent_imports_are_kept_while_they_subscribe_and_harvested_ones_go_after_a_year(
    munkeby_also_on_legitimate_interest, tmp_path
):
    app = munkeby_also_on_legitimate_interest
    runner = app.test_cli_runner()

    def import_on(basis: str, csv_text: str, *extra: str) -> None:
        args = ["contacts", "import", "-", "--notice", "munkeby", "--source", SOURCE, "--source-date", "2026-01-01"]
        result = runner.invoke(args=[*args, "--basis", basis, *extra], input=csv_text)
        assert result.exit_code == 0, result.output

    def purge() -> dict:  # type: ignore[type-arg]
        return json.loads(runner.invoke(args=["retention", "purge"]).stdout)["purged"]

    with at(0):
        import_on("consent", "email\nsigned@firma.se\n", "--proof", "trade fair form 2025, binder 3")
        import_on("legitimate_interest", "email\nfound@firma.se\n")
        crm = "email;Tillagd\nsince-june@firma.se;2025-06-01\nfuture@firma.se;2026-02-01\nancient@firma.se;1999-12-31\n"
        import_on("legitimate_interest", crm, "--added-column", "Tillagd")
        assert not still_held(app, "future@firma.se") and not still_held(app, "ancient@firma.se")  # invalid rows
    with at(148):  # 2026-06-02: a year and a day after the CRM added the contact
        assert purge() == {"munkeby": {"prospect_without_dialog_days": 1}}
        assert not still_held(app, "since-june@firma.se")
        assert still_held(app, "found@firma.se") and still_held(app, "signed@firma.se")
    with at(396):  # thirteen months after the import
        assert purge() == {"munkeby": {"prospect_without_dialog_days": 1}}
        assert not still_held(app, "found@firma.se")
        assert still_held(app, "signed@firma.se")  # a subscriber: kept while they subscribe
    exported = json.loads(runner.invoke(args=["subjects", "export", "signed@firma.se"]).stdout)
    assert "kept while you subscribe" in exported["subscriptions"][0]["retention"]["summary"]


def test_an_added_on_column_is_recorded_with_the_import(app, runner, tmp_path):
    path = write_csv(tmp_path, "email;Tillagd\nada@bolag.se;2024-03-15\nnew@bolag.se;\n")
    result = runner.invoke(
        args=["contacts", "import", path, "--notice", "mysoft", "--source", SOURCE, "--added-column", "Tillagd"]
    )
    assert json.loads(result.stdout)["added"] == 2
    exported = json.loads(runner.invoke(args=["subjects", "export", "ada@bolag.se"]).stdout)
    assert exported["subscriptions"][0]["created_at"].startswith("2024-03-15")
    [imported] = [e for e in exported["events"] if e["type"] == "imported"]
    assert imported["facts"]["added_on"] == "2024-03-15"
    fresh = json.loads(runner.invoke(args=["subjects", "export", "new@bolag.se"]).stdout)
    assert fresh["subscriptions"][0]["created_at"][:10] == datetime.now(UTC).date().isoformat()
    missing = runner.invoke(
        args=["contacts", "import", path, "--notice", "mysoft", "--source", SOURCE, "--added-column", "Added"]
    )
    assert missing.exit_code == 1 and "no column named 'Added'" in missing.output
