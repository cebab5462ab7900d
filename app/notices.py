"""Privacy notices as data: load, validate, and version them.

A notice file holds one controller's identity, what its newsletter collects,
its provider, its opt-out rule and retention periods, and the text shown at
sign-up. The version is the SHA-256 of the shown text and the rules, so the
evidence can say exactly what a person saw. Provider ids are configuration,
not something the person is shown, and are left out of the version.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app
from pydantic import ValidationError

from .notice_schema import LANGUAGES, LAWFUL_BASES, Block, NoticeFile, body_blocks, legacy_body_blocks, refusals
from .vocabulary import OptOutRule

__all__ = [
    "LANGUAGES",
    "LAWFUL_BASES",
    "TEXT_FORMAT",
    "Block",
    "Notice",
    "NoticeError",
    "Transfer",
    "blocks_of",
    "get_notice",
    "load_notices",
    "notice_for_provider",
    "notices",
    "parse_notice",
    "version_of",
]

# How the bodies mark their headings ("## " lines, see ``notice_schema.body_blocks``),
# stored with every version. Versions stored before it marked none: there a block's
# first line was its heading, and ``legacy_body_blocks`` reads them back.
TEXT_FORMAT = "marked-headings"

class NoticeError(ValueError):
    """A notice file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Transfer:
    """A transfer of the data outside the EU/EEA, as a notice states it (``[[transfers]]``).

    ``safeguard`` and ``fallback`` are the codes of ``notice_schema.SAFEGUARDS``;
    ``fallback`` is what the controller relies on if ``safeguard`` falls away.
    """

    recipient: str
    country: str  # ISO 3166-1 alpha-2
    safeguard: str
    fallback: str | None = None

    @classmethod
    def from_stored(cls, table: Mapping[str, Any]) -> Transfer:
        """A transfer as a stored notice version holds it (the file's table)."""
        fallback = table.get("fallback")
        return cls(
            recipient=str(table.get("recipient", "")).strip(),
            country=str(table.get("country", "")),
            safeguard=str(table.get("safeguard", "")),
            fallback=str(fallback) if fallback else None,
        )


@dataclass(frozen=True)
class Notice:
    slug: str
    languages: tuple[str, ...]
    controller: Mapping[str, str]
    fields: tuple[str, ...]
    required: tuple[str, ...]
    lawful_basis: str
    opt_out_rule: str
    retention: Mapping[str, int]
    texts: Mapping[str, Mapping[str, str]]
    provider: Mapping[str, str]
    shown: Mapping[str, Any] = field(repr=False)
    inform_imported: bool = False  # imported contacts get the GDPR Art. 14 information mail
    import_lawful_basis: str = "consent"  # the basis an import uses unless told otherwise
    import_lawful_bases: tuple[str, ...] = ("consent",)  # the only bases an import may use
    # Outside the EU/EEA. Only a file that says ``transfers = []`` or has ``[[transfers]]``
    # makes a statement (``transfers_stated``): a file without the key claims nothing, and
    # every surface then leaves the subject out rather than say "not transferred".
    transfers: tuple[Transfer, ...] = ()
    transfers_stated: bool = False
    version: str = ""

    def text(self, lang: str) -> Mapping[str, str]:
        return self.texts.get(lang) or self.texts[self.languages[0]]

    @property
    def purpose(self) -> str:
        return str(self.shown["collection"].get("purpose", "newsletter"))

    @property
    def deletes_on_opt_out(self) -> bool:
        return self.opt_out_rule == OptOutRule.DELETE


def blocks_of(body: str, text_format: object) -> tuple[Block, ...]:
    """A body's headings and paragraphs, read as the version that holds it wrote them."""
    return body_blocks(body) if text_format == TEXT_FORMAT else legacy_body_blocks(body)


def version_of(shown: Mapping[str, Any]) -> str:
    canonical = json.dumps(shown, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_notice(path: Path, overrides: Mapping[str, str]) -> Notice:
    """Read one notice file, check it against ``NoticeFile``, and build its ``Notice``.

    ``overrides`` holds the ``<SLUG>_<KEY>`` provider ids set in the environment.
    """
    where = path.name
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise NoticeError(f"{where}: not valid TOML ({exc})") from None
    try:
        checked = NoticeFile.model_validate(raw, context={"stem": path.stem, "overrides": overrides})
    except ValidationError as exc:
        raise NoticeError(f"{where}: " + "; ".join(refusals(exc))) from None

    languages = tuple(lang.value for lang in checked.languages)
    texts = {lang.value: checked.text[lang].model_dump() for lang in checked.languages}
    # What the person is shown or bound by: text, controller, rules, and who
    # receives the data (the provider kind) - but not the provider's ids. The
    # tables are taken as the file writes them, not as the schema reads them
    # (with its defaults), so a version depends on the file alone.
    shown = {
        "slug": checked.slug,
        "controller": raw["controller"],
        "collection": raw["collection"],
        "opt_out": raw["opt_out"],
        "retention": raw.get("retention") or {},
        "provider_kind": checked.provider.kind,
        "site": raw.get("site") or {},
        "text_format": TEXT_FORMAT,
        "text": texts,
    }
    # Where the data goes outside the EU/EEA and on what safeguard: a rule the person is
    # told. ``transfers = []`` says that nothing is transferred; a file without the key
    # says nothing, and its version holds no "transfers" either (as versions stored
    # before notices stated them), so no page speaks for it.
    stated = "transfers" in raw
    if stated:
        shown["transfers"] = raw["transfers"]
    collection = checked.collection
    return Notice(
        slug=checked.slug,
        languages=languages,
        controller=raw["controller"],
        fields=tuple(collection.fields),
        required=tuple(collection.required),
        lawful_basis=collection.lawful_basis.value,
        opt_out_rule=checked.opt_out.rule.value,
        retention=shown["retention"],
        texts=texts,
        provider=checked.provider.model_dump(exclude_unset=True),
        shown=shown,
        version=version_of(shown),
        inform_imported=collection.inform_imported,
        import_lawful_basis=collection.import_basis.value,
        import_lawful_bases=tuple(basis.value for basis in collection.import_bases),
        transfers=tuple(
            Transfer(recipient=t.recipient, country=t.country, safeguard=t.safeguard, fallback=t.fallback)
            for t in checked.transfers
        ),
        transfers_stated=stated,
    )


def load_notices(directory: str | Path, overrides: Mapping[str, str]) -> dict[str, Notice]:
    """Every notice file in ``directory``, by slug; ``overrides`` as for ``parse_notice``."""
    paths = sorted(Path(directory).glob("*.toml"))
    if not paths:
        raise NoticeError(f"no notice files (*.toml) in {directory}")
    notices = {}
    for path in paths:
        notice = parse_notice(path, overrides)
        notices[notice.slug] = notice
    return notices


# --- the notices this service runs with (loaded once at start-up) -------------


def notices() -> dict[str, Notice]:
    return current_app.extensions["notices"]


def get_notice(slug: object) -> Notice | None:
    return notices().get(slug) if isinstance(slug, str) else None


def notice_for_provider(kind: str, **ids: str) -> Notice | None:
    """The notice whose provider settings match, e.g. ``list_id`` for Mailchimp."""
    for notice in notices().values():
        if notice.provider["kind"] == kind and all(notice.provider.get(k) == v for k, v in ids.items()):
            return notice
    return None
