"""A contact import's rows read and checked: the part of an import that needs no database.

A CSV file is read line by line as UTF-8 (``TextLines``), split into cells, and each row's
address normalised and keyed-hashed, its name cleaned, its dates and relationship read;
rows that fail are counted as invalid, an address met before in the file as a duplicate.
What is left comes out in batches (``checked_batches``) for ``app/importer.py`` to look up
and write.

For a large file this runs in a process of its own (``main``, started by
``checking_process``): it reads the file from its standard input and writes the batches
to its standard output, so the checking of one batch overlaps the writing of the one before
on a second core (bench/README.md, contact import). It imports nothing of the app but the
address rules, so it starts in a fraction of a second.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, NamedTuple

from .addresses import InvalidInput, clean_name, hasher_for, normalise_email

# Rows per transaction: a commit costs a disk flush, and a few thousand rows hold the write
# lock for a fraction of a second (bench/README.md, contact import).
BATCH_SIZE = 5000
MAX_FIELD = 1000
csv.field_size_limit(64 * 1024)
# No CRM export has a line this long; reading one whole would only let a hostile
# upload fill the worker's memory before the field limit above is reached.
MAX_LINE = 1024 * 1024
MUST_BE_UTF8 = "the file must be CSV text in UTF-8: in Excel, save it as \u201cCSV UTF-8\u201d"
# The checking process takes the pepper of the address hash from this variable (not from its
# command line, which every user of the machine can read) and removes it at once.
PEPPER_VARIABLE = "NEWSLETTER_IMPORT_PEPPER"
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class ImportError_(ValueError):
    """The import cannot start (bad mapping, basis or file); the message says why."""


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


@dataclass(frozen=True)
class Layout:
    """What checking the rows needs, and nothing of the app: where each column is (None: not
    mapped; names are None too when the notice keeps none), the lawful basis, and the days a
    date may fall between (ISO dates). A checking process gets it as JSON."""

    email_at: int
    name_at: int | None
    contact_at: int | None
    relationship_at: int | None
    added_at: int | None
    basis: str
    earliest: str
    today: str


class Checked(NamedTuple):
    """The rows read so far and what became of them, with the next batch of new addresses
    (each with its keyed hash); ``position`` is how far into the file the reading is."""

    rows: int
    invalid: int
    duplicates: int
    position: int
    batch: list[tuple[str, Row]]


def checked_batches(
    binary: IO[bytes], layout: Layout, hasher: Callable[[str], str], batch_size: int = BATCH_SIZE
) -> Iterator[Checked]:
    """The file's rows after its header, checked, in batches of ``batch_size`` new addresses;
    the last one may be short or empty. Raises ImportError_ for a file that is not UTF-8 CSV."""
    lines = TextLines(binary)
    _header, rows = read_header(lines)
    today, earliest = date.fromisoformat(layout.today), date.fromisoformat(layout.earliest)
    basis = layout.basis

    def cell(row: list[str], at: int | None) -> str:
        return row[at][:MAX_FIELD].strip() if at is not None and at < len(row) else ""

    def day(value: str, name: str) -> datetime | None:
        """Empty, or YYYY-MM-DD from ``earliest`` on and not in the future."""
        if not value:
            return None
        try:
            found = date.fromisoformat(value[:10])
        except ValueError:
            raise InvalidInput(name, "invalid") from None
        if found > today or found < earliest:
            raise InvalidInput(name, "invalid")
        return datetime(found.year, found.month, found.day)

    def relationship(word: str) -> str:
        if not word:
            return DEFAULT_RELATIONSHIP[basis]
        found = RELATIONSHIP_WORDS.get(word.lower())
        # A subscriber asked for the newsletter; a contact who never consented cannot
        # be one, or a harvested address would escape the prospect periods.
        if found is None or (found == "subscriber" and basis != "consent"):
            raise InvalidInput("relationship", "invalid")
        return found

    count = invalid = duplicates = 0
    seen: set[str] = set()
    batch: list[tuple[str, Row]] = []
    try:
        for row in rows:
            count += 1
            try:
                email = normalise_email(cell(row, layout.email_at))
                name = clean_name(cell(row, layout.name_at)) if layout.name_at is not None else None
                checked = Row(
                    email,
                    name,
                    day(cell(row, layout.contact_at), "last_contact"),
                    relationship(cell(row, layout.relationship_at)),
                    day(cell(row, layout.added_at), "added_on"),
                )
            except InvalidInput:
                invalid += 1
                continue
            if email in seen:
                duplicates += 1
                continue
            seen.add(email)
            batch.append((hasher(email), checked))
            if len(batch) >= batch_size:
                yield Checked(count, invalid, duplicates, binary.tell(), batch)
                batch = []
    except csv.Error as exc:
        raise ImportError_(f"the file is not valid CSV near row {count + 1}: {exc}") from None
    yield Checked(count, invalid, duplicates, binary.tell(), batch)


@contextmanager
def checking_process(binary: IO[bytes], layout: Layout, pepper: bytes) -> Iterator[Iterator[Checked]]:
    """``checked_batches`` of a file with a descriptor of its own, from a process of its own,
    which reads the file from where ``binary`` stands. The process is ended on the way out,
    whatever happened."""
    os.lseek(binary.fileno(), binary.tell(), os.SEEK_SET)  # what the buffer read ahead is not skipped
    env = {**os.environ, PEPPER_VARIABLE: pepper.hex()}
    process = subprocess.Popen(  # noqa: S603  (no shell; this interpreter, this module, a JSON layout)
        # Imported by its name, not run as __main__, so that what it pickles names this module.
        [sys.executable, "-c", f"from {__name__} import main; main()", json.dumps(asdict(layout))],
        stdin=binary.fileno(),
        stdout=subprocess.PIPE,
        cwd=_PACKAGE_PARENT,
        env=env,
    )
    assert process.stdout is not None
    try:
        yield _received(process.stdout, process)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def _received(stream: IO[bytes], process: subprocess.Popen[bytes]) -> Iterator[Checked]:
    """The checking process's batches, until its last one; its refusal as ImportError_."""
    while True:
        try:
            kind, value = pickle.load(stream)  # noqa: S301  (from the process started above, running this module)
        except EOFError:
            raise RuntimeError(f"the import's checking process ended early (exit code {process.wait()})") from None
        if kind == "error":
            raise ImportError_(value)
        if kind == "end":
            return
        yield value


def main() -> None:
    """The checking process: the layout as JSON in its argument, the file on standard input,
    each batch pickled on standard output as soon as it is checked and then an end mark, or
    the file's refusal."""
    layout = Layout(**json.loads(sys.argv[1]))
    hasher = hasher_for(bytes.fromhex(os.environ.pop(PEPPER_VARIABLE)))
    out = sys.stdout.buffer
    try:
        for checked in checked_batches(sys.stdin.buffer, layout, hasher):
            pickle.dump(("batch", checked), out, pickle.HIGHEST_PROTOCOL)
            out.flush()
        pickle.dump(("end", None), out, pickle.HIGHEST_PROTOCOL)
    except ImportError_ as exc:
        pickle.dump(("error", str(exc)), out, pickle.HIGHEST_PROTOCOL)
    except BrokenPipeError:  # the import stopped (a failed batch): nothing more to say
        os._exit(1)
    out.flush()

