"""Contact import: a CSV streamed in batches, checked against suppressions.

Each imported contact needs a lawful basis with its proof: ``consent`` with a
reference to where the consent is recorded, or ``legitimate_interest`` (B2B
contacts, e.g. collected from a company's public web page) with the source.
Addresses that opted out (a suppression entry) are skipped and counted, as are
addresses already held and rows without a valid address. A dry run reads and
checks everything and writes nothing. Each batch commits on its own, so a
large file neither holds one long transaction nor keeps rows in memory; that
is why ``check_file`` reads a file whole before any batch is written: a file
that is not UTF-8 CSV is refused before it can stop an import half-way.

The notice limits the bases an import may use (``import_lawful_bases``), and
the basis sets the retention facts: a contact imported with proof of consent
is a subscriber (kept while they subscribe), one imported on legitimate
interest a prospect (kept for the prospect periods), unless a relationship
column says otherwise. An "added on" column keeps the day a contact was first
added elsewhere (the CRM), which starts the prospect clock.

Where the notice says so (``inform_imported``), a contact not collected from
the person gets the GDPR Art. 14 information mail, with its unsubscribe link.
Art. 14(3)(a) gives one month from obtaining the data for that mail: an import
whose source date is older still runs (the people must be informed all the
more), but ``late_for_art14`` words the warning the CLI and the dashboard show,
and ``uninformed_contacts`` lists who has still not been sent the mail (as far as
the evidence, kept since ``art14_evidence_since``, can tell).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import IO, Any, NamedTuple

from flask_babel import gettext
from sqlalchemy import ColumnElement, exists, func, select

from . import ledger, outbox, provider_sync, tallies
from .addresses import InvalidInput, clean_name, email_hasher, normalise_email
from .consent import EARLIEST_CONTACT
from .consent.records import INSERT_SUBSCRIPTION
from .database import UnitOfWork, unit_of_work
from .extensions import db
from .ledger import Evidence
from .models import HELD_ON_INTEREST, ConsentEvent, ServiceMark, Subscription, new_refs, utcnow
from .notices import LAWFUL_BASES, Notice
from .vocabulary import LawfulBasis

log = logging.getLogger(__name__)

# Rows per transaction: a commit costs a disk flush, and a few thousand rows hold the write
# lock for a fraction of a second (bench/README.md, contact import).
BATCH_SIZE = 5000
# Rows read before any is written: the window is written in the order of the addresses' keyed
# hashes, so each batch's keys land close together in the (hash, notice) index instead of one
# to a page all over it (bench/README.md, contact import).
WINDOW_SIZE = 100_000
ART14 = "art14"  # the information mail to people whose data was not collected from them
ART14_INFORMED = "art14_informed"  # the evidence that the mail was handed to a mail server
IMPORT_SOURCE_PREFIX = "import: "  # how an imported subscription's source begins
MAX_FIELD = 1000
csv.field_size_limit(64 * 1024)
# No CRM export has a line this long; reading one whole would only let a hostile
# upload fill the worker's memory before the field limit above is reached.
MAX_LINE = 1024 * 1024
MUST_BE_UTF8 = "the file must be CSV text in UTF-8: in Excel, save it as \u201cCSV UTF-8\u201d"


class ImportError_(ValueError):
    """The import cannot start (bad mapping, basis or file); the message says why."""


@dataclass(frozen=True)
class ImportSpec:
    notice: Notice
    email_column: str
    name_column: str | None
    lawful_basis: str
    source: str  # a URL or a description: where the contacts came from
    source_date: date
    proof: str | None  # for consent: where the consent is recorded
    actor: str
    dry_run: bool = False
    # Optional columns for the retention rules (dates as YYYY-MM-DD): the last
    # dialog with the contact; the day they were first added (default: the day
    # of the import); and whether they are a subscriber, a customer or a
    # prospect (default by basis, see DEFAULT_RELATIONSHIP).
    last_contact_column: str | None = None
    relationship_column: str | None = None
    added_column: str | None = None

    @property
    def informs_under_art14(self) -> bool:
        """Whether the import sends the Art. 14 mail: the contacts were not collected from the
        person (Art. 14 applies, not Art. 13) and the notice has this service inform them."""
        return self.notice.inform_imported and self.lawful_basis != LawfulBasis.CONSENT

    def art14_warning(self, today: date, *, before_import: bool = False) -> str | None:
        """``late_for_art14`` for this import, when it sends the Art. 14 mail; worded as what
        will happen for a dry run or ``before_import`` (an upload not yet mapped), as what
        happens now for a real import."""
        if not self.informs_under_art14:
            return None
        return late_for_art14(self.source_date, today, importing=not (self.dry_run or before_import))

    def check(self) -> None:
        if self.lawful_basis not in LAWFUL_BASES:
            raise ImportError_(f"lawful basis must be one of {', '.join(LAWFUL_BASES)}")
        allowed = self.notice.import_lawful_bases
        if self.lawful_basis not in allowed:
            raise ImportError_(
                f"the {self.notice.controller['name']} notice allows imports only on {' or '.join(allowed)},"
                f" not on {self.lawful_basis}"
            )
        if self.lawful_basis == "consent" and not (self.proof or "").strip():
            raise ImportError_("an import on consent needs a reference to the proof of that consent")
        if not self.source.strip() or len(self.source) > 400:
            raise ImportError_("give the source of the contacts (a URL or a description, at most 400 characters)")
        if self.source_date > date.today():
            raise ImportError_("the source date cannot be in the future")


def one_month_after(day: date) -> date:
    """The same day of the next month, or that month's last day (31 January -> 28 or 29 February)."""
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return date(year, month, min(day.day, (following - timedelta(days=1)).day))


