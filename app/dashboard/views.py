"""Dashboard pages: thin; reads come from queries.py, changes from app/consent/.

A user sees and acts on the people of their own notices only (``scope()``).
Anything outside them (a subscription, a job, an import, a token, a notice)
answers 404, exactly as something that does not exist: a page never confirms
that another controller holds someone. Every answer here is sent with
``Cache-Control: no-store`` (app/security.py, by path).
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from .. import accounts, consent, import_jobs, importer, ledger, outbox, retention, tallies
from ..addresses import InvalidInput
from ..database import id_param
from ..events import events_of, serialize_event
from ..extensions import db
from ..models import ContactImport, OutboxJob, Subscription, utcnow
from ..notices import Notice, get_notice
from ..notices import notices as registered_notices
from ..vocabulary import Status, values
from . import bp, queries, words
from .auth import requires, scope
from .forms import ActionForm, ContactForm, ImportForm, MappingForm, RectifyForm, TokenForm, UserForm

STATUSES = values(Status)


def _facts() -> consent.Facts:
    return consent.Facts(channel="dashboard", actor=current_user.actor)


def _subscription_or_404(ref: str) -> Subscription:
    sub = db.session.execute(
        db.select(Subscription).where(Subscription.ref == ref, Subscription.notice.in_(list(scope())))
    ).scalar_one_or_none()
    if sub is None:
        abort(404)
    return sub


def _my_notices() -> list[Notice]:
    mine = scope()
    return [notice for notice in registered_notices().values() if notice.slug in mine]


def _my_notice_or_404(slug: str | None) -> Notice:
    notice = get_notice(slug)
    if notice is None or notice.slug not in scope():
        abort(404)
    return notice


@bp.get("/")
@requires("viewer")
def overview() -> ResponseReturnValue:
    notices = _my_notices()
    mine = scope()
    # Bulk writes with no worker running (a load by hand, say) can leave many rows of tallies: the
    # first visit after folds them once, instead of every visit summing them.
    tallies.fold_if_many()
    charts = {notice.slug: queries.chart(notice) for notice in notices}
    health = outbox.status(notices=mine, cap=outbox.DASHBOARD_COUNT_CAP)
    deadline = queries.OPT_OUT_DEADLINE_HOURS * 3600
    oldest = health["oldest_pending_opt_out_age_seconds"]
    return render_template(
        "dashboard/overview.html",
        notices=notices,
        counts=queries.status_counts(mine),
        suppressions=queries.suppression_counts(mine),
        charts=charts,
        health=health,
        waiting=_merged(_in_words(health["waiting_for_configuration"], dead=False)),
        dead_letters=_in_words(health["dead_letters"], dead=True),
        deadline_hours=queries.OPT_OUT_DEADLINE_HOURS,
        deadline_used=oldest / deadline if oldest is not None else None,
        action=ActionForm(),
        versions={notice.slug: queries.versions(notice) for notice in notices},
        review_due={notice.slug: queries.review_due(notice) for notice in notices},
        uninformed=importer.uninformed_contacts(mine, older_than_days=UNINFORMED_AFTER_DAYS),
        # Imported before the service kept Art. 14 evidence: not known to be uninformed.
        unknown_if_informed=importer.unknown_if_informed(mine),
        uninformed_days=UNINFORMED_AFTER_DAYS,
        evidence_waiting=ledger.pending(db.session, notices=mine),
    )


# Imported contacts not informed this long after the import are listed (Art. 14(3)(a) gives a
# month; 25 days leaves time to act).
UNINFORMED_AFTER_DAYS = 25


def _in_words(jobs: list[dict[str, Any]], *, dead: bool) -> list[dict[str, Any]]:
    """Outbox jobs as a marketer reads them: the notice's name, the job's kind and its problem in words."""
    shown = []
    for job in jobs:
        notice = get_notice(job["notice"])
        provider_kind = notice.provider["kind"] if notice else None
        shown.append(
            {
                **job,
                "notice_name": notice.controller["name"] if notice else job["notice"],
                "kind_words": words.job_kind(job["kind"]),
                "problem": words.sync_problem(job["reason"], kind=job["kind"], provider_kind=provider_kind, dead=dead),
            }
        )
    return shown


def _merged(waiting: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per notice and problem: its sign-up syncs and opt-out syncs wait for the same setting."""
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for job in waiting:
        key = (job["notice_name"], job["problem"])
        if key in lines:
            lines[key]["jobs"] += job["jobs"]
            lines[key]["more"] = lines[key]["more"] or job["more"]
        else:
            lines[key] = dict(job)
    return list(lines.values())


