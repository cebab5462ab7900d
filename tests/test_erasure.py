"""Erasure means erased: the address is gone from the files, evidence stays provable."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, Suppression

from .fakes.apsis import FakeApsis
from .fakes.mailchimp import FakeMailchimp
from .support import provider_env, sign_up, subscribe_and_confirm, unsubscribe_path


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis, mailchimp: FakeMailchimp) -> dict[str, str]:
    """Both providers configured, so the queue can drain and the promise hold."""
    return {**app_env, **provider_env(apsis=apsis, mailchimp=mailchimp)}


def drain(runner) -> None:  # type: ignore[no-untyped-def]
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0


def sqlite_files(app) -> list[Path]:  # type: ignore[no-untyped-def]
    main = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    return [p for p in (main, Path(f"{main}-wal"), Path(f"{main}-shm"), Path(f"{main}-journal")) if p.exists()]


def raw_bytes_contain(app, needle: str) -> bool:  # type: ignore[no-untyped-def]
    return any(needle.encode() in path.read_bytes() for path in sqlite_files(app))


def test_mysoft_opt_out_leaves_no_trace_of_the_address_in_sqlite_files(app, client, mailbox, runner):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("raw-file check applies to SQLite; PostgreSQL is checked by row absence")
    address = "unique.person.4711@example.com"
    path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "mysoft", address))
    # Others stay, so freed cells sit among live pages rather than at the end.
    for i in range(30):
        sign_up(client, "mysoft", f"other{i}@example.com")
    assert raw_bytes_contain(app, address)  # the check can see it while it is held
    client.post(path, data={"List-Unsubscribe": "One-Click"})
    drain(runner)  # the provider-side delete needs the address until it is done
    assert not raw_bytes_contain(app, address)
    assert not raw_bytes_contain(app, address.split("@")[0])
    assert not list(Path(app.config["MAIL_DIR"]).glob("*.eml")) or all(
        address not in p.read_text(errors="ignore") for p in Path(app.config["MAIL_DIR"]).glob("*.eml")
    )


def test_cli_erase_removes_everything_but_keeps_a_verifiable_chain(app, client, mailbox, runner):
    address = "erase.me.0815@example.com"
    subscribe_and_confirm(client, mailbox, "munkeby", address, "Erik Ersson")
    subscribe_and_confirm(client, mailbox, "mysoft", address)
    drain(runner)
    result = runner.invoke(args=["subjects", "erase", address])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"erased": ["munkeby", "mysoft"]}
    drain(runner)
    assert runner.invoke(args=["subjects", "export", address]).exit_code != 0
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Suppression)).scalar_one() == 2
        types = set(db.session.execute(select(ConsentEvent.type)).scalars())
    assert {"consent_confirmed", "erasure_requested", "personal_data_deleted"} <= types
    assert not any(address in p.read_text(errors="ignore") for p in Path(app.config["MAIL_DIR"]).glob("*.eml"))
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        assert not raw_bytes_contain(app, address)
        assert not raw_bytes_contain(app, "Erik Ersson")


def test_erasing_an_unknown_address_says_so(runner):
    result = runner.invoke(args=["subjects", "erase", "nobody@example.com"])
    assert result.exit_code != 0 and "nothing is held" in result.stderr


def dump_holds(app, needle: str) -> bool:  # type: ignore[no-untyped-def]
    """The database as a backup would hold it: the raw files on SQLite, pg_dump on PostgreSQL."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        return raw_bytes_contain(app, needle)
    dump = subprocess.run(
        [shutil.which("pg_dump") or "pg_dump", "--data-only", url.replace("postgresql+psycopg://", "postgresql://")],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return needle.encode() in dump


def test_after_erasure_no_file_log_dump_or_provider_holds_the_address(
    app, client, mailbox, runner, caplog, mailchimp, apsis
):
    if shutil.which("pg_dump") is None and not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("pg_dump is not installed; the PostgreSQL dump cannot be checked")
    caplog.set_level(logging.DEBUG)
    address, name = "wholly.gone.2718@example.com", "Greta Gone"
    subscribe_and_confirm(client, mailbox, "munkeby", address, name)
    subscribe_and_confirm(client, mailbox, "mysoft", address)
    drain(runner)
    # Every place is looked at while the person is held, so the checks can see them.
    assert dump_holds(app, address) and dump_holds(app, name)
    assert address in json.dumps(mailchimp.members) and address in json.dumps(list(apsis.profiles))
    assert any(address in p.read_text(errors="ignore") for p in Path(app.config["MAIL_DIR"]).glob("*.eml"))

    assert runner.invoke(args=["subjects", "erase", address]).exit_code == 0
    drain(runner)  # the providers' deletes

    assert not dump_holds(app, address) and not dump_holds(app, name)
    mail_dir = Path(app.config["MAIL_DIR"])
    assert not any(address in p.name or address in p.read_text(errors="ignore") for p in mail_dir.glob("*"))
    assert address not in json.dumps(mailchimp.members) and address not in json.dumps(list(apsis.profiles))
    assert address not in caplog.text and name not in caplog.text  # nothing logged it, at any level