def late_for_art14(source_date: date, today: date, *, importing: bool = True) -> str | None:
    """The warning for contacts obtained more than one month before ``today``, else None.

    GDPR Art. 14(3)(a): people whose data was not collected from them are informed
    within a reasonable period, at the latest within one month of obtaining it. The
    text is translated (the request's language, or ``force_locale``) for the dashboard.
    ``importing`` False words it for a dry run or an upload: nothing is imported or
    mailed yet, so it says what to do rather than what is happening.
    """
    deadline = one_month_after(source_date)
    if today <= deadline:
        return None
    if not importing:
        return gettext(
            "The contacts were obtained on %(day)s, more than one month ago: the deadline of GDPR Art. 14(3)(a)"
            " to inform them, one month after obtaining their data, passed on %(deadline)s. Inform them as soon"
            " as they are imported (the import sends the Art. 14 mail), and record why it was late.",
            day=source_date.isoformat(),
            deadline=deadline.isoformat(),
        )
    return gettext(
        "The contacts were obtained on %(day)s, more than one month ago: the deadline of GDPR Art. 14(3)(a)"
        " to inform them, one month after obtaining their data, passed on %(deadline)s. They are imported"
        " all the same and the Art. 14 mail goes out now, late; record why it was late.",
        day=source_date.isoformat(),
        deadline=deadline.isoformat(),
    )


@dataclass(frozen=True)
class Uninformed:
    """An imported contact who has not been sent the Art. 14 mail."""

    ref: str
    notice: str
    email: str
    imported_at: datetime
    days_since: int


ART14_EVIDENCE_SINCE = "art14_evidence_since"  # the service mark: from when the evidence is recorded


def art14_evidence_since() -> datetime | None:
    """From when ``art14_informed`` evidence is recorded (migration 0007 sets it at upgrade).

    Earlier code sent the mail and recorded nothing, so a contact imported before this
    time without evidence may well have been informed. None when the mark is missing
    (a database emptied by hand): every import is then read as recorded.
    """
    mark = db.session.get(ServiceMark, ART14_EVIDENCE_SINCE)
    return mark.at if mark is not None else None


def _without_evidence(notices: list[str]) -> list[ColumnElement[bool]]:
    """Imported on legitimate interest, still held and subscribed, with no ``art14_informed``
    event (read from the ledger through its (subscription_ref, type, at) index)."""
    informed = exists().where(ConsentEvent.subscription_ref == Subscription.ref, ConsentEvent.type == ART14_INFORMED)
    return [
        Subscription.notice.in_(notices),
        HELD_ON_INTEREST,  # legitimate interest, subscribed: read through their own index
        Subscription.source.startswith(IMPORT_SOURCE_PREFIX, autoescape=True),
        ~informed,
    ]


