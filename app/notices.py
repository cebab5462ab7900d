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
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app

from .vocabulary import Language, LawfulBasis, OptOutRule, values

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
LANGUAGES = values(Language)
FIELDS = ("email", "name")
OPT_OUT_RULES = values(OptOutRule)
LAWFUL_BASES = values(LawfulBasis)
PROVIDER_KEYS = {"mailchimp": ("list_id",), "apsis": ("section", "topic", "keyspace")}
# Optional provider settings, also overridable as <SLUG>_<KEY>: Mailchimp's
# GDPR marketing permission ids (comma-separated) and the APSIS attribute
# version ids that hold the address, the name, and our unsubscribe and manage
# links (for newsletters to carry) in the notice's section.
OPTIONAL_PROVIDER_KEYS = {
    "mailchimp": ("marketing_permissions",),
    "apsis": ("email_attribute", "name_attribute", "unsubscribe_url_attribute", "manage_url_attribute"),
}
TEXT_KEYS = ("title", "summary", "consent_label", "body")
RETENTION_KEYS = (
    "unconfirmed_days",
    "unsubscribed_days",
    "prospect_without_dialog_days",
    "prospect_with_dialog_days",
    "customer_review_days",
    "evidence_days",
)


class NoticeError(ValueError):
    """A notice file is malformed; the message names the file and the key."""


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
    version: str = ""

    def text(self, lang: str) -> Mapping[str, str]:
        return self.texts.get(lang) or self.texts[self.languages[0]]

    @property
    def purpose(self) -> str:
        return str(self.shown["collection"].get("purpose", "newsletter"))

    @property
    def deletes_on_opt_out(self) -> bool:
        return self.opt_out_rule == "delete"


def version_of(shown: Mapping[str, Any]) -> str:
    canonical = json.dumps(shown, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise NoticeError(f"{where}: {message}")


def parse_notice(path: Path, env: Mapping[str, str]) -> Notice:
    where = path.name
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise NoticeError(f"{where}: not valid TOML ({exc})") from None

    slug = raw.get("slug")
    _require(
        isinstance(slug, str) and bool(SLUG_RE.match(slug)), where, "slug must be lower-case letters, digits, dashes"
    )
    _require(slug == path.stem, where, f"slug {slug!r} must match the file name")

    languages = tuple(raw.get("languages") or ())
    _require(
        bool(languages) and all(lang in LANGUAGES for lang in languages), where, f"languages must be from {LANGUAGES}"
    )

    controller = raw.get("controller") or {}
    _require(isinstance(controller.get("name"), str) and bool(controller["name"]), where, "controller.name is required")
    _require(
        isinstance(controller.get("email"), str) and "@" in controller["email"], where, "controller.email is required"
    )

    collection = raw.get("collection") or {}
    fields = tuple(collection.get("fields") or ())
    required = tuple(collection.get("required") or ("email",))
    _require(
        "email" in fields and all(f in FIELDS for f in fields),
        where,
        f"collection.fields must include email and be from {FIELDS}",
    )
    _require(
        "email" in required and set(required) <= set(fields),
        where,
        "collection.required must include email and be among the fields",
    )
    inform_imported = collection.get("inform_imported", False)
    _require(isinstance(inform_imported, bool), where, "collection.inform_imported must be true or false")
    basis = collection.get("lawful_basis", "consent")
    _require(basis in LAWFUL_BASES, where, f"collection.lawful_basis must be one of {LAWFUL_BASES}")
    # The bases an import may use: only those the notice tells people their
    # addresses come in on. Absent, the one import_lawful_basis (itself by
    # default the sign-up's basis); given, import_lawful_basis defaults to the first.
    import_basis = collection.get("import_lawful_basis")
    _require(
        import_basis is None or import_basis in LAWFUL_BASES,
        where,
        f"collection.import_lawful_basis must be one of {LAWFUL_BASES}",
    )
    import_bases = collection.get("import_lawful_bases", [import_basis or basis])
    _require(
        isinstance(import_bases, list)
        and bool(import_bases)
        and all(b in LAWFUL_BASES for b in import_bases)
        and len(set(import_bases)) == len(import_bases),
        where,
        f"collection.import_lawful_bases must be a list of different bases from {LAWFUL_BASES}",
    )
    import_basis = import_basis or import_bases[0]
    _require(
        import_basis in import_bases,
        where,
        "collection.import_lawful_basis must be one of collection.import_lawful_bases",
    )

    rule = (raw.get("opt_out") or {}).get("rule")
    _require(rule in OPT_OUT_RULES, where, f"opt_out.rule must be one of {OPT_OUT_RULES}")

    retention = raw.get("retention") or {}
    unknown = sorted(set(retention) - set(RETENTION_KEYS))
    _require(not unknown, where, f"retention: unknown rule(s) {unknown}; known: {RETENTION_KEYS}")
    _require(
        all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in retention.values()),
        where,
        "retention periods must be positive whole numbers of days",
    )

    texts = raw.get("text") or {}
    for lang in languages:
        block = texts.get(lang)
        _require(isinstance(block, dict), where, f"text.{lang} is missing")
        for key in TEXT_KEYS:
            _require(
                isinstance(block.get(key), str) and bool(block[key].strip()), where, f"text.{lang}.{key} is required"
            )
    texts = {lang: {k: texts[lang][k].strip() for k in TEXT_KEYS} for lang in languages}

    provider = dict(raw.get("provider") or {})
    kind = provider.get("kind")
    _require(kind in PROVIDER_KEYS, where, f"provider.kind must be one of {tuple(PROVIDER_KEYS)}")
    prefix = slug.upper().replace("-", "_")
    for key in PROVIDER_KEYS[kind] + OPTIONAL_PROVIDER_KEYS[kind]:
        override = env.get(f"{prefix}_{key.upper()}")
        if override:
            provider[key] = override
        if key in PROVIDER_KEYS[kind] or key in provider:
            _require(
                isinstance(provider.get(key), str) and bool(provider[key]),
                where,
                f"provider.{key} must be a non-empty string" if key in provider else f"provider.{key} is required",
            )

    # What the person is shown or bound by: text, controller, rules, and who
    # receives the data (the provider kind) - but not the provider's ids.
    shown = {
        "slug": slug,
        "controller": controller,
        "collection": collection,
        "opt_out": raw.get("opt_out"),
        "retention": retention,
        "provider_kind": kind,
        "site": raw.get("site") or {},
        "text": texts,
    }
    return Notice(
        slug=slug,
        languages=languages,
        controller=controller,
        fields=fields,
        required=required,
        lawful_basis=basis,
        opt_out_rule=rule,
        retention=retention,
        texts=texts,
        provider=provider,
        shown=shown,
        version=version_of(shown),
        inform_imported=inform_imported,
        import_lawful_basis=import_basis,
        import_lawful_bases=tuple(import_bases),
    )


def load_notices(directory: str | Path, env: Mapping[str, str]) -> dict[str, Notice]:
    paths = sorted(Path(directory).glob("*.toml"))
    if not paths:
        raise NoticeError(f"no notice files (*.toml) in {directory}")
    notices = {}
    for path in paths:
        notice = parse_notice(path, env)
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
