"""The subscriber's own page, ``/manage/<token>``, and the mailed data links.

The signed token is the only authority on these routes (no login, no cookie),
so they are exempt from CSRF like the unsubscribe link: a forged POST would
need the token itself. GET and HEAD never change anything.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, make_response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from .. import consent, rights
from ..addresses import InvalidInput
from ..extensions import csrf
from ..i18n import current_language
from ..notices import get_notice
from . import bp
from .routes import _facts, _invalid_link, _read, _token_page

NAME_ERRORS = {"invalid": lambda: _("Please check this value."), "required": lambda: _("This field is required.")}


def _person(token: str) -> rights.Person | None:
    payload, problem = _read("manage", token)
    return None if problem or payload is None else rights.person_of(payload, token)


def _page(person: rights.Person, token: str, status: int = 200, **context: Any) -> Response:
    notice = person.origin
    subs = rights.held(person)
    rows = [(sub, get_notice(sub.notice)) for sub in subs]
    return _token_page(
        "public/manage.html",
        status,
        notice=notice,
        text=notice.text(current_language(notice)),
        token=token,
        rows=[(sub, n) for sub, n in rows if n is not None],
        retention={sub.ref: consent.retention_summary(n, sub) for sub, n in rows if n is not None},
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
        # The page names each controller that holds the address: the link covers them all.
        held = rights.holders(payload.get("h"))
        return _token_page("public/data_link.html", kind=kind, token=token, holders=held, nothing=not held)
    try:
        if kind == "export":
            document = rights.export(payload, _facts("manage"))
        else:
            controllers = rights.erase(payload, _facts("manage"))
    except rights.LinkUsed:
        return _token_page("public/data_link.html", 410, kind=kind, used=True)
    if kind == "erase":
        return _token_page("public/data_link.html", kind=kind, erased=True, controllers=controllers)
    if document is None:
        return _token_page("public/data_link.html", kind=kind, nothing=True)
    response = make_response(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    response.mimetype = "application/json"
    response.headers["Content-Disposition"] = 'attachment; filename="my-data.json"'
    return response
