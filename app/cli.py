"""Command-line interface: ``flask --app wsgi <group> <command>``.

Commands print their data on stdout and their logs on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_babel import force_locale
from sqlalchemy import func, select

from . import accounts, consent, importer, ledger, outbox, report_poller, retention, service_marks, tallies
from .addresses import InvalidInput, normalise_email
from .extensions import db
from .models import ConsentEvent
from .notices import LAWFUL_BASES, get_notice
from .progress import Progress
from .service_marks import LEDGER_VERIFY_FAILED, LEDGER_VERIFY_OK, WORKER_HEARTBEAT

FC = TypeVar("FC", bound=Callable[..., Any])  # a click command, as its decorators pass it on

outbox_cli = AppGroup("outbox", help="The queue of mail sends and provider calls.")
ledger_cli = AppGroup("ledger", help="The evidence chain.")
subjects_cli = AppGroup("subjects", help="Data-subject requests: export and erasure.")
providers_cli = AppGroup("providers", help="Reading events back from the mail providers.")
users_cli = AppGroup("users", help="Dashboard accounts.")
tokens_cli = AppGroup("tokens", help="API tokens for the CRM.")
contacts_cli = AppGroup("contacts", help="Contact imports.")
retention_cli = AppGroup("retention", help="Each notice's retention periods.")
mail_cli = AppGroup("mail", help="Outgoing mail: DKIM keys.")


def _dns_name(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .config import DNS_NAME_RE

    if not DNS_NAME_RE.fullmatch(value):
        raise click.BadParameter("must be a DNS name (letters, digits, dashes, dots)")
    return value.lower()


@mail_cli.command("dkim-keygen")
@click.option("--selector", required=True, callback=_dns_name, help="The DKIM selector, e.g. nl2026.")
@click.option("--domain", required=True, callback=_dns_name, help="The signing domain (MAIL_FROM's domain).")
@click.option(
    "--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True, help="rsa is 2048-bit."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Key file (default: instance/dkim/).")
def mail_dkim_keygen(selector: str, domain: str, kind: str, out: Path | None) -> None:
    """Write a new DKIM private key and print the DNS TXT record to publish."""
    from . import dkim_signing

    path = out or Path(current_app.instance_path) / "dkim" / f"{selector}._domainkey.{domain}.pem"
    pem, tags = dkim_signing.generate_key(kind)
    try:
        dkim_signing.write_private_key(path, pem)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; choose a new selector or another --out") from None
    click.echo(dkim_signing.txt_record(selector, domain, tags))
    click.echo(
        f"key written to {path} (mode 600). Publish the record above, then set "
        f"DKIM_DOMAIN={domain} DKIM_SELECTOR={selector} DKIM_PRIVATE_KEY={path}",
        err=True,
    )


HEARTBEAT_SECONDS = 15  # well inside WORKER_HEARTBEAT_MAX_AGE (300 s), which /readyz checks


def _beat() -> None:
    """Tell /readyz and /metrics this worker is alive; a failed write never stops the work."""
    try:
        service_marks.touch(WORKER_HEARTBEAT)
        db.session.commit()
    except Exception:  # the database may be away for a moment; the next pass beats again
        db.session.rollback()
        current_app.logger.warning("the outbox worker's heartbeat could not be written", exc_info=True)


def _record_verification(ok: bool) -> None:
    """The chain check's outcome, for /metrics and its alert."""
    try:
        service_marks.touch(LEDGER_VERIFY_OK if ok else LEDGER_VERIFY_FAILED)
        db.session.commit()
    except Exception:
        db.session.rollback()
        current_app.logger.warning("the chain check's outcome could not be recorded", exc_info=True)


@outbox_cli.command("run")
@click.option("--once", is_flag=True, help="Drain what is due now, then exit.")
def outbox_run(once: bool) -> None:
    """Work through the outbox; runs until SIGTERM/SIGINT unless --once."""
    if once:
        total = 0
        _beat()
        while done := outbox.run_due():
            total += done
        ledger.sequence_pending()
        click.echo(json.dumps({"processed": total}))
        return
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # Straight to the descriptor: the signal may land while the main thread is inside a
        # buffered write to stderr, and a second buffered write there raises "reentrant call".
        os.write(2, f"signal {signum}: finishing the current job, then exiting\n".encode())
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo("outbox worker started", err=True)
    interval = current_app.config["LEDGER_CHECKPOINT_SECONDS"]
    last = {"at": 0.0}
    beat = {"at": 0.0}

    def checkpoint_if_due() -> None:
        ledger.sequence_pending()  # what the web processes left unchained
        tallies.fold_if_many()  # two rows of tallies for each opt-out since the last fold
        if time.monotonic() - beat["at"] >= HEARTBEAT_SECONDS:
            beat["at"] = time.monotonic()
            _beat()
        if time.monotonic() - last["at"] >= interval:
            last["at"] = time.monotonic()
            try:
                _checkpoint()
            except (OSError, ledger.AnchorError) as exc:  # the jobs go on; the operator must see this
                current_app.logger.error("ledger checkpoint not written: %s", exc)

    outbox.run_forever(stop, every_pass=checkpoint_if_due)
    click.echo("outbox worker stopped", err=True)