def uninformed_contacts(slugs: Iterable[str], older_than_days: int = 25, limit: int = 50) -> list[Uninformed]:
    """Contacts imported on legitimate interest at least ``older_than_days`` ago, still held and
    subscribed, with no ``art14_informed`` evidence: the oldest first, at most ``limit``.

    25 days leaves time to act before the month of Art. 14(3)(a) is out. The import
    time is ``confirmed_at``, which the import writes (``created_at`` may be the day
    the CRM first added the contact). Only imports from ``art14_evidence_since`` on are
    listed: before it, no evidence was kept, and ``unknown_if_informed`` counts those.
    """
    notices = list(slugs)
    if not notices:
        return []
    now = utcnow()
    since = art14_evidence_since()
    recorded = [Subscription.confirmed_at >= since] if since is not None else []
    rows = db.session.execute(
        select(Subscription.ref, Subscription.notice, Subscription.email, Subscription.confirmed_at)
        .where(
            *_without_evidence(notices),
            *recorded,
            Subscription.confirmed_at <= now - timedelta(days=older_than_days),
        )
        .order_by(Subscription.confirmed_at, Subscription.id)
        .limit(limit)
    ).all()
    return [
        Uninformed(ref, notice, email, imported_at, (now - imported_at).days)
        for ref, notice, email, imported_at in rows
        if imported_at is not None
    ]


def unknown_if_informed(slugs: Iterable[str]) -> int:
    """How many contacts imported before ``art14_evidence_since`` have no ``art14_informed``
    event: the code of the time sent their mail without recording it, so whether they were
    informed is known only to the mail server's log, not here."""
    notices = list(slugs)
    since = art14_evidence_since()
    if not notices or since is None:
        return 0
    before = select(func.count()).select_from(Subscription)
    before = before.where(*_without_evidence(notices), Subscription.confirmed_at < since)
    return int(db.session.execute(before).scalar_one())


@dataclass
class ImportResult:
    rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, **{k: self.counts.get(k, 0) for k in ("added", *SKIPS)}}


SKIPS = ("skipped_suppressed", "skipped_existing", "skipped_duplicate_in_file", "skipped_invalid")


class TextLines:
    """A CSV file's lines as text for the csv module, from its bytes.

    Decoded line by line (a UTF-8 sequence never holds a newline byte), so an
    error names the line: not UTF-8, a NUL byte (UTF-16 or binary; PostgreSQL
    could not store it either), or longer than MAX_LINE. Line ends are kept,
    and a lone CR ends a line too, as in universal-newline text mode.
    """

    def __init__(self, binary: IO[bytes]) -> None:
        self.binary = binary
        self.number = 0  # the physical line last read

    def __iter__(self) -> Iterator[str]:
        while raw := self.binary.readline(MAX_LINE + 1):
            self.number += 1
            if len(raw) > MAX_LINE:
                raise ImportError_(f"line {self.number} is longer than {MAX_LINE // 2**20} MiB; {MUST_BE_UTF8}")
            if b"\x00" in raw:
                raise ImportError_(
                    f"line {self.number} holds a NUL byte (a \u201cUnicode text\u201d export is UTF-16); {MUST_BE_UTF8}"
                )
            if self.number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImportError_(
                    f"line {self.number} is not UTF-8 (a plain \u201cCSV\u201d export from Excel is usually"
                    f" Windows-1252); {MUST_BE_UTF8}"
                ) from None
            if "\r" not in text or (text.count("\r") == 1 and text.endswith("\r\n")):
                yield text  # one line, as nearly every line is: no split to make
            else:
                yield from (piece for piece in _LONE_CR.split(text) if piece)


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def check_file(binary: IO[bytes]) -> list[str]:
    """Read a whole file before anything is written; its header's columns. Rewinds it.

    Raises ImportError_ for anything that would stop the import part-way, so a
    bad file is refused having changed nothing.
    """
    lines = TextLines(binary)
    try:
        header, rows = read_header(lines)
        for _row in rows:
            pass
    except csv.Error as exc:
        raise ImportError_(f"the file is not valid CSV at line {lines.number}: {exc}") from None
    binary.seek(0)
    return header


def read_header(lines: Iterable[str]) -> tuple[list[str], Iterator[list[str]]]:
    """The header row and the rest of the rows, from a text stream (``,`` or ``;``)."""
    iterator = iter(lines)
    first = next(iterator, "")
    delimiter = ";" if first.count(";") > first.count(",") else ","
    header = next(csv.reader([first], delimiter=delimiter), [])
    header = [h.strip().lstrip("\ufeff") for h in header]
    if not header or not any(header):
        raise ImportError_("the file has no header row")

    def rows() -> Iterator[list[str]]:
        yield from csv.reader(iterator, delimiter=delimiter)

    return header, rows()


