"""Login, logout, sessions, roles and notices for the dashboard.

A session ends after 30 minutes without a request and 12 hours after its login,
whatever the cookie says; logout, a new password and deactivation end every
session of the user (the session key the user loader checks changes). Flask-Login's
"strong" session protection is off: it fingerprints the client with a header any
client sets (X-Forwarded-For), which protects nothing.

Only the dashboard has a session. Its cookie's path is the dashboard's
(``SESSION_COOKIE_PATH``), and outside the dashboard no session is opened at all
(``DashboardSessions``): subscribers' pages never read a cookie a marketer's browser
might still send, and never answer with one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, Request, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user

from .. import accounts
from ..database import id_param
from ..extensions import db, limiter, login_manager
from ..i18n import SESSION_KEY, on_dashboard, remembered_language
from ..models import User
from ..vocabulary import Role, values
from . import bp
from .forms import LoginForm

ROLE_RANK = {role: rank for rank, role in enumerate(reversed(values(Role)))}  # viewer 0 .. admin 2
LOGIN_RATE_LIMIT = "10 per minute;50 per hour"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 3600
_LOGGED_IN_AT, _SEEN_AT = "auth_at", "seen_at"
log = logging.getLogger(__name__)


class _NoSession(SecureCookieSession):
    """``session`` outside the dashboard: empty, and never saved, so never a cookie.

    Nothing there should write to it; if something does (Flask-Login loading a user from
    an old remember-me cookie, say), the write lasts for that request only and is logged,
    rather than failing the visitor's page.
    """

    def __init__(self, initial: Any = None) -> None:
        def on_update(session: _NoSession) -> None:
            session.accessed = True
            log.warning("a page outside the dashboard wrote %s to the session; not kept", sorted(session.keys()))

        super().__init__(initial)
        self.on_update = on_update


class DashboardSessions(SecureCookieSessionInterface):
    """The signed-cookie session, opened under /dashboard only; elsewhere a ``_NoSession``,
    which Flask neither reads from a cookie nor saves into one."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not on_dashboard(request.path):
            return _NoSession()
        return super().open_session(app, request)

    def is_null_session(self, obj: object) -> bool:
        return isinstance(obj, _NoSession) or super().is_null_session(obj)

    def get_cookie_path(self, app: Flask) -> str:
        # Under a path prefix (SCRIPT_NAME, e.g. PUBLIC_URL https://www.example.se/nyhetsbrev/)
        # the dashboard is at <prefix>/dashboard; a cookie for /dashboard would never come back.
        return request.script_root.rstrip("/") + app.config["SESSION_COOKIE_PATH"]


def init_login(app: Flask) -> None:
    app.session_interface = DashboardSessions()
    login_manager.init_app(app)
    login_manager.login_view = "dashboard.login"
    login_manager.session_protection = None  # see the module's docstring
    login_manager.login_message = None


def scope() -> frozenset[str]:
    """The notices whose people the logged-in user may see and act on."""
    return accounts.notices_of(current_user)


def session_is_live() -> bool:
    """Whether the logged-in user's session is within its idle and absolute limits (reads only)."""
    if not current_user.is_authenticated:
        return False
    now = int(time.time())
    logged_in_at, seen_at = session.get(_LOGGED_IN_AT), session.get(_SEEN_AT)
    idle = current_app.config.get("SESSION_IDLE_SECONDS", IDLE_SECONDS)
    longest = current_app.config.get("SESSION_MAX_SECONDS", MAX_SECONDS)
    return (
        isinstance(logged_in_at, int)
        and isinstance(seen_at, int)
        and now - seen_at <= idle
        and now - logged_in_at <= longest
    )


@bp.before_request
def _session_limits() -> ResponseReturnValue | None:
    """End a session that has been idle too long or lived too long; otherwise note this request."""
    if request.endpoint == "dashboard.login" or not current_user.is_authenticated:
        return None
    if not session_is_live():
        logout_user()
        _fresh_session()
        return _unauthorized()
    now = int(time.time())
    if now - session[_SEEN_AT] >= 30:  # the cookie is rewritten at most twice a minute
        session[_SEEN_AT] = now
    return None


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
def _unauthorized() -> ResponseReturnValue:
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
    # Only a plain path inside the dashboard: never an open redirect, never a header's control character.
    if (
        target
        and target.startswith("/dashboard")
        and "//" not in target
        and "\\" not in target
        and target.isascii()
        and target.isprintable()
    ):
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
def login() -> ResponseReturnValue:
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data or "", form.password.data or "")
        if user is not None:
            _fresh_session()
            login_user(user)
            session[_LOGGED_IN_AT] = session[_SEEN_AT] = int(time.time())
            return redirect(_safe_next(request.args.get("next")))
        flash(_("Wrong e-mail address or password."), "error")
        return render_template("dashboard/login.html", form=form), 401
    return render_template("dashboard/login.html", form=form)


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    accounts.end_sessions(current_user.id)  # every session of the user, on every device
    logout_user()
    _fresh_session()
    return redirect(url_for("dashboard.login"))