@bp.post("/outbox/<int(max=2147483647):job_id>/<any(retry, discard):what>")
@requires("marketer")
def outbox_action(job_id: int, what: str) -> ResponseReturnValue:
    job = db.session.get(OutboxJob, job_id)
    if job is None or job.notice not in scope():
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    # The state change and the evidence naming the user are one transaction.
    change = outbox.retry_dead if what == "retry" else outbox.discard_dead
    done = change([job_id], actor=current_user.actor, channel="dashboard", notices=scope())
    if not done:
        flash(_("That job is no longer a dead letter."), "error")
    return redirect(url_for("dashboard.overview"))


@bp.get("/subscribers")
@requires("viewer")
def subscribers() -> ResponseReturnValue:
    notice = request.args.get("notice") or None
    status = request.args.get("status") or None
    search = (request.args.get("q") or "").strip().lower()[:254] or None
    after = request.args.get("after", "")
    if notice is not None:
        _my_notice_or_404(notice)
    if status is not None and status not in STATUSES:
        abort(400)
    version = request.args.get("version") or None
    if version is not None and not consent.HASH_RE.match(version):
        abort(400)
    review = request.args.get("review") == "due"
    if review and notice is None:
        abort(400)
    rows, next_after = queries.subscribers(
        notices=scope(),
        notice=notice,
        status=status,
        search=search,
        after=id_param(after),
        version=version,
        review_due_for=get_notice(notice) if review else None,
    )
    return render_template(
        "dashboard/subscribers.html",
        rows=rows,
        next_after=next_after,
        notices=_my_notices(),
        statuses=STATUSES,
        chosen={"notice": notice, "status": status, "q": search or "", "version": version, "review": review},
    )


