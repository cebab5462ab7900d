"""The committed Swedish catalogue is complete and compiled from its source."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

CATALOGUE = Path(__file__).resolve().parent.parent / "app" / "translations" / "sv" / "LC_MESSAGES"


def test_every_message_has_a_swedish_translation():
    with open(CATALOGUE / "messages.po", "rb") as fh:
        catalogue = read_po(fh)
    untranslated = [m.id for m in catalogue if m.id and not m.string]
    assert untranslated == []


def test_compiled_catalogue_matches_the_po_file():
    with open(CATALOGUE / "messages.po", "rb") as fh:
        source = {m.id: m.string for m in read_po(fh) if m.id}
    compiled = {m.id: m.string for m in read_mo(BytesIO((CATALOGUE / "messages.mo").read_bytes())) if m.id}
    assert compiled == source
