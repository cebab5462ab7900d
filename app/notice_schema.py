"""The shape of a notice file, declared once as pydantic models.

``NoticeFile`` is what a file in ``notices/`` must hold; the words it may use
(languages, lawful bases, opt-out rules) are the enums of ``app.vocabulary``.
Tables a file leaves out read as empty, as do keys given a false value where
the file format allows a default (``collection.required``).

Before the file is checked, two things the file does not say are applied to it:
``<SLUG>_<KEY>`` overrides of the provider ids (given through the validation
context as ``overrides``) and the choice of the text blocks to check (those of
the declared languages only). The file name's stem comes in the context as
``stem``: the slug must match it.

Every refusal names the file's key it is about: ``refusals()`` turns pydantic's
errors into sentences such as ``opt_out.rule must be one of ('unsubscribe',
'delete')``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from babel import Locale
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from .vocabulary import Language, LawfulBasis, OptOutRule, values

# The error type of the rules written here; their message is the whole sentence.
RULE = "notice_rule"

SLUG_PATTERN = r"^[a-z][a-z0-9-]{1,30}$"
LANGUAGES = values(Language)
LAWFUL_BASES = values(LawfulBasis)
OPT_OUT_RULES = values(OptOutRule)

CollectedField = Literal["email", "name"]
FIELDS: tuple[str, ...] = get_args(CollectedField)

RetentionRule = Literal[
    "unconfirmed_days",
    "unsubscribed_days",
    "prospect_without_dialog_days",
    "prospect_with_dialog_days",
    "customer_review_days",
    "evidence_days",
]
RETENTION_RULES: tuple[str, ...] = get_args(RetentionRule)

Slug = Annotated[StrictStr, StringConstraints(pattern=SLUG_PATTERN)]
NonEmpty = Annotated[StrictStr, StringConstraints(min_length=1)]
ShownText = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1)]
Days = Annotated[StrictInt, Field(gt=0)]


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError(RULE, message)


# --- the tables of a notice file ------------------------------------------------


class Controller(BaseModel):
    """Who is responsible for the data; any further keys (city, phone ...) are kept."""

    model_config = ConfigDict(extra="allow")

    name: NonEmpty
    email: Annotated[StrictStr, StringConstraints(pattern="@")]


def _or_email_only(value: object) -> object:
    return value or ["email"]


def _with_email(value: list[str]) -> list[str]:
    if "email" not in value:
        raise _rule(f"collection.fields must include email and be from {FIELDS}")
    return value


def _different(value: list[LawfulBasis] | None) -> list[LawfulBasis] | None:
    if value is not None and len(set(value)) != len(value):
        raise _rule(f"collection.import_lawful_bases must be a list of different bases from {LAWFUL_BASES}")
    return value


class Collection(BaseModel):
    """What the sign-up form asks for, on what basis, and what imports may rely on.

    An import may use only the bases the notice lists (``import_lawful_bases``);
    without the list, the one ``import_lawful_basis``, itself by default the
    sign-up's basis. Given the list, ``import_lawful_basis`` defaults to its first.
    Further keys (``purpose``) are kept.
    """

    model_config = ConfigDict(extra="allow")

    fields: Annotated[list[CollectedField], AfterValidator(_with_email)]
    required: Annotated[list[CollectedField], BeforeValidator(_or_email_only)] = ["email"]
    inform_imported: StrictBool = False
    lawful_basis: LawfulBasis = LawfulBasis.CONSENT
    import_lawful_basis: LawfulBasis | None = None
    import_lawful_bases: Annotated[
        Annotated[list[LawfulBasis], Field(min_length=1)] | None, AfterValidator(_different)
    ] = None

    @field_validator("required")
    @classmethod
    def _among_the_fields(cls, value: list[str], info: ValidationInfo) -> list[str]:
        fields = info.data.get("fields")
        if "email" not in value or (fields is not None and not set(value) <= set(fields)):
            raise _rule("collection.required must include email and be among the fields")
        return value

    @model_validator(mode="after")
    def _import_basis_is_listed(self) -> Collection:
        if self.import_basis not in self.import_bases:
            raise _rule("collection.import_lawful_basis must be one of collection.import_lawful_bases")
        return self

    @property
    def import_bases(self) -> tuple[LawfulBasis, ...]:
        return tuple(self.import_lawful_bases or [self.import_lawful_basis or self.lawful_basis])

    @property
    def import_basis(self) -> LawfulBasis:
        return self.import_lawful_basis or self.import_bases[0]


class OptOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    rule: OptOutRule


def _known_rules(value: object) -> object:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(RETENTION_RULES))
        if unknown:
            raise _rule(f"retention: unknown rule(s) {unknown}; known: {RETENTION_RULES}")
    return value


Retention = Annotated[dict[RetentionRule, Days], BeforeValidator(_known_rules)]


# --- the body: paragraphs and marked headings --------------------------------------

# A line of the body that starts with this is a heading; every other line is
# paragraph text, and a blank line or a heading ends a paragraph. Lines wrap freely.
HEADING_MARK = "## "
# Refusals of a value whose place pydantic knows: the message follows the key.
RULE_AT = "notice_rule_at"


@dataclass(frozen=True)
class Block:
    """One part of a notice's body as a page shows it: a heading or a paragraph."""

    text: str
    heading: bool = False


