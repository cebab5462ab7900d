from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, abort, current_app, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from .. import consent, ledger, tokens
from ..addresses import InvalidInput, clean_name, normalise_email
from ..extensions import client_ip, csrf, db, limiter
from ..i18n import current_language
from ..notices import Notice, get_notice
from ..notices import notices as registered_notices
from ..security import sent_from_another_site
from . import bp
from .forms import SubscribeForm

ERROR_TEXT = {
    "required": lambda: _("This field is required."),
    "invalid": lambda: _("Please check this value."),
}
EMAIL_ERROR_TEXT = {
    "required": lambda: _("Please enter your e-mail address."),
    "invalid": lambda: _("That does not look like a valid e-mail address."),
}


def _facts(channel: str) -> consent.Facts:
    return consent.Facts(
        channel=channel,
        ip=client_ip(),
        user_agent=request.headers.get("User-Agent", "")[:300],
        lang=current_language(),
    )


def _notice_or_404(slug: str) -> Notice:
    notice = get_notice(slug)
    if notice is None:
        abort(404)
    return notice


def _token_page(template: str, status: int = 200, **context: Any) -> Response:
    # Not cached (``no-store`` on every token route, app/security.py), nor leaked through Referer.
    return make_response(render_template(template, **context), status)


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template("public/index.html", notices=registered_notices().values())


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Liveness: the process answers and reaches its database. The evidence waiting for its place
    in the chain is reported beside it (restarting a web process would not chain it: ``/readyz``
    fails on it, and the metrics alert)."""
    waiting = ledger.pending(db.session)
    return {
        "status": "ok",
        "ledger": {
            "pending_events": waiting.count,
            "oldest_pending_seconds": None if waiting.oldest_seconds is None else round(waiting.oldest_seconds, 1),
            "max_merge_delay_seconds": waiting.bound_seconds,
            "within_merge_delay": waiting.overdue == 0,
        },
    }


def _subscribe_limit() -> str:
    return current_app.config["SUBSCRIBE_RATE_LIMIT"]


def _form_expired() -> str:
    return _("The form had expired. Please reload the page and submit it again.")


def _field_errors(form: SubscribeForm, notice: Notice) -> list[tuple[str, str]]:
    """Every problem with the fields at once, as (field id, message) in the form's order.

    The same checks ``consent.request_subscription`` makes (it stays the authority and
    checks again), run field by field here so that a person sees all of them together,
    not one per attempt.
    """
    form.validate()  # the consent box; the other fields are read below, as the service reads them
    try:
        normalise_email(form.email.data)
    except InvalidInput as exc:
        form.email.errors = [EMAIL_ERROR_TEXT[str(exc)]()]
    if "name" in notice.fields:
        try:
            name = clean_name(form.name.data)
        except InvalidInput as exc:
            form.name.errors = [ERROR_TEXT[str(exc)]()]
        else:
            if "name" in notice.required and not name:
                form.name.errors = [ERROR_TEXT["required"]()]
    return [(field.id, str(field.errors[0])) for field in (form.email, form.name, form.consent) if field.errors]


def _sent_from_elsewhere(notice: Notice) -> Response:
    page = render_template(
        "errors/error.html",
        code=403,
        notice=notice,
        title=_("The form was sent from another website"),
        message=_(
            "This form is accepted only from its own page on this site. Nothing was changed. "
            "Please open the form here and send it again."
        ),
    )
    return make_response(page, 403)


# No Flask-WTF CSRF here: its token lives in a session cookie, and the public pages set no
# cookie. The form carries its own signed token (app/tokens.py) and a post from another
# site's page is refused by its Origin (app/security.py). Both are checked in the view,
# after the rate limit, so a flood of token-less POSTs is still counted and refused with 429.
@csrf.exempt
@bp.route("/<slug>/subscribe", methods=["GET", "POST"])
@limiter.limit(_subscribe_limit, methods=["POST"])
def subscribe(slug: str) -> ResponseReturnValue:
    notice = _notice_or_404(slug)
    lang = current_language(notice)
    form = SubscribeForm()
    problems: list[tuple[str | None, str]] = []
    if request.method == "POST":
        if sent_from_another_site(current_app.config["PUBLIC_URL"]):
            return _sent_from_elsewhere(notice)
        try:
            tokens.check_form_token(form.csrf_token.data, notice.slug)
        except (tokens.TokenInvalid, tokens.TokenExpired):
            problems.append((None, _form_expired()))
        problems.extend(_field_errors(form, notice))
        if not problems and form.website.data:
            # A bot filled the hidden field: answer as if all went well.
            current_app.logger.info("honeypot filled on %s sign-up; ignored", notice.slug)
            return redirect(url_for("public.check_inbox", slug=notice.slug, lang=lang), code=303)
        if not problems:
            try:
                consent.request_subscription(notice, form.email.data, form.name.data, _facts("form"))
            except InvalidInput as exc:  # the checks above should have caught it; say so all the same
                table = EMAIL_ERROR_TEXT if exc.field == "email" else ERROR_TEXT
                message = table.get(str(exc), ERROR_TEXT["invalid"])()
                getattr(form, exc.field).errors = [message]
                problems.append((exc.field, message))
            else:
                return redirect(url_for("public.check_inbox", slug=notice.slug, lang=lang), code=303)
    # Every rendering carries a fresh token, so the form shown with its errors can be sent again.
    form.csrf_token.data = tokens.form_token(notice.slug)
    page = render_template(
        "public/subscribe.html", notice=notice, text=notice.text(lang), form=form, lang=lang, problems=problems
    )
    return page, 400 if problems else 200


@bp.get("/<slug>/subscribe/sent")
def check_inbox(slug: str) -> ResponseReturnValue:
    notice = _notice_or_404(slug)
    return render_template("public/check_inbox.html", notice=notice, text=notice.text(current_language(notice)))


def _read(purpose: str, token: str, max_age: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The token's payload and its problem: (payload, None), (payload, "expired") or (None, "invalid")."""
    try:
        return tokens.read(purpose, token, max_age=max_age), None
    except tokens.TokenExpired as exc:
        return exc.payload, "expired"
    except tokens.TokenInvalid:
        return None, "invalid"


