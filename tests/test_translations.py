"""Every string a person reads goes through the Swedish catalogue, and the catalogue is complete.

Three ways a string escapes translation, each with its check: a msgid left empty in the
catalogue; a ``_()`` added to the code or a template without the catalogue being
updated (the catalogue is compared with what ``pybabel extract`` finds in the source);
and words written straight into a template's markup instead of through ``_()``.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from jinja2 import Environment

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "app" / "translations" / "sv" / "LC_MESSAGES"
TEMPLATES = ROOT / "templates"

# Words that are the same in every language the pages speak: the language switch names
# each language in itself, and UTC is UTC.
SAME_IN_EVERY_LANGUAGE = {"English", "Svenska", "UTC"}
# Attributes whose text a person reads or hears (screen readers).
READ_ATTRIBUTES = {"alt", "title", "aria-label", "placeholder"}
WORD = re.compile(r"[A-Za-zÅÄÖåäöÉé][A-Za-zÅÄÖåäöÉé'-]+")


def _catalogue() -> dict[str, str]:
    with open(CATALOGUE / "messages.po", "rb") as fh:
        return {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in read_po(fh) if m.id}


def test_every_message_has_a_swedish_translation():
    with open(CATALOGUE / "messages.po", "rb") as fh:
        catalogue = read_po(fh)
    untranslated = [m.id for m in catalogue if m.id and not m.string]
    fuzzy = [m.id for m in catalogue if m.id and m.fuzzy]
    assert untranslated == []
    assert fuzzy == []


def _key(value: object) -> object:
    # A plural message is a list of forms in the .po reader and a tuple in the .mo reader.
    return tuple(value) if isinstance(value, list | tuple) else value


def test_compiled_catalogue_matches_the_po_file():
    with open(CATALOGUE / "messages.po", "rb") as fh:
        source = {_key(m.id): _key(m.string) for m in read_po(fh) if m.id}
    compiled = {
        _key(m.id): _key(m.string) for m in read_mo(BytesIO((CATALOGUE / "messages.mo").read_bytes())) if m.id
    }
    assert compiled == source


def test_every_message_in_the_source_is_in_the_catalogue():
    """A ``_()`` added without updating the catalogue would show English on a Swedish page."""
    method_map = [("app/**.py", "python"), ("templates/**.html", "jinja2"), ("templates/**.txt", "jinja2")]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None, "_l": None}
    found = {
        message if isinstance(message, str) else message[0]
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, keywords=keywords, options_map={"templates/**": {}}
        )
    }
    missing = sorted(found - set(_catalogue()))
    assert missing == [], "run pybabel extract/update (README, Translations) and translate these"


class _ReadText(HTMLParser):
    """The words of a template's markup a person reads, with every Jinja expression removed."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "code"):  # a command or a code reads the same in every language
            self._hidden += 1
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value:
                self.words += WORD.findall(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "code"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.words += WORD.findall(data)


def _literal_words(path: Path) -> list[str]:
    env = Environment(extensions=["jinja2.ext.i18n"], autoescape=True)  # only lexed, never rendered
    # Keep the template's own text; each {{ }} and {% %} becomes an empty gap.
    text = "".join(value for _line, kind, value in env.lex(path.read_text(encoding="utf-8")) if kind == "data")
    if path.suffix == ".txt":
        return WORD.findall(text)
    reader = _ReadText()
    reader.feed(text)
    return reader.words


def test_no_template_writes_words_outside_the_catalogue():
    leaks = {
        str(path.relative_to(ROOT)): words
        for path in sorted(TEMPLATES.rglob("*"))
        if path.suffix in (".html", ".txt")
        and (words := [w for w in _literal_words(path) if w not in SAME_IN_EVERY_LANGUAGE])
    }
    assert leaks == {}
