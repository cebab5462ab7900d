"""What the dashboard says in words for what the service stores as codes and data.

Three kinds of stored text reach a marketer's screen here:

- the facts and personal details of an evidence event (``app.events.serialize_event``):
  keys, lists, booleans, dates and codes, shown as translated names and readable values,
  never as a Python or JSON rendering;
- the reason an outbox job stored when it failed (``app.outbox.describe``: the failure's
  class name, then the service's own words): shown as a sentence a marketer can act on,
  chosen by the failure's family (``app/failures.py``), never the class name and never
  the text after it, which may quote a provider;
- the kind of an outbox job.

Everything goes through the catalogue, so the Swedish page reads Swedish.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from flask_babel import LazyString, format_date, format_datetime, format_decimal, format_percent, get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from .. import labels
from ..failures import Failure, Permanent, RetryLater, WaitForConfiguration
from ..notices import get_notice
from ..vocabulary import LawfulBasis, Status

# --- evidence facts -----------------------------------------------------------------

FACT_NAME: Mapping[str, LazyString] = {
    "consent_checkbox": _l("consent box ticked"),
    "fields": _l("data collected"),
    "field": _l("field"),
    "lawful_basis": _l("lawful basis"),
    "seconds_since_sent": _l("time since the mail was sent"),
    "likely_scanner": _l("likely a mail scanner"),
    "same_ip_as_signup": _l("same IP address as the sign-up"),
    "same_browser_as_signup": _l("same browser (user agent) as the sign-up"),
    # Recorded for a few days in 2026-12 only: the same IP address or the same browser.
    "same_origin_as_signup": _l("same IP address or browser as the sign-up"),
    "suppression_lifted": _l("earlier opt-out lifted"),
    "actor": _l("done by"),
    "job": _l("job"),
    "job_kind": _l("job kind"),
    "reason": _l("reason"),
    "provider": _l("mail provider"),
    "provider_reason": _l("provider's reason"),
    "event": _l("provider's event"),
    "double_opt_in_by_us": _l("confirmed twice through this service"),
    "rule": _l("rule"),
    "previous_status": _l("status before"),
    "source": _l("source"),
    "source_date": _l("date collected"),
    "proof": _l("proof of consent"),
    "collected_from_person": _l("collected from the person"),
    "purged": _l("removed"),
    "evidence_reduced": _l("evidence reduced"),
    "sent_at": _l("sent"),
    "template": _l("mail"),
    "request": _l("request"),
    "token": _l("API token"),
    "scopes": _l("scopes"),
    "notices": _l("notices"),
    "last_contact_at": _l("last contact"),
    "relationship": _l("relationship"),
    "days": _l("days"),
    "added_on": _l("added on"),
    "kind": _l("kind"),
    # personal details, kept beside the chain until erased
    "ip": _l("IP address"),
    "user_agent": _l("browser"),
    "email": _l("e-mail address"),
    "name": _l("name"),
    "old_email": _l("earlier e-mail address"),
}

FIELD: Mapping[str, LazyString] = {"email": _l("e-mail address"), "name": _l("name")}

REASON: Mapping[str, LazyString] = {
    "opt_out": _l("the person opted out"),
    "erasure_request": _l("the person asked for erasure"),
    "provider_unsubscribe": _l("unsubscribed at the mail provider"),
    "unsubscribe": _l("unsubscribed at the mail provider"),
    "complaint": _l("marked as spam"),
    "abuse": _l("marked as spam"),
    "bounce": _l("the address bounced"),
    "retention": _l("the retention period ended"),
    "compliance state": _l("the provider asks for its own confirmation"),
}

TEMPLATE: Mapping[str, LazyString] = {
    "confirmation": _l("confirmation"),
    "welcome": _l("welcome"),
    "art14": _l("information on the processing (Art. 14)"),
    "data_export": _l("copy of the data"),
    "data_erase": _l("erasure link"),
    "erased": _l("erasure done"),
}

JOB_KIND: Mapping[str, LazyString] = {
    "sync_consent": _l("subscription to the mail provider"),
    "sync_optout": _l("opt-out to the mail provider"),
    "mail": _l("mail to a subscriber"),
    "signup": _l("sign-up"),
    "contacts_import": _l("contact import"),
}

# What a person asked for through the data link (rights.DATA_KINDS).
DATA_REQUEST: Mapping[str, LazyString] = {
    "export": _l("a copy of the data"),
    "erase": _l("erasure"),
}

_DATE_KEYS = ("source_date", "added_on")
_TIME_KEYS = ("sent_at", "last_contact_at")


def _word(table: Mapping[str, LazyString], code: str) -> str:
    found = table.get(code)
    return str(found) if found is not None else code


def fact_name(key: str) -> str:
    """A fact's name; an unknown key reads as its words."""
    found = FACT_NAME.get(key)
    return str(found) if found is not None else key.replace("_", " ")


