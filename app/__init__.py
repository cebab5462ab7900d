"""The application factory. Reads as a list of what the service is made of."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dotenv import load_dotenv
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import labels
from .config import REPO_ROOT, load_settings
from .logs import configure_stderr


def create_app(test_config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Flask:
    """Build the app. ``env`` replaces ``os.environ`` (tests); ``test_config`` overrides last."""
    if env is None:
        load_dotenv(REPO_ROOT / ".env", override=False)
    # Before the settings are read, so their own warnings come out in the chosen format.
    configure_stderr((os.environ if env is None else env).get("LOG_FORMAT", ""))
    settings = load_settings(dict(env) if env is not None else None)
    app = Flask(
        __name__,
        instance_path=settings["INSTANCE_PATH"],
        template_folder=str(REPO_ROOT / "templates"),
        static_folder=str(REPO_ROOT / "static"),
    )
    app.config.from_mapping(settings)
    if test_config:
        app.config.update(test_config)

    configure_logging(app)
    load_notice_files(app)
    register_body_limit(app)
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_security(app)
    register_operations(app)
    register_mail_signing(app)
    register_commands(app)
    prepare_database(app)
    return app


def configure_logging(app: Flask) -> None:
    from .logs import configure

    configure(app)


def load_notice_files(app: Flask) -> None:
    from .notices import load_notices

    app.extensions["notices"] = load_notices(app.config["NOTICES_DIR"], app.config["NOTICE_PROVIDER_IDS"])


def register_body_limit(app: Flask) -> None:
    from .security import register_body_limit as register
    from .security import register_input_guard

    register(app)
    register_input_guard(app)


def register_extensions(app: Flask) -> None:
    from . import database  # noqa: F401  (installs the SQLite connection hooks)
    from .extensions import babel, csrf, db, limiter, migrate
    from .i18n import current_language, select_locale, switch_url

    db.init_app(app)
    migrate.init_app(app, db, directory=str(REPO_ROOT / "migrations"))
    # The limiter's check runs before CSRF's, so a flood is refused cheaply.
    limiter.init_app(app)
    csrf.init_app(app)
    babel.init_app(
        app,
        default_locale="sv",
        locale_selector=select_locale,
        default_translation_directories=str(REPO_ROOT / "app" / "translations"),
    )
    app.jinja_env.globals["current_lang"] = current_language
    app.jinja_env.globals["language_switch_url"] = switch_url
    # Codes in words, in the page's language: ``labels.status(sub.status)`` and so on.
    app.jinja_env.globals["labels"] = labels
    if app.config["TRUSTED_PROXY_COUNT"]:
        count = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]


def register_blueprints(app: Flask) -> None:
    from . import after_response, import_jobs, provider_sync, subscriber_mail  # noqa: F401  (register the outbox handlers)
    from .api import bp as api_bp
    from .dashboard import bp as dashboard_bp
    from .dashboard.auth import init_login
    from .extensions import csrf
    from .outbox import run_now
    from .public import bp as public_bp
    from .webhooks import bp as webhooks_bp

    app.register_blueprint(public_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(api_bp)
    csrf.exempt(api_bp)  # bearer tokens, no cookies: nothing for a forged form to ride on
    init_login(app)
    after_response.init_app(app, run_now)


def register_errorhandlers(app: Flask) -> None:
    from .errors import register_errorhandlers as register

    register(app)


def register_security(app: Flask) -> None:
    from .security import register_security_headers

    register_security_headers(app)


def register_operations(app: Flask) -> None:
    from . import metrics, readiness

    metrics.init_app(app)
    readiness.init_app(app)


def register_mail_signing(app: Flask) -> None:
    from .config import ConfigError
    from .dkim_signing import DkimKeyError, DkimSigner

    if not app.config["DKIM_DOMAIN"]:
        return
    try:
        app.extensions["dkim_signer"] = DkimSigner(
            app.config["DKIM_DOMAIN"], app.config["DKIM_SELECTOR"], app.config["DKIM_PRIVATE_KEY"]
        )
    except DkimKeyError as exc:
        raise ConfigError(str(exc)) from None


def register_commands(app: Flask) -> None:
    from .cli import register

    register(app)


def prepare_database(app: Flask) -> None:
    from .schema import record_notice_versions, upgrade_if_needed

    with app.app_context():
        if app.config["AUTO_MIGRATE"]:
            upgrade_if_needed()
        record_notice_versions()