@outbox_cli.command("status")
def outbox_status() -> None:
    """Counts by state, the oldest pending job's age, dead letters."""
    click.echo(json.dumps(outbox.status(), indent=2))


@outbox_cli.command("retry")
@click.argument("job_ids", nargs=-1, type=int)
def outbox_retry(job_ids: tuple[int, ...]) -> None:
    """Put dead letters back in the queue: those named by id, or all."""
    click.echo(json.dumps({"requeued": outbox.retry_dead(list(job_ids) or None)}))


@outbox_cli.command("discard")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Discard every dead letter.")
@click.option("--actor", default="cli", show_default=True, help="Who decided; recorded as evidence.")
def outbox_discard(job_ids: tuple[int, ...], everything: bool, actor: str) -> None:
    """Give up on dead letters (recorded as evidence): those named by id, or --all."""
    if bool(job_ids) == everything:
        raise click.UsageError("name the dead letters to discard by id, or pass --all")
    click.echo(json.dumps({"discarded": outbox.discard_dead(None if everything else list(job_ids), actor)}))


def _checkpoint(create: bool = False) -> dict[str, Any]:
    """Move the signed checkpoint to the ledger's head (see ``ledger.renew_checkpoint``)."""
    try:
        return ledger.renew_checkpoint(db.session, create=create)
    finally:
        db.session.rollback()  # the reads' transaction


@ledger_cli.command("verify")
@click.option(
    "--sign-head",
    is_flag=True,
    help="Once the chain and the checkpoint verify, sign the recorded head and write the checkpoint anew "
    "(once after upgrading from a version that did not sign heads, or when the checkpoint file was lost).",
)
def ledger_verify(sign_head: bool) -> None:
    """Check the whole evidence chain, the head's signature and the signed checkpoint; name the first
    broken event. A chain that verifies moves the checkpoint to its head."""
    events = db.session.execute(select(func.max(ConsentEvent.seq))).scalar() or 0
    with Progress("verify", total=events, unit="events") as bar:
        reporting = ledger.walk_progress.set(bar.advance)
        try:
            result = ledger.sign_head(db.session) if sign_head else ledger.check(db.session)
        finally:
            ledger.walk_progress.reset(reporting)
        if result.ok:
            bar.set(result.count)
    db.session.rollback()  # the reads' transaction
    _record_verification(result.ok)
    if not result.ok:
        if result.broken_seq is None:
            click.echo(f"BROKEN: {result.reason} ({result.count} events in the chain)", err=True)
        else:
            click.echo(
                f"BROKEN at event {result.broken_seq}: {result.reason} ({result.count} events verified before it)",
                err=True,
            )
        sys.exit(1)
    if result.signed_now:
        click.echo(f"signed the recorded head (event {result.count}) with this service's key", err=True)
    click.echo(f"ok: {result.count} events verified; head {result.head}")
    try:
        _checkpoint(create=sign_head)
    except (OSError, ledger.AnchorError) as exc:
        click.echo(f"the checkpoint could not be written ({exc}); the chain itself verified", err=True)
        sys.exit(2)


@ledger_cli.command("sequence")
@click.option("--follow", is_flag=True, help="Keep chaining events as they are written, until SIGTERM/SIGINT.")
@click.option(
    "--batch",
    default=ledger.SEQUENCE_BATCH,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Events chained in one transaction.",
)
def ledger_sequence(follow: bool, batch: int) -> None:
    """Give evidence events written by requests their place in the chain (web processes do this
    after their answer, and the outbox worker on every pass; this is a dedicated sequencer)."""
    stop = threading.Event()
    if follow:
        signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
        signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    chained = 0
    while True:
        try:
            chained += ledger.sequence_pending(batch=batch)
        except Exception:
            if not follow:
                raise
            current_app.logger.exception("chaining failed; trying again")
        if not follow or stop.wait(1.0):
            break
    waiting = ledger.pending(db.session)
    db.session.rollback()
    click.echo(json.dumps({"chained": chained, "pending": waiting.count}))