def _moment(text: str, *, with_time: bool) -> str:
    """An ISO 8601 date or time as the locale writes it; text that is neither stays as it is."""
    try:
        if not with_time or len(text) == 10:
            return format_date(date.fromisoformat(text[:10]))
        return format_datetime(datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)) + " UTC"
    except ValueError:
        return text


def _actor(text: str) -> str:
    kind, _sep, ident = text.partition(":")
    if kind == "user" and ident:
        return _("dashboard user %(id)s", id=ident)
    if kind == "token" and ident:
        return _("API token %(id)s", id=ident)
    if kind in labels.PROVIDER_NAME:
        return labels.PROVIDER_NAME[kind]
    return text


def notice_name(slug: str | None) -> str:
    """A notice as a marketer knows it: its newsletter's title in the page's language."""
    notice = get_notice(slug)
    if notice is None:
        return slug or ""
    locale = get_locale()
    return notice.text(locale.language if locale is not None else notice.languages[0])["title"]


def notice_names(slugs: str | Iterable[str]) -> str:
    """Several notices (a user's or a token's, stored space-separated) by name, joined."""
    return join(notice_name(slug) for slug in (slugs.split() if isinstance(slugs, str) else slugs))


ROLE: Mapping[str, LazyString] = {
    "admin": _l("administrator"),
    "marketer": _l("marketer"),
    "viewer": _l("viewer (reads only)"),
}

SCOPE: Mapping[str, LazyString] = {
    "read": _l("read"),
    "subscribe": _l("sign people up"),
    "opt_out": _l("opt people out"),
    "contact": _l("record contacts"),
}


def role(code: str) -> str:
    return _word(ROLE, code)


def scopes(codes: str | Iterable[str]) -> str:
    return join(_word(SCOPE, code) for code in (codes.split() if isinstance(codes, str) else codes))


def standing(status: str, lawful_basis: str | None) -> str:
    """A subscription's status in words. A contact held on legitimate interest may be mailed,
    but never subscribed: it is not called a subscriber."""
    if status == Status.SUBSCRIBED and lawful_basis not in (None, LawfulBasis.CONSENT):
        return _("contact on legitimate interest")
    return labels.status(status)


def yes_no(value: bool) -> str:
    return _("yes") if value else _("no")


def join(items: Iterable[str]) -> str:
    """A list as the reader's language writes one ("a, b and c")."""
    words = [item for item in items if item]
    if len(words) < 2:
        return "".join(words)
    return _("%(items)s and %(last)s", items=", ".join(words[:-1]), last=words[-1])


def number(value: float) -> str:
    return format_decimal(value)