def body_blocks(body: str) -> tuple[Block, ...]:
    """The headings and paragraphs of a body written with marked headings."""
    blocks: list[Block] = []
    words: list[str] = []

    def end_paragraph() -> None:
        if words:
            blocks.append(Block(" ".join(words)))
            words.clear()

    for line in (raw.strip() for raw in body.splitlines()):
        if line.startswith(HEADING_MARK):
            end_paragraph()
            blocks.append(Block(line[len(HEADING_MARK) :].strip(), heading=True))
        elif line:
            words.append(line)
        else:
            end_paragraph()
    end_paragraph()
    return tuple(blocks)


# A first line longer than this, or ending a sentence with a full stop, is the start
# of a wrapped paragraph, not a heading (every heading the notices ever had is shorter).
_LEGACY_HEADING_MAX = 60


def legacy_body_blocks(body: str) -> tuple[Block, ...]:
    """The blocks of a body stored before headings were marked.

    Then a block's first line was shown as its heading, so a paragraph whose first
    sentence wrapped lost its first line to a heading. Read back now, a first line is
    a heading only when it reads as one: short, and not ending with a full stop or comma.
    """
    blocks: list[Block] = []
    for chunk in body.strip().split("\n\n"):
        lines = [line.strip() for line in chunk.strip().splitlines() if line.strip()]
        if not lines:
            continue
        first = lines[0]
        if len(lines) > 1 and len(first) <= _LEGACY_HEADING_MAX and not first.endswith((".", ",", ";")):
            blocks.append(Block(first, heading=True))
            lines = lines[1:]
        blocks.append(Block(" ".join(lines)))
    return tuple(blocks)


def _marked_headings(body: str) -> str:
    for number, line in enumerate((raw.strip() for raw in body.splitlines()), start=1):
        if line.startswith("#") and not (line.startswith(HEADING_MARK) and line[len(HEADING_MARK) :].strip()):
            raise PydanticCustomError(
                RULE_AT, "line {number}: a heading is written as '## ' and its words", {"number": number}
            )
    blocks = body_blocks(body)
    for block, after in zip(blocks, [*blocks[1:], None], strict=True):
        if block.heading and (after is None or after.heading):
            raise PydanticCustomError(RULE_AT, "the heading '{heading}' has no text under it", {"heading": block.text})
    return body


class Text(BaseModel):
    """The text shown at sign-up in one language, without surrounding white space.

    ``body`` is the full notice: paragraphs, and headings marked with ``HEADING_MARK``.
    """

    title: ShownText
    summary: ShownText
    consent_label: ShownText
    body: Annotated[ShownText, AfterValidator(_marked_headings)]


TEXT_KEYS: tuple[str, ...] = tuple(Text.model_fields)


class MailchimpIds(BaseModel):
    """The Mailchimp audience, and its GDPR marketing permission ids (comma-separated)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["mailchimp"]
    list_id: NonEmpty
    marketing_permissions: NonEmpty | None = None


class ApsisIds(BaseModel):
    """The APSIS section, topic and keyspace, and the attribute version ids that hold
    the address, the name, and our unsubscribe and manage links in the section."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["apsis"]
    section: NonEmpty
    topic: NonEmpty
    keyspace: NonEmpty
    email_attribute: NonEmpty | None = None
    name_attribute: NonEmpty | None = None
    unsubscribe_url_attribute: NonEmpty | None = None
    manage_url_attribute: NonEmpty | None = None


# --- transfers outside the EU/EEA (GDPR Art. 13(1)(f), 15(2)) ---------------------

