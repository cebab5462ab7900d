"""Dashboard imports: the uploaded file, and the worker job that imports it.

An upload is stored in ``instance/imports/`` (mode 0600) and described by a
``ContactImport`` row once it has been read whole and found to be UTF-8 CSV
with a header; a file that is not leaves neither file nor row behind. The
marketer maps its columns and asks for a dry run or the real import. The
outbox worker runs it in batches and writes its progress to the row after
each batch, which the dashboard page shows; the job's lease is extended as it
goes, so a long import is not taken for a dead worker's. The file is deleted
once the real import has run (or failed).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import date
from pathlib import Path
from typing import IO

from flask import current_app
from flask_babel import force_locale
from sqlalchemy import delete, update

from . import outbox
from .database import unit_of_work, wipe_free_space
from .extensions import db
from .importer import ImportError_, ImportResult, ImportSpec, TextLines, check_file, run_import
from .models import ContactImport, OutboxJob, utcnow
from .notices import get_notice

log = logging.getLogger(__name__)

JOB_KIND = "contacts_import"
MAX_COLUMNS = 200


def upload_path(import_id: int) -> Path:
    return Path(current_app.config["INSTANCE_PATH"]) / "imports" / f"{import_id}.csv"


def store_upload(stream: IO[bytes], file_name: str, notice: str, spec: dict, actor: str) -> ContactImport:
    """Keep the uploaded file and describe it; raises ImportError_ (saying why) if it is not
    UTF-8 CSV with a header, and then keeps nothing."""
    folder = Path(current_app.config["INSTANCE_PATH"]) / "imports"
    folder.mkdir(mode=0o700, exist_ok=True)
    # The row comes first: a file a crash leaves mid-upload then belongs to a
    # stale "uploaded" import, which the retention housekeeping deletes.
    with unit_of_work() as uow:
        record = ContactImport(notice=notice, file_name=file_name[:100], spec=spec, created_by=actor, columns=[])
        uow.session.add(record)
        uow.session.flush()
        import_id = record.id
    path = upload_path(import_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, length=1024 * 1024)
        # The whole body, not only the header: the worker must not find a bad
        # line half-way through an import that has already written batches.
        with path.open("rb") as binary:
            columns = check_file(binary)
    except BaseException:  # a refused file, or an upload cut off: keep nothing of it
        _forget(import_id)
        raise
    with unit_of_work() as uow:
        checked = uow.session.get(ContactImport, import_id)
        assert checked is not None
        checked.columns = columns[:MAX_COLUMNS]
    return checked


def _forget(import_id: int) -> None:
    upload_path(import_id).unlink(missing_ok=True)
    with unit_of_work() as uow:
        uow.session.execute(delete(ContactImport).where(ContactImport.id == import_id))


def discard(import_id: int, reason: str) -> None:
    upload_path(import_id).unlink(missing_ok=True)
    with unit_of_work() as uow:
        record = uow.session.get(ContactImport, import_id)
        if record is not None:
            record.state, record.error, record.finished_at = "failed", reason[:500], utcnow()


def queue(import_id: int, email_column: str, optional: dict[str, str | None], dry_run: bool) -> None:
    """Queue the dry run or the import; ``optional`` maps the name, last-contact, relationship and added-on columns."""
    with unit_of_work() as uow:
        record = uow.session.get(ContactImport, import_id, with_for_update=True)
        if record is None or record.state not in ("uploaded", "checked", "failed"):
            raise ImportError_("this import is already queued, running or done")
        if not upload_path(import_id).exists():
            raise ImportError_("the uploaded file is gone; upload it again")
        record.spec = {**record.spec, "email_column": email_column, **optional}
        record.state, record.dry_run, record.rows, record.counts, record.error = "queued", dry_run, 0, {}, None
        outbox.enqueue(
            uow.session, JOB_KIND, notice=record.notice, subscription_ref=None, payload={"import": import_id}
        )


def _spec(record: ContactImport) -> ImportSpec:
    notice = get_notice(record.notice)
    if notice is None:
        raise ImportError_(f"notice {record.notice!r} no longer exists")
    s = record.spec
    return ImportSpec(
        notice=notice,
        email_column=s["email_column"],
        name_column=s.get("name_column"),
        lawful_basis=s["lawful_basis"],
        source=s["source"],
        source_date=date.fromisoformat(s["source_date"]),
        proof=s.get("proof"),
        actor=record.created_by,
        dry_run=record.dry_run,
        last_contact_column=s.get("last_contact_column"),
        relationship_column=s.get("relationship_column"),
        added_column=s.get("added_column"),
    )


@outbox.handler(JOB_KIND)
def run_contact_import(job: outbox.ClaimedJob) -> None:
    import_id, job_id = int(job.payload.get("import", 0)), job.id
    record = db.session.get(ContactImport, import_id)
    if record is None or record.state not in ("queued", "running"):
        return
    try:
        spec = _spec(record)
    except ImportError_ as exc:
        discard(import_id, str(exc))
        return
    with force_locale("en"):  # the log is read in English; the dashboard words it for its reader
        late = spec.art14_warning(date.today())
    if late:
        log.warning("import %s: %s", import_id, late)
    def progress(result: ImportResult) -> None:
        with unit_of_work() as uow:
            uow.session.execute(
                update(ContactImport)
                .where(ContactImport.id == import_id)
                .values(state="running", rows=result.rows, counts=result.as_dict())
            )
            uow.session.execute(update(OutboxJob).where(OutboxJob.id == job_id).values(locked_until=outbox.lease_end()))

    progress(ImportResult())
    path = upload_path(import_id)
    try:
        with path.open("rb") as binary:
            result = run_import(spec, TextLines(binary), progress)
    except (ImportError_, FileNotFoundError) as exc:
        discard(import_id, str(exc) if isinstance(exc, ImportError_) else "the uploaded file is gone")
        return
    with unit_of_work() as uow:
        record = uow.session.get(ContactImport, import_id)
        assert record is not None
        record.rows, record.counts, record.finished_at = result.rows, result.as_dict(), utcnow()
        record.state = "checked" if spec.dry_run else "done"
    if not spec.dry_run:
        path.unlink(missing_ok=True)
        wipe_free_space()
    log.info("import %s (%s): %s", import_id, "dry run" if spec.dry_run else "done", result.as_dict())