@ledger_cli.command("checkpoint")
def ledger_checkpoint() -> None:
    """Record the ledger's head, signed, in LEDGER_CHECKPOINT_FILE (the outbox worker does this too)."""
    try:
        record = _checkpoint()
    except (OSError, ledger.AnchorError) as exc:
        click.echo(f"the checkpoint was not written: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(record))


def _address(email: str) -> str:
    try:
        return normalise_email(email)
    except InvalidInput:
        raise click.BadParameter("not a valid e-mail address", param_hint="EMAIL") from None


@subjects_cli.command("export")
@click.argument("email")
def subjects_export(email: str) -> None:
    """Print all data held about EMAIL as JSON."""
    data = consent.export_subject(_address(email))
    if data is None:
        click.echo("nothing is held about that address", err=True)
        sys.exit(1)
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@subjects_cli.command("erase")
@click.argument("email")
def subjects_erase(email: str) -> None:
    """Erase EMAIL everywhere (keeps a suppression entry and anonymous evidence)."""
    notices = consent.erase_subject(_address(email), consent.Facts(channel="cli", actor="cli"))
    if not notices:
        click.echo("nothing is held about that address", err=True)
        sys.exit(1)
    click.echo(json.dumps({"erased": notices}))


@providers_cli.command("poll-apsis")
@click.option("--notice", "slugs", multiple=True, help="Only these APSIS notices (repeatable); default all.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="First run only: read events from this UTC time (default 7 days back).",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 600),
    default=report_poller.DEFAULT_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for APSIS to finish the export before leaving it to the next run.",
)
def providers_poll_apsis(slugs: tuple[str, ...], since: datetime | None, wait: float) -> None:
    """Apply opt-outs, bounces and complaints from the APSIS email event export."""
    try:
        result = report_poller.poll_apsis(list(slugs) or None, since, wait)
    except report_poller.PollError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2))


def _notice_option(help_text: str) -> Callable[[FC], FC]:
    return click.option("--notice", "notices", multiple=True, required=True, metavar="SLUG", help=help_text)


@users_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(accounts.ROLES), required=True, help="What the user may do.")
@_notice_option("A notice whose controller the user works for (repeatable; at least one).")
@click.option("--password", help="Prompted for (hidden, twice) when left out.")
def users_create(email: str, role: str, notices: tuple[str, ...], password: str | None) -> None:
    """Create a dashboard user who sees and acts on the people of the given notices only."""
    try:
        accounts.check_notices(notices)  # before the prompt: a wrong notice fails at once
        if password is None:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        user = accounts.create_user(email, role, password, notices)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"created": user.email, "role": user.role, "notices": user.notices.split()}))


@users_cli.command("set-notices")
@click.argument("email")
@_notice_option("A notice whose controller the user works for (repeatable; at least one). Replaces the old list.")
def users_set_notices(email: str, notices: tuple[str, ...]) -> None:
    """Which notices' people the user sees (e.g. for an account made before accounts named notices)."""
    try:
        user = accounts.set_notices(email, notices)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"user": user.email, "notices": user.notices.split()}))


@users_cli.command("deactivate")
@click.argument("email")
def users_deactivate(email: str) -> None:
    """The user can no longer log in; every live session of theirs ends now."""
    try:
        user = accounts.deactivate_user(email)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"deactivated": user.email}))


@users_cli.command("set-password")
@click.argument("email")
@click.option("--password", help="Prompted for (hidden, twice) when left out.")
def users_set_password(email: str, password: str | None) -> None:
    """A new password; every live session of the user ends now."""
    if password is None:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        user = accounts.set_password(email, password)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"password_set": user.email}))


@tokens_cli.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(accounts.SCOPES),
    required=True,
    help="What the token may do (repeatable).",
)
@_notice_option("A notice whose people the token reaches (repeatable; at least one).")
def tokens_create(name: str, scopes: tuple[str, ...], notices: tuple[str, ...]) -> None:
    """Create an API token; its secret is printed once and never stored."""
    try:
        token = accounts.create_token(name, list(scopes), created_by="cli", notices=notices)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps(
            {
                "id": token.id,
                "name": token.name,
                "scopes": token.scopes,
                "notices": token.notices,
                "token": token.secret,
            }
        )
    )