def _one_click_page(notice: Notice, lang: str, text: Mapping[str, str]) -> str:
    """The one-click answer of a notice version in a language, rendered once per process.

    It holds nothing of the person, so one rendering serves every request; mail
    clients send these by the thousand after a newsletter goes out.
    """
    pages = current_app.extensions.setdefault("one_click_pages", {})
    key = (notice.slug, notice.version, lang)
    if key not in pages:
        pages[key] = render_template("public/one_click_done.html", notice=notice, text=text, lang=lang)
    return pages[key]


def _invalid_link() -> Response:
    return _token_page("public/link_invalid.html", 400)


@csrf.exempt
@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> ResponseReturnValue:
    payload, problem = _read("confirm", token, current_app.config["CONFIRM_MAX_AGE"])
    if payload is None:
        return _invalid_link()
    notice = get_notice(payload.get("n"))
    if notice is None:
        return _invalid_link()
    text = notice.text(current_language(notice))
    if problem == "expired":
        return _token_page("public/confirm_expired.html", 410, notice=notice, text=text, token=token)
    if request.method != "POST":  # GET and HEAD only read
        return _token_page("public/confirm.html", notice=notice, text=text, token=token)
    outcome = consent.confirm(payload, _facts("page"))
    if outcome == "stale":
        return _token_page("public/link_stale.html", 410, notice=notice, text=text)
    return _token_page("public/confirmed.html", notice=notice, text=text, already=outcome == "already")


@csrf.exempt
@bp.post("/confirm/<token>/resend")
def resend(token: str) -> ResponseReturnValue:
    # A resend is allowed from an expired link too; the signature still proves
    # the link was ours, and the per-address limit bounds the mail sent.
    payload, _expired = _read("confirm", token, current_app.config["CONFIRM_MAX_AGE"])
    notice = get_notice(payload.get("n")) if payload else None
    if payload is None or notice is None:
        return _invalid_link()
    consent.resend_confirmation(payload, _facts("page"))
    return _token_page("public/check_inbox.html", notice=notice, text=notice.text(current_language(notice)))


def _manage_token(unsubscribe_payload: dict[str, Any]) -> str:
    """The manage link for the subscription an unsubscribe link names, in the same form."""
    slug = unsubscribe_payload["n"]
    if "s" in unsubscribe_payload:
        return tokens.link("manage", slug, unsubscribe_payload["s"], email_hash=unsubscribe_payload["a"])
    return tokens.make("manage", {"n": slug, "h": unsubscribe_payload.get("h")})


@csrf.exempt
@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> ResponseReturnValue:
    payload, problem = _read("unsubscribe", token)
    notice = get_notice(payload.get("n")) if payload else None
    if problem or payload is None or notice is None:
        return _invalid_link()
    lang = current_language(notice)
    text = notice.text(lang)
    # RFC 8058: only a POST whose body says List-Unsubscribe=One-Click acts;
    # the page's own button sends the same field. Anything else changes nothing.
    acts = request.method == "POST" and request.form.get("List-Unsubscribe") == "One-Click"
    from_page = request.form.get("via") == "page" if acts else False
    if acts and not from_page:
        # A mail client's one-click request: the short answer, nothing per person in it.
        consent.unsubscribe(payload, _facts("one-click"))
        return _one_click_page(notice, lang, text)
    manage = url_for("public.manage", token=_manage_token(payload))
    if request.method != "POST":  # GET and HEAD only read
        return _token_page("public/unsubscribe.html", notice=notice, text=text, token=token, manage=manage)
    if not acts:
        return _token_page(
            "public/unsubscribe.html", 400, notice=notice, text=text, token=token, stray=True, manage=manage
        )
    consent.unsubscribe(payload, _facts("page"))
    return _token_page("public/unsubscribed.html", notice=notice, text=text, manage=manage)
