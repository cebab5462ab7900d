"""Backups proven to restore: into an empty database, the chain and its checkpoint agreeing,
and an opt-out made after the backup brought back by the replay the runbook prescribes.

Everything runs as an operator would: ``flask --app wsgi backup ...`` in a process of its own.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import POSTGRES_URL
from .fakes.apsis import FakeApsis
from .support import provider_env, run_flask, subscribe_and_confirm

pytestmark = pytest.mark.e2e  # the CLI in processes of its own, as an operator runs it
SECTION = "mysoft-section"


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis) -> dict[str, str]:
    apsis.report_interval = 0
    return {**app_env, **provider_env(apsis=apsis)}


@pytest.fixture
def empty_target(app_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The same service's settings on a new machine: an empty database and instance folder."""
    instance = tmp_path / "restored-instance"
    if app_env["DATABASE_URL"].startswith("sqlite"):
        instance.mkdir(mode=0o700)
        yield {**app_env, "INSTANCE_PATH": str(instance), "DATABASE_URL": f"sqlite:///{instance}/consent.sqlite3"}
        return
    import psycopg

    name = f"consent_restore_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {**app_env, "INSTANCE_PATH": str(instance), "DATABASE_URL": POSTGRES_URL.rsplit("/", 1)[0] + "/" + name}
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def status(env: dict[str, str], address: str) -> str | None:
    result = run_flask(env, "subjects", "export", address)
    if result.returncode != 0:
        return None  # nothing held: erased (Mysoft's opt-out deletes)
    return json.loads(result.stdout)["subscriptions"][0]["status"]


def test_a_backup_restores_into_an_empty_database_and_the_replay_brings_back_later_opt_outs(
    app, app_env, client, mailbox, apsis, empty_target, tmp_path
):
    for address in ("kept@example.com", "later@example.com"):
        subscribe_and_confirm(client, mailbox, "mysoft", address)
    subscribe_and_confirm(client, mailbox, "munkeby", "munkeby.reader@example.com")
    assert run_flask(app_env, "ledger", "checkpoint").returncode == 0

    backup = tmp_path / "backups" / "consent.tar"
    made = run_flask(app_env, "backup", "create", str(backup))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert json.loads(made.stdout)["ledger_head"] > 0
    assert "backup:" in made.stderr  # the progress summary
    assert run_flask(app_env, "backup", "create", str(backup)).returncode != 0  # never over a file

    # After the backup: the person opts out in an APSIS mail; APSIS's event export has it.
    opted_out_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    apsis.add_report_event("UNSUBSCRIBED", "later@example.com", SECTION, opted_out_at)
    assert json.loads(run_flask(app_env, "providers", "poll-apsis", "--wait", "5").stdout)["outcomes"]["applied"] == 1
    assert status(app_env, "later@example.com") is None

    # The disk is lost. The same settings on a new database; the first start creates it empty.
    restored = run_flask(empty_target, "backup", "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    summary = json.loads(restored.stdout)
    assert summary["chain_ok"] is True and summary["events"] > 0
    assert "providers poll-apsis --since" in restored.stderr
    verified = run_flask(empty_target, "ledger", "verify")
    assert verified.returncode == 0, verified.stderr  # the chain and the checkpoint agree
    assert status(empty_target, "kept@example.com") == "subscribed"
    assert status(empty_target, "munkeby.reader@example.com") == "subscribed"
    assert status(empty_target, "later@example.com") == "subscribed"  # the backup predates the opt-out

    # The runbook's replay: APSIS's export again from the backup's day on.
    since = summary["created_at"][:10]
    replay = run_flask(empty_target, "providers", "poll-apsis", "--since", since, "--wait", "5")
    assert replay.returncode == 0, replay.stderr
    assert status(empty_target, "later@example.com") is None  # the opt-out is not lost
    assert status(empty_target, "kept@example.com") == "subscribed"
    assert run_flask(empty_target, "ledger", "verify").returncode == 0


def test_a_restore_into_a_database_in_use_is_refused_and_changes_nothing(app, app_env, client, mailbox, tmp_path):
    subscribe_and_confirm(client, mailbox, "munkeby", "first@example.com")
    backup = tmp_path / "consent.tar"
    assert run_flask(app_env, "backup", "create", str(backup)).returncode == 0
    subscribe_and_confirm(client, mailbox, "munkeby", "second@example.com")
    refused = run_flask(app_env, "backup", "restore", str(backup))
    assert refused.returncode != 0 and "empty database" in refused.stderr
    assert status(app_env, "second@example.com") == "subscribed"


def test_a_damaged_or_foreign_backup_is_refused(app, app_env, client, mailbox, empty_target, tmp_path):
    subscribe_and_confirm(client, mailbox, "munkeby", "first@example.com")
    backup = tmp_path / "consent.tar"
    assert run_flask(app_env, "backup", "create", str(backup)).returncode == 0
    # One byte of the database part changed, the manifest left as it was.
    altered = tmp_path / "altered.tar"
    with tarfile.open(backup) as source, tarfile.open(altered, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("database."):
                data = data[:-1] + bytes([data[-1] ^ 1])
            target.addfile(member, io.BytesIO(data))
    damaged = run_flask(empty_target, "backup", "restore", str(altered))
    assert damaged.returncode != 0 and "checksum" in damaged.stderr
    foreign = tmp_path / "foreign.tar"
    foreign.write_bytes(os.urandom(4096))
    refused = run_flask(empty_target, "backup", "restore", str(foreign))
    assert refused.returncode != 0 and "cannot be read as a backup" in refused.stderr
    assert status(empty_target, "first@example.com") is None  # nothing was restored
