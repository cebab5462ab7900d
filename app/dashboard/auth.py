"""Login, logout and roles for the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user

from .. import accounts
from ..database import id_param
from ..extensions import db, limiter, login_manager
from ..i18n import SESSION_KEY, remembered_language
from ..models import User
from . import bp
from .forms import LoginForm

ROLE_RANK = {"viewer": 0, "marketer": 1, "admin": 2}
LOGIN_RATE_LIMIT = "10 per minute;50 per hour"


def init_login(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "dashboard.login"
    login_manager.session_protection = "strong"
    login_manager.login_message = None  # type: ignore[assignment]


@login_manager.user_loader
def _load(user_id: str) -> User | None:
    ident, _, key = user_id.partition(":")
    number = id_param(ident)
    if number is None:
        return None
    user = db.session.get(User, number)
    # A changed password (new session key) or a deactivated account ends old sessions.
    if user is None or user.session_key != key or not user.active:
        return None
    return user


@login_manager.unauthorized_handler
def _unauthorized():  # type: ignore[no-untyped-def]
    if request.method == "GET":
        return redirect(url_for("dashboard.login", next=request.path))
    abort(401)


def requires(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route needs a logged-in user with at least ``role``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if ROLE_RANK.get(current_user.role, -1) < ROLE_RANK[role]:
                abort(403)
            return view(*args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]
        return wrapped

    return decorate


def _safe_next(target: str | None) -> str:
    # Only a path inside the dashboard: never an open redirect.
    if target and target.startswith("/dashboard") and "//" not in target and "\\" not in target:
        return target
    return url_for("dashboard.overview")


def _fresh_session() -> None:
    """A new session at login and logout (no fixation); only the language choice carries over."""
    lang = remembered_language()
    session.clear()
    if lang is not None:
        session[SESSION_KEY] = lang


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(LOGIN_RATE_LIMIT, methods=["POST"])
def login():  # type: ignore[no-untyped-def]
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data or "", form.password.data or "")
        if user is not None:
            _fresh_session()
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        flash(_("Wrong e-mail address or password."), "error")
        return render_template("dashboard/login.html", form=form), 401
    return render_template("dashboard/login.html", form=form)


@bp.post("/logout")
@login_required
def logout():  # type: ignore[no-untyped-def]
    logout_user()
    _fresh_session()
    return redirect(url_for("dashboard.login"))