# What a transfer may rest on: "adequacy" an adequacy decision (Art. 45), "dpf" the
# EU-US Data Privacy Framework (the adequacy decision of 10 July 2023, for US
# recipients certified under it), "scc" the Commission's standard contractual
# clauses (Art. 46(2)(c)), "bcr" binding corporate rules (Art. 47).
Safeguard = Literal["adequacy", "dpf", "scc", "bcr"]
SAFEGUARDS: tuple[str, ...] = get_args(Safeguard)

# A transfer is to a country outside the EU/EEA: the member states and Iceland,
# Liechtenstein and Norway are not third countries. Nor is EU territory that ISO 3166
# codes apart from its member state: France's outermost regions (French Guiana GF,
# Guadeloupe GP, Martinique MQ, Réunion RE, Mayotte YT, Saint-Martin MF; Art. 349 TFEU)
# and Åland (AX, part of Finland). Data processed there has not left the EU.
EEA = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK IS LI NO".split()
    + "GF GP MQ RE YT MF AX".split()
)
# CLDR (through Babel) names every ISO 3166-1 alpha-2 country, and a few codes that
# are no country of that list: groupings, reserved and private-use ones.
_NOT_COUNTRIES = frozenset("AC CP CQ DG EA EU EZ IC QO TA UN XA XB XK ZZ".split())
COUNTRIES = frozenset(
    code
    for code in map(str, Locale("en").territories)
    if len(code) == 2 and code.isalpha() and code not in _NOT_COUNTRIES
)


def _third_country(value: str) -> str:
    if value not in COUNTRIES:
        raise _rule(f"transfers.country must be an ISO 3166-1 alpha-2 code such as 'US', not {value!r}")
    if value in EEA:
        raise _rule(f"transfers.country {value!r} is in the EU/EEA: list only transfers outside it")
    return value


def _safeguard(value: str) -> str:
    if value not in SAFEGUARDS:
        raise _rule(f"transfers.safeguard must be one of {SAFEGUARDS}, not {value!r}")
    return value


def _fallback(value: str) -> str:
    if value not in SAFEGUARDS:
        raise _rule(f"transfers.fallback must be one of {SAFEGUARDS}, not {value!r}")
    return value


