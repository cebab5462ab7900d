"""``backup create PATH`` and ``backup restore PATH``: the database and the ledger's anchor, together.

A backup is one tar file (mode 0600, written whole or not at all) holding:

- ``database.sqlite3`` (SQLite's online backup API: consistent while the service writes) or
  ``database.pgdump`` (``pg_dump -Fc``, one snapshot of PostgreSQL);
- ``ledger-checkpoint.json``, the signed checkpoint outside the database, when there is one;
- ``manifest.json``: when, from which backend and schema revision, the ledger's head (seq
  and hash), and the SHA-256 of each part.

``restore`` goes only into an empty database (nothing signed up, no evidence, no users: a
database just created by ``db upgrade`` or the first start counts as empty) and changes
nothing when the file does not check out. It then brings the schema up to date, runs the
chain check against the checkpoint, and prints what to replay from the providers for the
time since the backup (README "Backups and restoring").

A backup holds personal data, including that of people erased after it was taken: keep
backups only as long as the notices' retention allows, and replay erasures after a restore.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from .extensions import db
from .progress import Progress

backup_cli = AppGroup("backup", help="Backups of the database and the ledger checkpoint, and restoring them.")

FORMAT = "consent-backup/1"
SQLITE_PART, PG_PART, CHECKPOINT_PART, MANIFEST = (
    "database.sqlite3", "database.pgdump", "ledger-checkpoint.json", "manifest.json",
)
PAGES_PER_STEP = 1024  # SQLite pages copied between progress updates (4 MB at 4 KB pages)


class BackupError(click.ClickException):
    """The backup cannot be made or restored; nothing was changed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _sqlite_path() -> Path | None:
    url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database has nothing to back up")
    return Path(url.database)