@tokens_cli.command("list")
def tokens_list() -> None:
    """The tokens, without their secrets."""
    rows = [
        {
            "id": t.id,
            "name": t.name,
            "scopes": t.scopes.split(),
            "notices": t.notices.split(),
            "created_by": t.created_by,
            "revoked": t.revoked_at is not None,
        }
        for t in accounts.list_tokens()
    ]
    click.echo(json.dumps(rows, indent=2))


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token at once."""
    if not accounts.revoke_token(token_id, revoked_by="cli"):
        raise click.ClickException(f"no live token with id {token_id}")
    click.echo(json.dumps({"revoked": token_id}))


@contacts_cli.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--notice", "slug", required=True, help="The notice the contacts are added under.")
@click.option(
    "--basis",
    type=click.Choice(LAWFUL_BASES),
    help="Default: the notice's import basis. Only a basis the notice allows for imports is accepted.",
)
@click.option("--source", required=True, help="Where the contacts came from: a URL or a description.")
@click.option(
    "--source-date", type=click.DateTime(formats=["%Y-%m-%d"]), help="When they were collected (default today)."
)
@click.option("--proof", help="With --basis consent: where the consent is recorded.")
@click.option("--email-column", default="email", show_default=True)
@click.option("--name-column", help="The column holding the name, if any.")
@click.option("--last-contact-column", help="The column holding the date of the last dialog (YYYY-MM-DD), if any.")
@click.option(
    "--relationship-column",
    help="The column saying subscriber/prenumerant, customer/kund or prospect/prospekt"
    " (default: subscriber on consent, prospect on legitimate interest).",
)
@click.option(
    "--added-column",
    help="The column holding the date the contact was first added (YYYY-MM-DD), if any; default: today.",
)
@click.option("--dry-run", is_flag=True, help="Check everything, write nothing.")
def contacts_import(
    file: IO[bytes],
    slug: str,
    basis: str | None,
    source: str,
    source_date: datetime | None,
    proof: str | None,
    email_column: str,
    name_column: str | None,
    last_contact_column: str | None,
    relationship_column: str | None,
    added_column: str | None,
    dry_run: bool,
) -> None:
    """Import contacts from a CSV file in UTF-8 (FILE, or - for standard input).

    The whole file is checked before anything is written: a file that is not
    UTF-8 CSV is refused and changes nothing.
    """
    notice = get_notice(slug)
    if notice is None:
        raise click.BadParameter(f"no notice {slug!r}", param_hint="--notice")
    spec = importer.ImportSpec(
        notice=notice,
        email_column=email_column,
        name_column=name_column,
        lawful_basis=basis or notice.import_lawful_basis,
        source=source,
        source_date=(source_date.date() if source_date else date.today()),
        proof=proof,
        actor="cli",
        dry_run=dry_run,
        last_contact_column=last_contact_column,
        relationship_column=relationship_column,
        added_column=added_column,
    )

    try:
        spec.check()
        # Operators read the command's output in English, like its other messages.
        with force_locale("en"):
            late = spec.art14_warning(date.today())
        if late:
            click.echo(f"warning: {late}", err=True)
        with _rereadable(file) as binary:
            importer.check_file(binary)
            start = binary.tell()
            size = binary.seek(0, os.SEEK_END) - start
            binary.seek(start)
            with Progress("import", total=size, unit="bytes") as bar:
                result = importer.run_import(
                    spec, importer.TextLines(binary), lambda _result: bar.set(binary.tell() - start)
                )
    except importer.ImportError_ as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"dry_run": dry_run, **result.as_dict()}))


def _rereadable(stream: IO[bytes]) -> IO[bytes]:
    """The file itself, or for a pipe an unnamed temporary copy (gone when closed):
    the import reads the file twice, first to check it whole."""
    if stream.seekable():
        return stream
    copy = tempfile.TemporaryFile()
    shutil.copyfileobj(stream, copy, length=1024 * 1024)
    copy.seek(0)
    return copy


@retention_cli.command("purge")
@click.option("--dry-run", is_flag=True, help="List each row that would go and why (with its address); change nothing.")
def retention_purge(dry_run: bool) -> None:
    """Apply every notice's retention rules; safe to run from cron (a second run changes nothing)."""
    if dry_run:
        click.echo(json.dumps(retention.purge(dry_run=True).as_dict(), indent=2))
        return
    with Progress("purge", total=retention.due_count(), unit="rows") as bar:
        report = retention.purge(progress=bar.advance)
    click.echo(json.dumps(report.as_dict()))


def register(app: Flask) -> None:
    from .backup import backup_cli

    groups = (
        outbox_cli,
        ledger_cli,
        subjects_cli,
        providers_cli,
        users_cli,
        tokens_cli,
        contacts_cli,
        retention_cli,
        mail_cli,
        backup_cli,
    )
    for group in groups:
        app.cli.add_command(group)
