"""The words a person reads for the codes the service stores.

Statuses, lawful bases, relationships, opt-out rules, event types and the
sources of a contact are stored as plain codes (``app/vocabulary.py``) or as
English text written when the record was made. Pages, mails, the export and the
dashboard show them through these functions, so every one goes through the
translation catalogue and a Swedish reader never meets a raw code.

Each table maps a code to a lazily translated string: it is turned into text
in the language of the request (or of ``flask_babel.force_locale``) when shown.
An unknown code is shown as it is rather than failing, so a newer record read
by an older process still renders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from flask_babel import LazyString, format_date, get_locale
from flask_babel import lazy_gettext as _l

from .notices import Transfer
from .vocabulary import LawfulBasis, OptOutRule, Relationship, Status

STATUS: Mapping[str, LazyString] = {
    Status.PENDING: _l("waiting for confirmation"),
    Status.SUBSCRIBED: _l("subscribed"),
    Status.UNSUBSCRIBED: _l("unsubscribed"),
}

LAWFUL_BASIS: Mapping[str, LazyString] = {
    LawfulBasis.CONSENT: _l("consent"),
    LawfulBasis.LEGITIMATE_INTEREST: _l("legitimate interest"),
}

RELATIONSHIP: Mapping[str, LazyString] = {
    Relationship.SUBSCRIBER: _l("subscriber"),
    Relationship.PROSPECT: _l("prospect"),
    Relationship.CUSTOMER: _l("customer"),
}

OPT_OUT_RULE: Mapping[str, LazyString] = {
    OptOutRule.UNSUBSCRIBE: _l("stop mailing and keep the contact as unsubscribed"),
    OptOutRule.DELETE: _l("delete the person's data and keep only a check value"),
}

EVENT: Mapping[str, LazyString] = {
    "signup_requested": _l("Signed up on the form"),
    "confirmation_sent": _l("Confirmation mail sent"),
    "confirmation_resent": _l("Confirmation mail sent again"),
    "consent_confirmed": _l("Consent confirmed"),
    "provider_confirmation_requested": _l("Confirmation asked for by the mail provider"),
    "provider_subscribed": _l("Subscribed through the mail provider's form"),
    "imported": _l("Imported"),
    "art14_informed": _l("Informed of the processing (Art. 14 mail sent)"),
    "opted_out": _l("Opted out"),
    "rectified": _l("Data corrected"),
    "contact_recorded": _l("Contact recorded"),
    "customer_reviewed": _l("Customer relationship reviewed"),
    "data_request_received": _l("Asked for a copy or erasure of the data"),
    "subject_exported": _l("Data exported"),
    "erasure_requested": _l("Erasure requested"),
    "personal_data_deleted": _l("Personal data deleted"),
    "provider_contact_deleted": _l("Deleted at the mail provider"),
    "retention_purged": _l("Removed at the end of the retention period"),
    "provider_sync_retried": _l("Provider sync retried"),
    "provider_sync_discarded": _l("Provider sync discarded"),
    "api_token_created": _l("API token created"),
    "api_token_revoked": _l("API token revoked"),
}

CHANNEL: Mapping[str, LazyString] = {
    "form": _l("sign-up form"),
    "page": _l("web page"),
    "one-click": _l("one-click unsubscribe from the mail program"),
    "manage": _l("the subscriber's own page"),
    "mail": _l("e-mail"),
    "import": _l("import"),
    "dashboard": _l("dashboard"),
    "api": _l("API"),
    "cli": _l("command line"),
    "system": _l("the service itself"),
    "webhook": _l("the mail provider"),
    "mailchimp": _l("Mailchimp"),
    "apsis": _l("APSIS"),
}

PROVIDER_NAME = {"mailchimp": "Mailchimp", "apsis": "APSIS"}


def _word(table: Mapping[str, LazyString], code: str | None) -> str:
    if code is None:
        return ""
    found = table.get(code)
    return str(found) if found is not None else code


def status(code: str | None) -> str:
    return _word(STATUS, code)


def lawful_basis(code: str | None) -> str:
    return _word(LAWFUL_BASIS, code)


def relationship(code: str | None) -> str:
    return _word(RELATIONSHIP, code)


def opt_out_rule(code: str | None) -> str:
    return _word(OPT_OUT_RULE, code)


def event(code: str | None) -> str:
    return _word(EVENT, code)


def channel(code: str | None) -> str:
    return _word(CHANNEL, code)


# The sources the service itself writes (app/consent/signup.py, app/importer.py,
# app/consent/provider_events.py); anything else came from a person or the CRM and
# is shown as written.
_SIGNUP_FORM = re.compile(r"^sign-up form (?P<url>\S+)$")
_IMPORT = re.compile(r"^import: (?P<what>.*?)(?: \((?P<day>\d{4}-\d{2}-\d{2})\))?$", re.DOTALL)
_PROVIDER_FORM = re.compile(r"^(?P<provider>mailchimp|apsis) sign-up form \(not double opt-in by this service\)$")


def source(text: str | None) -> str:
    """Where a contact came from, in the reader's language."""
    if not text:
        return ""
    if found := _SIGNUP_FORM.match(text):
        return str(_l("the sign-up form at %(url)s", url=found["url"]))
    if found := _PROVIDER_FORM.match(text):
        return str(
            _l(
                "%(provider)s's sign-up form (not confirmed twice through this service)",
                provider=PROVIDER_NAME[found["provider"]],
            )
        )
    if found := _IMPORT.match(text):
        if found["day"]:
            day = format_date(date.fromisoformat(found["day"]))
            return str(_l("imported from %(source)s, collected %(day)s", source=found["what"], day=day))
        return str(_l("imported from %(source)s", source=found["what"]))
    return text