class TransferTable(BaseModel):
    """One ``[[transfers]]`` table: who receives the data outside the EU/EEA, where, and on
    what safeguard (with, optionally, the one relied on if the first falls away)."""

    model_config = ConfigDict(extra="forbid")

    recipient: ShownText
    country: Annotated[StrictStr, AfterValidator(_third_country)]
    safeguard: Annotated[StrictStr, AfterValidator(_safeguard)]
    fallback: Annotated[StrictStr, AfterValidator(_fallback)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TransferTable:
        # The Data Privacy Framework covers US recipients only.
        if "dpf" in (self.safeguard, self.fallback) and self.country != "US":
            raise _rule(f"transfers: the safeguard 'dpf' applies to the US only, not {self.country!r}")
        if self.fallback == self.safeguard:
            raise _rule("transfers.fallback must differ from transfers.safeguard")
        return self


PROVIDER_TABLES: dict[str, type[MailchimpIds] | type[ApsisIds]] = {"mailchimp": MailchimpIds, "apsis": ApsisIds}
PROVIDER_KINDS = tuple(PROVIDER_TABLES)


def provider_keys(kind: str) -> tuple[str, ...]:
    """The ids a provider of this kind reads from the notice, each overridable as ``<SLUG>_<KEY>``."""
    return tuple(name for name in PROVIDER_TABLES[kind].model_fields if name != "kind")


def _kind(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) else None


ProviderIds = Annotated[
    Annotated[MailchimpIds, Tag("mailchimp")] | Annotated[ApsisIds, Tag("apsis")],
    Discriminator(
        _kind,
        custom_error_type=RULE,
        custom_error_message=f"provider.kind must be one of {PROVIDER_KINDS}",
    ),
]

TABLES = ("controller", "collection", "opt_out", "retention", "text", "provider", "site")


class NoticeFile(BaseModel):
    """A whole notice file. Keys it does not name are ignored."""

    slug: Slug
    languages: Annotated[list[Language], Field(min_length=1)]
    controller: Controller
    collection: Collection
    opt_out: OptOut
    retention: Retention
    text: dict[Language, Text]
    provider: ProviderIds
    site: dict[str, Any]
    transfers: list[TransferTable] = []

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        prepared = {**data, **{table: data.get(table) or {} for table in TABLES}}
        context = info.context or {}
        prepared["provider"] = _overridden(prepared, context.get("overrides") or {})
        prepared["text"] = _declared_texts(prepared)
        return prepared

    @field_validator("slug")
    @classmethod
    def _matches_the_file_name(cls, value: str, info: ValidationInfo) -> str:
        stem = (info.context or {}).get("stem")
        if stem is not None and value != stem:
            raise _rule(f"slug {value!r} must match the file name")
        return value


def _overridden(data: Mapping[str, Any], overrides: Mapping[str, str]) -> Any:
    """The provider table with the ids set in ``overrides`` as ``<SLUG>_<KEY>`` (empty ones
    do not count)."""
    provider, slug = data["provider"], data.get("slug")
    if _kind(provider) not in PROVIDER_TABLES or not isinstance(slug, str):
        return provider
    prefix = slug.upper().replace("-", "_")
    given = {key: overrides.get(f"{prefix}_{key.upper()}") for key in provider_keys(provider["kind"])}
    return {**provider, **{key: value for key, value in given.items() if value}}


def _declared_texts(data: Mapping[str, Any]) -> Any:
    """The text blocks of the declared languages (a missing one as None); others are not read."""
    texts, languages = data["text"], data.get("languages")
    if not isinstance(texts, Mapping) or not isinstance(languages, list):
        return texts
    return {lang: texts.get(lang) for lang in languages if lang in LANGUAGES}


# --- refusals, in the file's words ----------------------------------------------

# What a value at a place in the file must be, for pydantic's own errors there
# ("*" is any key). Longest places first; the rules above say their own sentence.
MUST_BE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("text", "*", "*"), "is required"),
    (("text", "*"), "is missing"),
    (("retention", "*"), "must be a positive whole number of days"),
    (("transfers", "*", "recipient"), "must be a non-empty string"),
    (("transfers", "*", "country"), "must be an ISO 3166-1 alpha-2 code such as 'US'"),
    (("transfers", "*", "safeguard"), f"must be one of {SAFEGUARDS}"),
    (("transfers", "*", "fallback"), f"must be one of {SAFEGUARDS}"),
    (("transfers", "*"), "must be a table with recipient, country, safeguard and optionally fallback"),
    (("transfers",), "must be a list of [[transfers]] tables"),
    (("controller", "name"), "is required"),
    (("controller", "email"), "is required"),
    (("collection", "fields"), f"must include email and be from {FIELDS}"),
    (("collection", "required"), "must include email and be among the fields"),
    (("collection", "inform_imported"), "must be true or false"),
    (("collection", "lawful_basis"), f"must be one of {LAWFUL_BASES}"),
    (("collection", "import_lawful_basis"), f"must be one of {LAWFUL_BASES}"),
    (("collection", "import_lawful_bases"), f"must be a list of different bases from {LAWFUL_BASES}"),
    (("opt_out", "rule"), f"must be one of {OPT_OUT_RULES}"),
    (("provider", "*"), "must be a non-empty string"),
    (("slug",), "must be lower-case letters, digits, dashes"),
    (("languages",), f"must be from {LANGUAGES}"),
)


def _place(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """An error's location as keys of the file: without the provider kind pydantic adds."""
    place = tuple(str(part) for part in loc)
    if place[:1] == ("provider",) and place[1:2] and place[1] in PROVIDER_KINDS:
        place = place[:1] + place[2:]
    return place


def _matches(place: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(place) >= len(pattern) and all(p in ("*", key) for p, key in zip(pattern, place, strict=False))


def refusal(error: ErrorDetails) -> str:
    """One error as a sentence naming the file's key."""
    if error["type"] == RULE:
        return error["msg"]
    place = _place(error["loc"])
    if error["type"] == RULE_AT:
        return f"{'.'.join(place)}: {error['msg']}"
    if error["type"] == "extra_forbidden":
        return f"{'.'.join(place)} is not a known key"
    for pattern, must in MUST_BE:
        if _matches(place, pattern):
            where = ".".join(place[: len(pattern)])
            if error["type"] == "missing" and pattern[0] in ("provider", "transfers"):
                return f"{where} is required"
            return f"{where} {must}"
    return f"{'.'.join(place) or 'the file'}: {error['msg']}"


def refusals(exc: ValidationError) -> list[str]:
    """Every refusal of a file, each once, in the file's order of keys."""
    return list(dict.fromkeys(_sentences(exc)))


def _sentences(exc: ValidationError) -> Iterator[str]:
    for error in exc.errors(include_url=False):
        yield refusal(error)