@bp.get("/subscribers/<ref>")
@requires("viewer")
def subject(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    notice = get_notice(sub.notice)
    form = RectifyForm(data={"name": sub.name or "", "email": sub.email})
    return render_template(
        "dashboard/subject.html",
        sub=sub,
        notice=notice,
        events=[serialize_event(event, detail) for event, detail in events_of([sub.ref])],  # as the export shows them
        form=form,
        action=ActionForm(),
        relationships=consent.RELATIONSHIPS,
        review_due=_review_due(sub, notice),
    )


def _review_due(sub: Subscription, notice: Notice | None) -> bool:
    query = retention.review_due_query(notice) if notice else None
    if query is None or sub.relationship != "customer":
        return False
    return db.session.execute(query.where(Subscription.id == sub.id)).first() is not None


@bp.post("/subscribers/<ref>/contact")
@requires("marketer")
def record_contact(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    notice = get_notice(sub.notice)
    form = ContactForm()
    if notice is None or not form.validate_on_submit():
        flash(_("Please check the values."), "error")
        return redirect(url_for("dashboard.subject", ref=ref), code=303)
    day = form.last_contact.data
    at = datetime(day.year, day.month, day.day) if day else None
    relationship = form.relationship.data or None
    try:
        consent.record_contact(notice, sub.email, at, relationship, _facts())
    except InvalidInput:
        flash(_("Please check the values."), "error")
    else:
        flash(_("Saved."), "info")
    return redirect(url_for("dashboard.subject", ref=ref), code=303)


@bp.post("/subscribers/<ref>/reviewed")
@requires("marketer")
def mark_reviewed(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    if not ActionForm().validate_on_submit():
        abort(400)
    consent.mark_reviewed(sub.ref, _facts())
    flash(_("The review was recorded."), "info")
    return redirect(url_for("dashboard.subject", ref=ref), code=303)


# A POST: the export is itself recorded as evidence, and GET never changes state
# (a link prefetcher or scanner following it must not write to the ledger).
@bp.post("/subscribers/<ref>/export.json")
@requires("viewer")
def export(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    if not ActionForm().validate_on_submit():
        abort(400)
    data = consent.export_subject(sub.email, notices=scope())
    consent.record_action("subject_exported", sub.ref, sub.notice, _facts())
    response = make_response(json.dumps(data, indent=2, ensure_ascii=False))
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="subject-{sub.ref}.json"'
    return response


@bp.get("/subscribers/<ref>/certificate")
@requires("viewer")
def certificate(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    check = ledger.check(db.session)  # the chain, the head's signature and the checkpoint, as `ledger verify`
    return render_template(
        "dashboard/certificate.html",
        sub=sub,
        notice=get_notice(sub.notice),
        events=[serialize_event(event, detail) for event, detail in events_of([sub.ref])],
        check=check,
        generated_at=utcnow(),
    )


@bp.post("/subscribers/<ref>/rectify")
@requires("marketer")
def rectify(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    form = RectifyForm()
    if not form.validate_on_submit():
        abort(400)
    messages = {
        "held": _("That address is already held under this notice."),
        "suppressed": _("That address has opted out; it cannot be put on the list by a correction."),
    }
    try:
        changed = consent.rectify(sub.ref, form.name.data, form.email.data, _facts())
    except InvalidInput as exc:
        flash(messages.get(str(exc), _("Please check the values.")), "error")
        return redirect(url_for("dashboard.subject", ref=ref))
    labels = {"name": _("Name"), "email": _("E-mail address")}
    fields = ", ".join(str(labels.get(field, field)) for field in changed)
    flash(_("Corrected: %(fields)s.", fields=fields) if changed else _("Nothing changed."), "info")
    return redirect(url_for("dashboard.subject", ref=ref))


@bp.route("/subscribers/<ref>/erase", methods=["GET", "POST"])
@requires("marketer")
def erase(ref: str) -> ResponseReturnValue:
    sub = _subscription_or_404(ref)
    form = ActionForm()
    if request.method == "POST":
        if not form.validate_on_submit() or request.form.get("confirm") != sub.email:
            flash(_("Type the address exactly to confirm the erasure."), "error")
            return render_template("dashboard/erase.html", sub=sub, form=form), 400
        consent.erase_subscription(sub.ref, _facts())
        flash(_("The subscription was erased. A suppression entry and anonymous evidence remain."), "info")
        return redirect(url_for("dashboard.subscribers"))
    return render_template("dashboard/erase.html", sub=sub, form=form)


@bp.route("/tokens", methods=["GET", "POST"])
@requires("admin")
def api_tokens() -> ResponseReturnValue:
    form = TokenForm()
    created = None
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        try:
            created = accounts.create_token(
                form.name.data or "",
                request.form.getlist("scopes"),
                current_user.actor,
                notices=request.form.getlist("notices"),
                allowed=scope(),
            )
        except accounts.AccountError as exc:
            flash(str(exc), "error")
    return render_template(
        "dashboard/tokens.html",
        form=form,
        scopes=accounts.SCOPES,
        notices=_my_notices(),
        tokens=accounts.list_tokens(within=scope()),
        created=created,
        action=ActionForm(),
    )


@bp.post("/tokens/<int(max=2147483647):token_id>/revoke")
@requires("admin")
def revoke_token(token_id: int) -> ResponseReturnValue:
    if not ActionForm().validate_on_submit():
        abort(400)
    if not accounts.revoke_token(token_id, current_user.actor, within=scope()):
        abort(404)
    flash(_("The token was revoked."), "info")
    return redirect(url_for("dashboard.api_tokens"))


@bp.route("/import", methods=["GET", "POST"])
@requires("marketer")
def import_upload() -> ResponseReturnValue:
    form = ImportForm()
    notices = _my_notices()
    if request.method == "POST":
        notice = _my_notice_or_404(form.notice.data)
        upload = request.files.get("file")
        source_date = form.source_date.data
        if not form.validate_on_submit() or source_date is None:
            problem = _("Please fill in every field; the source date as YYYY-MM-DD.")
        elif upload is None or not upload.filename:
            problem = _("Choose a CSV file.")
        else:
            spec: dict[str, Any] = {
                "lawful_basis": form.lawful_basis.data,
                "source": (form.source.data or "").strip(),
                "source_date": source_date.isoformat(),
                "proof": (form.proof.data or "").strip() or None,
            }
            facts = importer.ImportSpec(
                notice=notice,
                email_column="-",
                name_column=None,
                lawful_basis=spec["lawful_basis"],
                source=spec["source"],
                source_date=source_date,
                proof=spec["proof"],
                actor=current_user.actor,
            )
            try:
                facts.check()
                record = import_jobs.store_upload(upload.stream, upload.filename, notice.slug, spec, current_user.actor)
            except importer.ImportError_ as exc:
                problem = str(exc)
            else:
                # Contacts obtained over a month ago: Art. 14(3)(a)'s deadline to inform them has passed.
                late = facts.art14_warning(date.today(), before_import=True)  # nothing imported yet
                if late:
                    flash(late, "warning")
                return redirect(url_for("dashboard.import_status", import_id=record.id))
        flash(problem, "error")
        return render_template("dashboard/import.html", form=form, notices=notices, notice=notice), 400
    # The form is for one notice at a time, so that it offers only the bases this
    # notice allows for imports (no script needed to narrow the choice).
    if not notices:
        abort(404)
    notice = _my_notice_or_404(request.args.get("notice") or notices[0].slug)
    return render_template("dashboard/import.html", form=form, notices=notices, notice=notice)


@bp.route("/imports/<int(max=2147483647):import_id>", methods=["GET", "POST"])
@requires("marketer")
def import_status(import_id: int) -> ResponseReturnValue:
    record = db.session.get(ContactImport, import_id)
    if record is None or record.notice not in scope():
        abort(404)
    form = MappingForm()
    notice = get_notice(record.notice)
    if request.method == "POST":
        email_column = form.email_column.data
        if not form.validate_on_submit() or email_column is None or email_column not in record.columns:
            abort(400)
        optional = {
            key: getattr(form, key).data or None
            for key in ("name_column", "last_contact_column", "relationship_column", "added_column")
        }
        if any(column is not None and column not in record.columns for column in optional.values()):
            abort(400)
        if optional["name_column"] is not None and (notice is None or "name" not in notice.fields):
            # Dropping the column quietly would let the marketer believe names were kept.
            flash(
                _(
                    "%(notice)s does not collect names, so the column %(column)s cannot be imported."
                    " Choose no name column.",
                    notice=words.notice_name(record.notice),
                    column=optional["name_column"],
                ),
                "error",
            )
            return _import_page(record, form, notice), 400
        try:
            import_jobs.queue(import_id, email_column, optional, dry_run=request.form.get("mode") != "import")
        except importer.ImportError_ as exc:
            flash(str(exc), "error")
        return redirect(url_for("dashboard.import_status", import_id=import_id))
    response = make_response(_import_page(record, form, notice))
    if record.state in ("queued", "running"):
        response.headers["Refresh"] = "2"  # progress without a script
    return response


# How long an import may wait in the queue before the page says that no worker seems to run.
NO_WORKER_AFTER_SECONDS = 10


def _import_page(record: ContactImport, form: MappingForm, notice: Notice | None) -> str:
    waited = _seconds_queued(record) if record.state == "queued" else None
    return render_template(
        "dashboard/import_status.html",
        record=record,
        form=form,
        notice=notice,
        collects_names=notice is not None and "name" in notice.fields,
        no_worker=waited is not None and waited >= NO_WORKER_AFTER_SECONDS,
        waited=waited,
    )


def _seconds_queued(record: ContactImport) -> float | None:
    """How long the import's job has waited unclaimed, from the job's own timestamps."""
    jobs = db.session.execute(
        select(OutboxJob.created_at, OutboxJob.payload).where(
            OutboxJob.kind == import_jobs.JOB_KIND, OutboxJob.notice == record.notice, OutboxJob.state == "pending"
        )
    ).all()
    queued = [created for created, payload in jobs if (payload or {}).get("import") == record.id]
    return (utcnow() - max(queued)).total_seconds() if queued else None


@bp.route("/users", methods=["GET", "POST"])
@requires("admin")
def users() -> ResponseReturnValue:
    """The staff of the admin's own controllers: create, list, deactivate. An admin hands on
    only the notices they hold, and sees only users whose notices all lie within theirs."""
    form = UserForm()
    status = 200
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        try:
            user = accounts.create_user(
                form.email.data or "",
                form.role.data or "",
                form.password.data or "",
                request.form.getlist("notices"),
                allowed=scope(),
            )
        except accounts.AccountError as exc:
            flash(str(exc), "error")
            status = 400
        else:
            flash(_("The user %(email)s was created.", email=user.email), "info")
            return redirect(url_for("dashboard.users"), code=303)
    page = render_template(
        "dashboard/users.html",
        form=form,
        roles=accounts.ROLES,
        notices=_my_notices(),
        users=accounts.list_users(within=scope()),
        action=ActionForm(),
    )
    return page, status


@bp.post("/users/<int(max=2147483647):user_id>/deactivate")
@requires("admin")
def deactivate_user(user_id: int) -> ResponseReturnValue:
    if not ActionForm().validate_on_submit():
        abort(400)
    if not accounts.deactivate_user_within(user_id, within=scope()):
        abort(404)
    flash(_("The user was deactivated; their sessions have ended."), "info")
    return redirect(url_for("dashboard.users"), code=303)