def _pg_args() -> tuple[list[str], dict[str, str]]:
    """libpq arguments for DATABASE_URL: the password goes by the environment, never the command line."""
    url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    args = ["--dbname", str(url.database or "")]
    if url.host:
        args += ["--host", str(url.host)]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", str(url.username)]
    return args, env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _last_line(stderr: str, code: int) -> str:
    """A tool's last word on why it failed (libpq never prints the password)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {code}"


def _head() -> dict[str, Any]:
    from .models import LedgerHead

    head = db.session.execute(select(LedgerHead.seq, LedgerHead.hash)).first()
    return {"seq": head.seq if head else 0, "hash": head.hash if head else None}


def _revision() -> list[str]:
    from alembic.runtime.migration import MigrationContext

    return sorted(MigrationContext.configure(db.session.connection()).get_current_heads())


def _copy_sqlite(source: Path, target: Path) -> None:
    with sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
        pages = src.execute("PRAGMA page_count").fetchone()[0]
        with Progress("backup", total=pages, unit="pages") as bar:
            src.backup(dst, pages=PAGES_PER_STEP, progress=lambda _status, remaining, total: bar.set(total - remaining))
    src.close()
    dst.close()


def _dump_postgresql(target: Path) -> None:
    args, env = _pg_args()
    with Progress("backup", total=None, unit="bytes") as bar:
        process = subprocess.Popen(  # noqa: S603  (no shell; the arguments come from DATABASE_URL)
            [_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(target), *args],
            env=env, stderr=subprocess.PIPE, text=True,
        )
        while process.poll() is None:
            try:
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                bar.set(target.stat().st_size if target.exists() else 0)
        bar.set(target.stat().st_size if target.exists() else 0)
        stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise BackupError(f"pg_dump failed: {_last_line(stderr, process.returncode)}")


@backup_cli.command("create")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def backup_create(path: Path) -> None:
    """Write a backup of the database and the ledger checkpoint to PATH (never over a file)."""
    if path.exists():
        raise BackupError(f"{path} exists; choose a new name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="consent-backup-", dir=path.parent) as work:
        folder = Path(work)
        # The head and revision first: the copy taken after them holds at least that head.
        head, revision = _head(), _revision()
        db.session.rollback()
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        source = _sqlite_path()
        if source is not None:
            part = folder / SQLITE_PART
            _copy_sqlite(source, part)
            backend = "sqlite"
        else:
            part = folder / PG_PART
            _dump_postgresql(part)
            backend = "postgresql"
        parts = {part.name: _sha256(part)}
        checkpoint = Path(current_app.config["LEDGER_CHECKPOINT_FILE"])
        if checkpoint.exists():
            shutil.copyfile(checkpoint, folder / CHECKPOINT_PART)
            parts[CHECKPOINT_PART] = _sha256(folder / CHECKPOINT_PART)
        manifest = {"format": FORMAT, "created_at": created_at, "backend": backend, "revision": revision,
                    "ledger_head": head, "parts": parts}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        partial = folder / "backup.tar"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
            for name in (MANIFEST, *parts):
                tar.add(folder / name, arcname=name)
        os.replace(partial, path)
    click.echo(json.dumps({"backup": str(path), "created_at": created_at, "backend": backend,
                           "ledger_head": head["seq"], "bytes": path.stat().st_size}))


def _read_backup(path: Path, folder: Path) -> dict[str, Any]:
    """The manifest, with every part extracted into ``folder`` and checked against it."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if MANIFEST not in members:
                raise BackupError(f"{path} is not a backup of this service (no manifest)")
            manifest = json.load(tar.extractfile(members[MANIFEST]) or io.BytesIO(b"{}"))
            if manifest.get("format") != FORMAT or not isinstance(manifest.get("parts"), dict):
                raise BackupError(f"{path} is not a backup this version can read")
            for name, digest in manifest["parts"].items():
                member = members.get(name)
                if name not in (SQLITE_PART, PG_PART, CHECKPOINT_PART) or member is None or not member.isfile():
                    raise BackupError(f"{path}: the part {name!r} is missing or not a file")
                with (tar.extractfile(member) or io.BytesIO()) as src, (folder / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                if _sha256(folder / name) != digest:
                    raise BackupError(f"{path}: {name} does not match its checksum; the file is damaged or altered")
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read as a backup ({type(exc).__name__})") from None
    return manifest


def _empty() -> str | None:
    """Why the configured database is not empty, or None."""
    from .models import ConsentEvent, OutboxJob, Subscription, User

    for model, what in ((Subscription, "subscriptions"), (ConsentEvent, "evidence events"), (User, "users"),
                        (OutboxJob, "outbox jobs")):
        count = db.session.execute(select(func.count()).select_from(model)).scalar_one()
        if count:
            return f"the configured database holds {count} {what}"
    return None


def _restore_sqlite(part: Path) -> None:
    target = _sqlite_path()
    assert target is not None
    db.session.remove()
    db.engine.dispose()
    staged = target.with_name(target.name + ".restoring")
    shutil.copyfile(part, staged)
    os.chmod(staged, 0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(staged, target)


def _restore_postgresql(part: Path) -> None:
    args, env = _pg_args()
    db.session.remove()
    db.engine.dispose()
    # --clean drops the empty tables the first start created; the dump recreates them with the data.
    result = subprocess.run(  # noqa: S603  (no shell; the arguments come from DATABASE_URL)
        [_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error",
         *args, str(part)],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {_last_line(result.stderr, result.returncode)}")


def _place_checkpoint(folder: Path, manifest: dict[str, Any]) -> str:
    target = Path(current_app.config["LEDGER_CHECKPOINT_FILE"])
    if CHECKPOINT_PART not in manifest["parts"]:
        return "the backup holds no checkpoint (no events had been chained)"
    if target.exists():
        return f"kept the checkpoint already at {target}; the chain check below tells whether it fits"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(folder / CHECKPOINT_PART, target)
    os.chmod(target, 0o600)
    return f"wrote the backup's checkpoint to {target}"


@backup_cli.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_restore(path: Path) -> None:
    """Restore the backup at PATH into the configured database, which must be empty."""
    from . import ledger
    from .schema import upgrade_if_needed

    with tempfile.TemporaryDirectory(prefix="consent-restore-") as work:
        folder = Path(work)
        manifest = _read_backup(path, folder)
        backend = "sqlite" if _sqlite_path() is not None else "postgresql"
        if manifest["backend"] != backend:
            raise BackupError(f"{path} is a {manifest['backend']} backup; DATABASE_URL is {backend}")
        problem = _empty()
        db.session.rollback()
        if problem:
            raise BackupError(f"{problem}; a backup is restored only into an empty database")
        if backend == "sqlite":
            _restore_sqlite(folder / SQLITE_PART)
        else:
            _restore_postgresql(folder / PG_PART)
        where = _place_checkpoint(folder, manifest)
    upgrade_if_needed()
    result = ledger.check(db.session)
    db.session.rollback()
    click.echo(where, err=True)
    since = manifest["created_at"]
    click.echo(json.dumps({"restored": str(path), "created_at": since, "chain_ok": result.ok,
                           "events": result.count, "reason": result.reason}))
    click.echo(
        "Now replay what happened since the backup (README \"Backups and restoring\"):\n"
        f"  flask --app wsgi providers poll-apsis --since {since[:10]}\n"
        "  Mailchimp sends no webhook twice: export the audience's unsubscribed and cleaned contacts\n"
        f"  changed since {since} and opt each out again (POST /api/v1/opt-outs, scope opt_out).\n"
        "  Then start the outbox worker: provider jobs from before the backup run again, harmlessly.",
        err=True,
    )
    if not result.ok:
        raise BackupError(f"the restored chain does not verify: {result.reason}")