def run_import(
    spec: ImportSpec, lines: Iterable[str], progress: Callable[[ImportResult], None] | None = None
) -> ImportResult:
    """Import the rows of ``lines`` (best a ``TextLines`` of a file ``check_file`` passed)."""
    spec.check()
    try:
        header, rows = read_header(lines)
    except csv.Error as exc:
        raise ImportError_(f"the header row is not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        raise ImportError_(MUST_BE_UTF8) from None
    try:
        email_at = header.index(spec.email_column)
    except ValueError:
        raise ImportError_(f"no column named {spec.email_column!r} (columns: {', '.join(header)})") from None
    name_at = _column(header, spec.name_column)
    contact_at = _column(header, spec.last_contact_column)
    relationship_at = _column(header, spec.relationship_column)
    added_at = _column(header, spec.added_column)
    today = date.today()

    def cell(row: list[str], at: int | None) -> str:
        return row[at][:MAX_FIELD].strip() if at is not None and at < len(row) else ""

    result = ImportResult()
    seen: set[str] = set()
    hasher = email_hasher()
    window: list[tuple[str, Row]] = []

    def write(window: list[tuple[str, Row]]) -> None:
        window.sort(key=_first)
        for at in range(0, len(window), BATCH_SIZE):
            _import_batch(spec, window[at : at + BATCH_SIZE], result)
            if progress:
                progress(result)

    try:
        for row in rows:
            result.rows += 1
            try:
                email = normalise_email(cell(row, email_at))
                name = clean_name(cell(row, name_at)) if "name" in spec.notice.fields else None
                last_contact = _date(cell(row, contact_at), today, "last_contact")
                added = _date(cell(row, added_at), today, "added_on")
                relationship = _relationship(cell(row, relationship_at), spec.lawful_basis)
            except InvalidInput:
                result.counts["skipped_invalid"] += 1
                continue
            if email in seen:
                result.counts["skipped_duplicate_in_file"] += 1
                continue
            seen.add(email)
            window.append((hasher(email), Row(email, name, last_contact, relationship, added)))
            if len(window) >= WINDOW_SIZE:
                write(window)
                window = []
    except csv.Error as exc:
        raise ImportError_(f"the file is not valid CSV near row {result.rows + 1}: {exc}") from None
    except UnicodeDecodeError:
        raise ImportError_(f"row {result.rows + 1}: {MUST_BE_UTF8}") from None
    write(window)
    tallies.fold_if_many()  # on SQLite, a row of tallies for each contact added
    if progress:
        progress(result)
    return result


class Row(NamedTuple):
    email: str
    name: str | None
    last_contact: datetime | None
    relationship: str
    added: datetime | None


RELATIONSHIP_WORDS = {
    "subscriber": "subscriber",
    "prenumerant": "subscriber",
    "prospect": "prospect",
    "prospekt": "prospect",
    "customer": "customer",
    "kund": "customer",
}
# Someone whose consent we hold is kept while they subscribe, as the notices
# promise; someone taken from a public page on legitimate interest is a
# prospect, kept only for the prospect periods.
DEFAULT_RELATIONSHIP = {"consent": "subscriber", "legitimate_interest": "prospect"}


def _relationship(word: str, basis: str) -> str:
    if not word:
        return DEFAULT_RELATIONSHIP[basis]
    relationship = RELATIONSHIP_WORDS.get(word.lower())
    # A subscriber asked for the newsletter; a contact who never consented cannot
    # be one, or a harvested address would escape the prospect periods.
    if relationship is None or (relationship == "subscriber" and basis != "consent"):
        raise InvalidInput("relationship", "invalid")
    return relationship


def _column(header: list[str], name: str | None) -> int | None:
    if not name:
        return None
    if name not in header:
        raise ImportError_(f"no column named {name!r}")
    return header.index(name)


def _date(value: str, today: date, name: str) -> datetime | None:
    """A date from a cell: empty, or YYYY-MM-DD from EARLIEST_CONTACT on and not in the future."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        raise InvalidInput(name, "invalid") from None
    if day > today or day < EARLIEST_CONTACT.date():
        raise InvalidInput(name, "invalid")
    return datetime(day.year, day.month, day.day)


def _first(pair: tuple[str, Row]) -> str:
    return pair[0]


def _import_batch(spec: ImportSpec, batch: list[tuple[str, Row]], result: ImportResult) -> None:
    """One transaction: the batch's suppressed and held addresses looked up in one query each,
    then the new subscriptions, their chained ``imported`` events and their jobs written as
    one multi-row statement each (the driver's own call, ``app/fastpath.py``)."""
    notice = spec.notice
    hashed = dict(batch)  # keyed hash: row
    with unit_of_work() as uow:
        suppressed = _among(uow, "suppressions", notice.slug, list(hashed))
        held = _among(uow, "subscriptions", notice.slug, list(hashed))
        result.counts["skipped_suppressed"] += len(suppressed)
        result.counts["skipped_existing"] += len(held - suppressed)
        fresh = [(h, row) for h, row in hashed.items() if h not in suppressed and h not in held]
        result.counts["added"] += len(fresh)
        if spec.dry_run or not fresh:
            uow.session.rollback()
            return
        now = utcnow()
        source = f"{IMPORT_SOURCE_PREFIX}{spec.source} ({spec.source_date.isoformat()})"[:500]
        subs: list[dict[str, Any]] = [
            {
                "ref": ref,
                "notice": notice.slug,
                "email": row.email,
                "email_hash": h,
                "name": row.name,
                "relationship": row.relationship,
                "last_contact_at": row.last_contact,
                "status": "subscribed",
                "lang": notice.languages[0],
                "source": source,
                "lawful_basis": spec.lawful_basis,
                "notice_version": notice.version,
                "confirmed_at": now,
                "updated_at": now,
                # The day the contact was first added, elsewhere if the file says
                # so: the prospect-without-dialog period counts from it.
                "created_at": row.added or now,
            }
            for ref, (h, row) in zip(new_refs(len(fresh)), fresh, strict=True)
        ]
        tallies.insert_many(uow, INSERT_SUBSCRIPTION, subs)
        common = {
            "lawful_basis": spec.lawful_basis,
            "source": spec.source,
            "source_date": spec.source_date.isoformat(),
            "proof": spec.proof,
            "actor": spec.actor,
            "collected_from_person": spec.lawful_basis == "consent",
        }
        # One facts mapping per relationship and day added, shared by the events that have them
        # (the ledger encodes each mapping once).
        facts: dict[tuple[str, datetime | None], dict[str, Any]] = {}
        for _h, row in fresh:
            if (row.relationship, row.added) not in facts:
                facts[(row.relationship, row.added)] = {
                    **common,
                    "relationship": row.relationship,
                    **({"added_on": row.added.date().isoformat()} if row.added else {}),
                }
        ledger.append(
            uow,
            [
                Evidence.under(
                    "imported", notice, sub["ref"], "import", facts[(row.relationship, row.added)],
                    details={"email": sub["email"]},
                )
                for sub, (_h, row) in zip(subs, fresh, strict=True)
            ],
        )  # fmt: skip
        # One payload and one time shared by the batch's jobs: the driver's values are made once
        # for each distinct object (app/fastpath.py), not once a row.
        sync = {"kind": provider_sync.CONSENT_JOB, "notice": notice.slug, "payload": {}, "next_attempt_at": now}
        jobs: list[dict[str, Any]] = [{**sync, "subscription_ref": sub["ref"], "created_at": now} for sub in subs]
        if notice.inform_imported and spec.lawful_basis != "consent":
            inform = {**sync, "kind": "mail", "payload": {"template": ART14}}
            jobs += [{**inform, "subscription_ref": sub["ref"], "created_at": now} for sub in subs]
        # The worker sends the mail and the syncs; nothing leaves from inside an import.
        outbox.enqueue_many(uow, jobs)


def _among(uow: UnitOfWork, table: str, notice: str, hashes: list[str]) -> set[str]:
    """Which of ``hashes`` the table holds under ``notice``: the list goes as one parameter (a
    JSON array that SQLite unpacks, a comma-separated text that PostgreSQL splits), where an
    expanded ``IN`` of 5,000 placeholders costs more to write out than the lookup itself, and
    psycopg's dumping of a 5,000-element array about as much (hex digits hold no comma)."""
    postgresql = uow.dialect.name == "postgresql"
    listed = ",".join(hashes) if postgresql else json.dumps(hashes)
    found = uow.conn.exec_driver_sql(_HELD_AMONG[(table, postgresql)], (notice, listed))
    return set(found.scalars())


_HELD_AMONG = {
    ("suppressions", True):
        "SELECT email_hash FROM suppressions WHERE notice = %s AND email_hash = ANY(string_to_array(%s, ','))",
    ("subscriptions", True):
        "SELECT email_hash FROM subscriptions WHERE notice = %s AND email_hash = ANY(string_to_array(%s, ','))",
    ("suppressions", False):
        "SELECT email_hash FROM suppressions WHERE notice = ? AND email_hash IN (SELECT value FROM json_each(?))",
    ("subscriptions", False):
        "SELECT email_hash FROM subscriptions WHERE notice = ? AND email_hash IN (SELECT value FROM json_each(?))",
}  # fmt: skip

