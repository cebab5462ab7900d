"""The subscriber's own page, ``/manage/<token>``, and the mailed data links.

The signed token is the only authority on these routes (no login, no cookie),
so they are exempt from CSRF like the unsubscribe link: a forged POST would
need the token itself. GET and HEAD never change anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from babel import Locale
from flask import Response, current_app, make_response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import format_date, get_locale
from flask_babel import gettext as _

from .. import consent, labels, rights
from ..addresses import InvalidInput
from ..extensions import csrf
from ..i18n import current_language
from ..models import Subscription
from ..notices import Notice, get_notice
from ..vocabulary import LawfulBasis, Status
from . import bp
from .routes import _facts, _invalid_link, _read, _token_page

NAME_ERRORS = {"invalid": lambda: _("Please check this value."), "required": lambda: _("This field is required.")}
PROVIDER_NAMES = {"mailchimp": "Mailchimp", "apsis": "APSIS"}


@dataclass(frozen=True)
class Card:
    """One notice's subscription as the person reads it, every value already in words."""

    sub: Subscription
    notice: Notice
    title: str
    status: str
    language: str
    relationship: str | None  # None for someone who signed up themselves
    since_label: str
    since: str
    last_contact: str | None
    source: str
    lawful_basis: str
    consented: bool
    provider: str
    transfers: list[str]
    retention: str
    notice_link_text: str


def _day(moment: datetime | None) -> str | None:
    return format_date(moment) if moment is not None else None


def _language_name(code: str) -> str:
    try:
        return Locale.parse(code).get_language_name(get_locale()) or code
    except (ValueError, TypeError):
        return code


def status_words(sub: Subscription) -> str:
    if sub.status == Status.SUBSCRIBED and sub.lawful_basis != LawfulBasis.CONSENT:
        # "Subscribed" would suggest the person asked for it; a contact added on
        # legitimate interest simply receives the newsletter until they object.
        return _("receives the newsletter")
    return labels.status(sub.status)


def _card(sub: Subscription, notice: Notice) -> Card:
    lang = current_language(notice)
    consented = rights.consented(sub)
    if consented:
        since_label, since = _("Consent given"), _day(sub.confirmed_at) or ""
    else:
        since_label, since = _("Added on"), _day(sub.created_at) or ""
    # A notice that states nothing about transfers claims nothing (see notices/munkeby.toml).
    stated = notice.transfers_stated
    transfers = ([labels.transfer(t) for t in notice.transfers] or [labels.no_transfer()]) if stated else []
    return Card(
        sub=sub,
        notice=notice,
        title=notice.text(lang)["title"],
        status=status_words(sub),
        language=_language_name(sub.lang),
        relationship=labels.relationship(sub.relationship) if sub.relationship != "subscriber" else None,
        since_label=since_label,
        since=since,
        last_contact=_day(sub.last_contact_at),
        source=labels.source(sub.source),
        lawful_basis=labels.lawful_basis(sub.lawful_basis),
        consented=consented,
        provider=PROVIDER_NAMES.get(notice.provider["kind"], notice.provider["kind"]),
        transfers=transfers,
        retention=consent.retention_summary(notice, sub),
        # Only someone who consented agreed to a notice; anyone else was added under
        # the one in force at the time, and is told so.
        notice_link_text=_("The privacy notice you agreed to")
        if consented
        else _("The privacy notice in force when your address was added"),
    )


def _person(token: str) -> rights.Person | None:
    payload, problem = _read("manage", token)
    return None if problem or payload is None else rights.person_of(payload, token)


def _page(person: rights.Person, token: str, status: int = 200, **context: Any) -> Response:
    notice = person.origin
    cards = [_card(sub, n) for sub in rights.held(person) if (n := get_notice(sub.notice)) is not None]
    return _token_page(
        "public/manage.html",
        status,
        notice=notice,
        text=notice.text(current_language(notice)),
        token=token,
        cards=cards,
        **context,
    )