# --- transfers outside the EU/EEA (a notice's ``[[transfers]]``) ---------------------

SAFEGUARD: Mapping[str, LazyString] = {
    "adequacy": _l("an adequacy decision of the European Commission"),
    "dpf": _l("the EU-US Data Privacy Framework (the Commission's adequacy decision of 10 July 2023)"),
    "scc": _l("the standard contractual clauses"),
    "bcr": _l("binding corporate rules"),
}

# Countries named as a sentence needs them ("in the United States"); any other
# ISO 3166-1 code is named by the locale's own list of territories.
COUNTRY: Mapping[str, LazyString] = {
    "US": _l("the United States"),
    "GB": _l("the United Kingdom"),
    "CH": _l("Switzerland"),
    "CA": _l("Canada"),
    "IN": _l("India"),
    "AU": _l("Australia"),
}


def safeguard(code: str | None) -> str:
    return _word(SAFEGUARD, code)


def country(code: str | None) -> str:
    """A country's name in the reader's language, from its ISO 3166-1 alpha-2 code."""
    if not code:
        return ""
    if code in COUNTRY:
        return str(COUNTRY[code])
    return str(get_locale().territories.get(code, code)) if get_locale() is not None else code


def transfer(t: Transfer) -> str:
    """One sentence: who processes the data in which country, under which safeguard (and
    which one applies if that falls away)."""
    words = {"recipient": t.recipient, "country": country(t.country), "safeguard": safeguard(t.safeguard)}
    if t.fallback:
        return str(
            _l(
                "%(recipient)s processes the data in %(country)s, under %(safeguard)s; "
                "if that falls away, under %(fallback)s.",
                fallback=safeguard(t.fallback),
                **words,
            )
        )
    return str(_l("%(recipient)s processes the data in %(country)s, under %(safeguard)s.", **words))


def no_transfer() -> str:
    """What a notice stating ``transfers = []`` says (one without the key says nothing)."""
    return str(_l("The data is not transferred outside the EU/EEA."))