def fact_value(key: str, value: Any) -> str:
    """A fact's value in words: booleans as yes or no, lists joined, codes named, dates localised."""
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, list | tuple):
        return join(fact_value(key, item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{fact_name(str(k))}: {fact_value(str(k), v)}" for k, v in value.items() if v is not None)
    if isinstance(value, int | float):
        if key == "seconds_since_sent":
            return _("%(seconds)s s", seconds=format_decimal(round(value, 1)))
        if key == "days":
            return _("%(days)s days", days=format_decimal(value))
        return format_decimal(value)
    text = str(value)
    if key in ("fields", "field"):
        return _word(FIELD, text)
    if key == "lawful_basis":
        return labels.lawful_basis(text)
    if key == "rule":
        return labels.opt_out_rule(text)
    if key == "previous_status":
        return labels.status(text)
    if key == "relationship":
        return labels.relationship(text)
    if key in ("provider",):
        return labels.PROVIDER_NAME.get(text, text)
    if key in ("reason", "event", "provider_reason"):
        return _word(REASON, text)
    if key == "template":
        return _word(TEMPLATE, text)
    if key == "job_kind":
        return _word(JOB_KIND, text)
    if key == "kind":
        return _word(DATA_REQUEST, text)
    if key == "notices":
        return notice_name(text)
    if key == "actor":
        return _actor(text)
    if key in _DATE_KEYS:
        return _moment(text, with_time=False)
    if key in _TIME_KEYS:
        return _moment(text, with_time=True)
    return text


def fact_lines(facts: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) pairs of an event's facts or details, in words, leaving out empty ones."""
    if not facts:
        return []
    lines = [(fact_name(key), fact_value(key, value)) for key, value in facts.items() if value is not None]
    if facts.get("likely_scanner") is True and not any(key in facts for key in _NETWORK_FACTS):
        # Before the rule compared networks, a quick confirmation alone was labelled.
        scanner, by_speed = fact_name("likely_scanner"), _("yes (by speed alone, an earlier rule)")
        lines = [(name, by_speed if name == scanner else value) for name, value in lines]
    return lines


_NETWORK_FACTS = ("same_ip_as_signup", "same_origin_as_signup")


# --- outbox failures ------------------------------------------------------------------

# A setting named in the service's own failure text (e.g. "set MAILCHIMP_API_KEY").
_SETTING = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b")
_CREDENTIALS = re.compile(r"\b(401|403|530|535)\b")
_SLOW_DOWN = re.compile(r"\b429\b")

CREDENTIALS_OF = {
    "mailchimp": ("MAILCHIMP_API_KEY",),
    "apsis": ("APSIS_CLIENT_ID", "APSIS_CLIENT_SECRET"),
    "mail": ("SMTP_USER", "SMTP_PASSWORD"),
}


def _family_of(class_name: str) -> type[Failure] | None:
    """The failure family (app/failures.py) of a stored class name, or None if it is not the service's own."""
    pending: list[type[Failure]] = [Failure]
    while pending:
        cls = pending.pop()
        if cls.__name__ == class_name:
            for family in (WaitForConfiguration, RetryLater, Permanent):
                if issubclass(cls, family):
                    return family
            return Failure
        pending.extend(cls.__subclasses__())
    return None


def _target(kind: str | None, provider_kind: str | None, text: str) -> str:
    """Whom the job talks to: "mailchimp", "apsis" or "mail" (the mail server)."""
    lowered = text.lower()
    if lowered.startswith("mailchimp"):
        return "mailchimp"
    if lowered.startswith("apsis"):
        return "apsis"
    if kind == "mail" or lowered.startswith(("smtp", "recipient")):
        return "mail"
    return provider_kind or "mail"


def _settings(names: Iterable[str]) -> str:
    return join(list(dict.fromkeys(names)))


def sync_problem(
    reason: str | None, *, kind: str | None = None, provider_kind: str | None = None, dead: bool = False
) -> str:
    """A stored failure reason as a sentence a marketer can act on.

    ``reason`` is what ``app.outbox.describe`` stored: ``ClassName: the service's words``.
    The class decides the family, and a few fixed facts in the words (a setting's name, an
    HTTP status) choose the sentence; nothing of the words is shown as written. ``dead``: the
    job has used up its attempts, so nothing is retrying it until someone asks.
    """
    class_name, _sep, text = (reason or "").partition(":")
    text = text.strip()
    family = _family_of(class_name.strip())
    target = _target(kind, provider_kind, text)
    name = labels.PROVIDER_NAME.get(target, "")
    if family is WaitForConfiguration:
        named = _SETTING.findall(text)
        if target == "mail":
            return _("The mail server is not set up: add %(settings)s", settings=_settings(named or ["SMTP_HOST"]))
        if named:
            return _("%(provider)s is not set up: add %(settings)s", provider=name, settings=_settings(named))
        return _("%(provider)s is not set up yet; the jobs wait until it is.", provider=name)
    if family is RetryLater or (family is None and class_name.strip().endswith("Retry")):
        if _CREDENTIALS.search(text):
            settings = _settings(CREDENTIALS_OF[target])
            if target == "mail":
                return _("The mail server refused the login: check %(settings)s", settings=settings)
            return _("%(provider)s refused the credentials: check %(settings)s", provider=name, settings=settings)
        if _SLOW_DOWN.search(text) and not dead:
            if target == "mail":
                return _("The mail server asked us to slow down; retrying")
            return _("%(provider)s asked us to slow down; retrying", provider=name)
        if dead:
            if target == "mail":
                return _("The mail server did not answer, even after repeated tries; retry when it is back")
            return _("%(provider)s did not answer, even after repeated tries; retry when it is back", provider=name)
        if target == "mail":
            return _("The mail server did not answer; retrying")
        return _("%(provider)s did not answer; retrying", provider=name)
    if family is Permanent or family is Failure:
        lowered = text.lower()
        if "permanently deleted" in lowered:
            return _(
                "Mailchimp will not take this address back: it was deleted there for good, and only Mailchimp's"
                " own sign-up form can add it again"
            )
        if "merge field" in lowered:
            return _("Mailchimp refused the contact's fields: check the audience's merge fields")
        if "no longer exists" in lowered:
            return _("The notice of this job no longer exists")
        if target == "mail":
            if "recipient" in lowered:
                return _("The mail server refused the recipient's address")
            return _("The mail server refused the message")
        if "invalid" in lowered:
            return _("%(provider)s refused the address as invalid", provider=name)
        return _("%(provider)s refused the change; retrying will not help until it is fixed there", provider=name)
    return _("The job stopped on an unexpected error; the worker's log has the details")


def job_kind(kind: str | None) -> str:
    return _word(JOB_KIND, kind or "")


# --- numbers --------------------------------------------------------------------------


def percent(share: float | None) -> str:
    """A share (0.5) as the locale writes a percentage with one decimal: "50,0 %" in Swedish, "50.0%" in English."""
    if share is None:
        return "–"
    locale = get_locale()
    pattern = locale.percent_formats[None].pattern if locale is not None else "#,##0%"
    one_decimal = re.sub(r"0(?![0-9.])", "0.0", pattern, count=1)
    return format_percent(share, one_decimal)