@csrf.exempt
@bp.get("/manage/<token>")
def manage(token: str) -> ResponseReturnValue:
    person = _person(token)
    if person is None:
        return _invalid_link()
    return _page(person, token, done=request.args.get("done"))


def _back(token: str, done: str) -> ResponseReturnValue:
    # 303 to the page itself, so a reload does not post again.
    return redirect(url_for("public.manage", token=token, done=done, lang=current_language()), code=303)


@csrf.exempt
@bp.post("/manage/<token>/name")
def manage_name(token: str) -> ResponseReturnValue:
    person = _person(token)
    if person is None:
        return _invalid_link()
    slug = request.form.get("notice", "")
    notice = get_notice(slug)
    if notice is None or notice.slug != person.origin.slug or "name" not in notice.fields:
        return _page(person, token, 400, error=_("Please check this value."))
    try:
        changed = rights.change_name(person, slug, request.form.get("name", ""), _facts("manage"))
    except InvalidInput as exc:
        return _page(person, token, 400, error=NAME_ERRORS.get(str(exc), NAME_ERRORS["invalid"])())
    return _back(token, "name" if changed else "nothing")


@csrf.exempt
@bp.post("/manage/<token>/unsubscribe")
def manage_unsubscribe(token: str) -> ResponseReturnValue:
    person = _person(token)
    if person is None:
        return _invalid_link()
    # The link acts on its own notice only; the field is checked, not trusted.
    if request.form.get("notice", "") != person.origin.slug:
        return _page(person, token, 400, error=_("Please check this value."))
    rights.withdraw(person, _facts("manage"))
    return _back(token, "unsubscribed")


@csrf.exempt
@bp.post("/manage/<token>/request")
def manage_request(token: str) -> ResponseReturnValue:
    person = _person(token)
    if person is None:
        return _invalid_link()
    kind = request.form.get("kind", "")
    if kind not in rights.DATA_KINDS:
        return _page(person, token, 400, error=_("Please check this value."))
    rights.request_link(person, kind, _facts("manage"))
    return _back(token, f"sent-{kind}")


@csrf.exempt
@bp.route("/manage/data/<token>", methods=["GET", "POST"])
def data_link(token: str) -> ResponseReturnValue:
    payload, problem = _read("data", token, current_app.config["DATA_LINK_MAX_AGE"])
    if problem == "invalid" or not isinstance(payload, dict) or payload.get("k") not in rights.DATA_KINDS:
        return _invalid_link()
    kind = payload["k"]
    if problem == "expired":
        return _token_page("public/data_link.html", 410, kind=kind, expired=True)
    if request.method != "POST":  # GET and HEAD only read: mail scanners follow links
        if rights.link_used(payload):
            # Opened again after use: say so, and offer no button that could only fail.
            return _token_page("public/data_link.html", 410, kind=kind, used=True)
        # The page names each controller that holds the address: the link covers them all.
        found = rights.holders(payload.get("h"))
        return _token_page(
            "public/data_link.html",
            kind=kind,
            token=token,
            holders=[(n, s, status_words(s)) for n, s in found],
            consented=any(rights.consented(s) for _n, s in found),
            nothing=not found,
        )
    try:
        if kind == "export":
            document = rights.export(payload, _facts("manage"))
        else:
            erased = rights.erase(payload, _facts("manage"))
    except rights.LinkUsed:
        return _token_page("public/data_link.html", 410, kind=kind, used=True)
    if kind == "erase":
        return _token_page(
            "public/data_link.html", kind=kind, erased=True, controllers=erased.controllers, consented=erased.consented
        )
    if document is None:
        return _token_page("public/data_link.html", kind=kind, nothing=True)
    response = make_response(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    response.mimetype = "application/json"
    response.headers["Content-Disposition"] = 'attachment; filename="my-data.json"'
    return response
