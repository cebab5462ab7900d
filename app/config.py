"""Settings, read from the environment only, parsed strictly, failing fast.

Every setting the service understands is read by one of the small readers that
``load_settings`` puts together, one per group of settings (keys, database,
mail, limits, outbox, providers, notices ...); unknown values are rejected with
a message naming the variable, so a typo in a deployment stops start-up instead
of silently falling back to a default. Nothing else reads the environment: the
providers and the notices take their settings from the config keys made here.
A message about a secret never shows its value.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .notice_schema import PROVIDER_TABLES, provider_keys

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("development", "production", "testing")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME_RE = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _flag(name: str, env: Mapping[str, str], default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0 (or true/false), not {raw!r}")


def _int(name: str, env: Mapping[str, str], default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def _kept_secret(instance: Path, filename: str) -> str:
    """A random secret generated once and kept in the instance folder.

    Only used outside production, so the embedded default works with nothing
    set up while tokens and suppression hashes survive a restart.
    """
    path = instance / filename
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    log.info("generated %s in the instance folder", filename)
    return value


# A key an operator types (a word, a date) is guessable offline from any signed link or
# suppression hash; 32 bytes is what `openssl rand -hex 16` or `secrets.token_urlsafe(24)`
# gives at least, and what the generated keys exceed.
MIN_KEY_BYTES = 32


def _check_key_lengths(secret_key: str, pepper: str, fallbacks: list[str]) -> None:
    for name, value in (("SECRET_KEY", secret_key), ("SUPPRESSION_PEPPER", pepper)):
        if len(value.encode()) < MIN_KEY_BYTES:
            raise ConfigError(
                f"{name} must be at least {MIN_KEY_BYTES} bytes in production (it is {len(value.encode())}); "
                "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
    for position, value in enumerate(fallbacks, 1):
        if len(value.encode()) < MIN_KEY_BYTES:
            # Accepted: refusing it would break every link mailed under it (unsubscribe links
            # never expire), and rotating away from a short key is what the fallback is for.
            log.warning(
                "SECRET_KEY_FALLBACKS entry %d is shorter than %d bytes: drop it once the links it signed "
                "have had their time",
                position,
                MIN_KEY_BYTES,
            )


def _private_folder(path: Path) -> None:
    """Create ``path`` readable by the service's user only (0700): it holds the SQLite
    database, the generated keys, written mail and uploads. An existing folder is left
    as its owner made it, with a warning if others may look inside."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("the instance folder %s is open to other users (mode %o); chmod 700 it", path, mode)
    else:
        path.chmod(0o700)  # mkdir's mode passes through the umask; this is exact


MAX_PUBLIC_URL = 200


def _public_url(raw: str, production: bool) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"PUBLIC_URL must be an absolute http(s) URL, not {raw!r}")
    if parts.query or parts.fragment:
        raise ConfigError("PUBLIC_URL must not carry a query or fragment")
    if not _fits_a_header_line(raw):
        # Every link is written into a mail header as is, on one line: no spaces, no
        # encoding, and short enough that receivers never see it folded.
        raise ConfigError(f"PUBLIC_URL must be ASCII without spaces, at most {MAX_PUBLIC_URL} characters")
    if production and parts.scheme != "https":
        # RFC 8058 requires an HTTPS List-Unsubscribe URI for one-click.
        log.warning("PUBLIC_URL is not https: mail clients will not offer one-click unsubscribe")
    return raw.rstrip("/")


def _fits_a_header_line(raw: str) -> bool:
    return len(raw) <= MAX_PUBLIC_URL and raw.isascii() and not any(c.isspace() for c in raw)


# --- the readers: one per group of settings, each answering its part of the config ---


def _app_env(env: Mapping[str, str]) -> str:
    app_env = env.get("APP_ENV", "development").strip() or "development"
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {app_env!r}")
    return app_env


def _instance(env: Mapping[str, str]) -> Path:
    instance = Path(env.get("INSTANCE_PATH") or REPO_ROOT / "instance").resolve()
    _private_folder(instance)
    return instance


def _required_in_production(env: Mapping[str, str], production: bool) -> None:
    missing = [name for name in ("SECRET_KEY", "PUBLIC_URL", "SUPPRESSION_PEPPER") if not env.get(name)]
    if production and missing:
        raise ConfigError("APP_ENV=production needs " + ", ".join(missing) + " (see README.md, Settings)")


def _keys(env: Mapping[str, str], instance: Path, production: bool) -> dict[str, Any]:
    """The signing key (with the retired ones still verifying) and the suppression pepper."""
    _required_in_production(env, production)
    secret_key = env.get("SECRET_KEY") or _kept_secret(instance, "secret_key")
    pepper = env.get("SUPPRESSION_PEPPER") or _kept_secret(instance, "suppression_pepper")
    if pepper == secret_key:
        raise ConfigError("SUPPRESSION_PEPPER must differ from SECRET_KEY")
    fallbacks = [k.strip() for k in env.get("SECRET_KEY_FALLBACKS", "").split(",") if k.strip()]
    if production:
        _check_key_lengths(secret_key, pepper, fallbacks)
    return {"SECRET_KEY": secret_key, "SECRET_KEY_FALLBACKS": fallbacks, "SUPPRESSION_PEPPER": pepper}


def _database(env: Mapping[str, str], instance: Path) -> dict[str, Any]:
    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'consent.sqlite3'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://") :]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        # A server connection may have been dropped while pooled: app/database.py checks one
        # at checkout when it is suspect, instead of asking every one (pool_pre_ping).
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": False},
        "AUTO_MIGRATE": _flag("AUTO_MIGRATE", env, default=True),
    }


WEBHOOK_SECRETS = ("MAILCHIMP_WEBHOOK_SECRET", "MAILCHIMP_WEBHOOK_SIGNING_SECRET", "APSIS_WEBHOOK_SECRET")


def _webhook_secrets(env: Mapping[str, str]) -> dict[str, str]:
    webhook_secrets = {}
    for name in WEBHOOK_SECRETS:
        value = env.get(name, "").strip()
        if value and (len(value) < 16 or not re.fullmatch(r"[A-Za-z0-9_\-.~]+", value)):
            raise ConfigError(f"{name} must be at least 16 URL-safe characters (letters, digits, - _ . ~)")
        webhook_secrets[name] = value
    return webhook_secrets


def _smtp(env: Mapping[str, str]) -> dict[str, Any]:
    smtp_ssl = _flag("SMTP_SSL", env)
    smtp_starttls = _flag("SMTP_STARTTLS", env)
    if smtp_ssl and smtp_starttls:
        raise ConfigError("set SMTP_SSL or SMTP_STARTTLS, not both")
    return {
        "SMTP_HOST": env.get("SMTP_HOST", ""),
        "SMTP_PORT": _int("SMTP_PORT", env, 465 if smtp_ssl else 587 if smtp_starttls else 25, 1),
        "SMTP_USER": env.get("SMTP_USER", ""),
        "SMTP_PASSWORD": env.get("SMTP_PASSWORD", ""),
        "SMTP_STARTTLS": smtp_starttls,
        "SMTP_SSL": smtp_ssl,
        "SMTP_TIMEOUT": _int("SMTP_TIMEOUT", env, 15, 1),
        "MAIL_FROM": env.get("MAIL_FROM") or "nyhetsbrev@localhost",
    }


def _dkim(env: Mapping[str, str]) -> dict[str, str]:
    dkim = {name: env.get(name, "").strip() for name in ("DKIM_DOMAIN", "DKIM_SELECTOR", "DKIM_PRIVATE_KEY")}
    if any(dkim.values()) and not all(dkim.values()):
        raise ConfigError("set all of DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY, or none of them")
    for name in ("DKIM_DOMAIN", "DKIM_SELECTOR"):
        if dkim[name] and not DNS_NAME_RE.fullmatch(dkim[name]):
            raise ConfigError(f"{name} must be a DNS name (letters, digits, dashes, dots), not {dkim[name]!r}")
    return dkim


def _limits(env: Mapping[str, str]) -> dict[str, Any]:
    """Rate limits, per-address counts, link lifetimes and request sizes."""
    return {
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URL") or "memory://",
        "RATELIMIT_HEADERS_ENABLED": True,
        "SUBSCRIBE_RATE_LIMIT": env.get("SUBSCRIBE_RATE_LIMIT") or "20 per hour",
        "CONFIRMATIONS_PER_ADDRESS": _int("CONFIRMATIONS_PER_ADDRESS", env, 3, 1),
        "CONFIRM_MAX_AGE": _int("CONFIRM_MAX_AGE", env, 7 * 24 * 3600, 60),
        "DATA_LINK_MAX_AGE": _int("DATA_LINK_MAX_AGE", env, 3600, 60),
        "DATA_REQUESTS_PER_ADDRESS": _int("DATA_REQUESTS_PER_ADDRESS", env, 3, 1),
        "SCANNER_WINDOW_SECONDS": _int("SCANNER_WINDOW_SECONDS", env, 10, 0),
        "TRUSTED_PROXY_COUNT": _int("TRUSTED_PROXY_COUNT", env, 0, 0),
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        "IMPORT_MAX_BYTES": _int("IMPORT_MAX_MB", env, 200, 1) * 1024 * 1024,
    }


def _outbox(env: Mapping[str, str], instance: Path) -> dict[str, Any]:
    """The outbox workers, and the signed ledger head they renew."""
    return {
        "OUTBOX_MAX_ATTEMPTS": _int("OUTBOX_MAX_ATTEMPTS", env, 12, 1),
        # The signed ledger head outside the database (see ledger.py); keep it where the
        # database's users cannot write. The outbox worker renews it this often.
        "LEDGER_CHECKPOINT_FILE": env.get("LEDGER_CHECKPOINT_FILE") or str(instance / "ledger-checkpoint.json"),
        "LEDGER_CHECKPOINT_SECONDS": _int("LEDGER_CHECKPOINT_SECONDS", env, 300, 1),
        # How long written evidence may wait for its place in the chain (the sequencer's promise).
        "LEDGER_MAX_MERGE_DELAY_SECONDS": _int("LEDGER_MAX_MERGE_DELAY_SECONDS", env, 60, 1),
        "OUTBOX_LEASE_SECONDS": _int("OUTBOX_LEASE_SECONDS", env, 120, 5),
        "OUTBOX_CLAIM_SIZE": _int("OUTBOX_CLAIM_SIZE", env, 5000, 1),
    }


APSIS_DEFAULT_URL = "https://api.apsis.one"
# A Mailchimp key ends in its data centre (``-us21``), which becomes part of a host name.
MAILCHIMP_DATA_CENTRE_RE = re.compile(r"[a-z]+[0-9]+")


def _credential(name: str, env: Mapping[str, str]) -> str:
    """A provider credential as given; the message never shows the value."""
    value = env.get(name, "")
    if value and (not value.isprintable() or any(c.isspace() for c in value)):
        raise ConfigError(f"{name} must not contain spaces or control characters")
    return value


def _api_url(name: str, env: Mapping[str, str]) -> str:
    """A provider's base URL, for a proxy or a test fake; the message never shows the value
    (a proxy's URL may carry its own credentials)."""
    value = env.get(name, "")
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment):
        raise ConfigError(f"{name} must be an absolute http(s) URL without a query")
    return value


def _mailchimp(env: Mapping[str, str]) -> dict[str, str]:
    api_key = _credential("MAILCHIMP_API_KEY", env)
    if "-" in api_key and not MAILCHIMP_DATA_CENTRE_RE.fullmatch(api_key.rsplit("-", 1)[-1]):
        raise ConfigError("MAILCHIMP_API_KEY must end in its data centre, as -us21")
    return {"MAILCHIMP_API_KEY": api_key, "MAILCHIMP_API_URL": _api_url("MAILCHIMP_API_URL", env)}


def _apsis(env: Mapping[str, str]) -> dict[str, str]:
    client_id = _credential("APSIS_CLIENT_ID", env)
    client_secret = _credential("APSIS_CLIENT_SECRET", env)
    if bool(client_id) != bool(client_secret):
        raise ConfigError("set both APSIS_CLIENT_ID and APSIS_CLIENT_SECRET, or neither")
    return {
        "APSIS_CLIENT_ID": client_id,
        "APSIS_CLIENT_SECRET": client_secret,
        "APSIS_API_URL": _api_url("APSIS_API_URL", env) or APSIS_DEFAULT_URL,
    }


def _providers(env: Mapping[str, str]) -> dict[str, Any]:
    """Each provider's credentials and base URL; unset, that provider's jobs wait."""
    return {
        **_mailchimp(env),
        **_apsis(env),
        "PROVIDER_TIMEOUT_SECONDS": _int("PROVIDER_TIMEOUT_SECONDS", env, 10, 1),
    }


# The <KEY> of every provider id a notice file may hold (LIST_ID, TOPIC, EMAIL_ATTRIBUTE ...).
PROVIDER_ID_NAMES = tuple(sorted({key.upper() for kind in PROVIDER_TABLES for key in provider_keys(kind)}))


def _notice_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Where the notice files are, and the provider ids the environment sets for them.

    A notice's ids may be overridden as ``<SLUG>_<KEY>`` (``MUNKEBY_LIST_ID``,
    ``MYSOFT_TOPIC``); those of the notice files present are read here, by their
    full names, and the notices take them from ``NOTICE_PROVIDER_IDS``.
    """
    directory = env.get("NOTICES_DIR") or str(REPO_ROOT / "notices")
    names = [f"{prefix}_{key}" for prefix in _notice_prefixes(directory) for key in PROVIDER_ID_NAMES]
    return {"NOTICES_DIR": directory, "NOTICE_PROVIDER_IDS": {name: env[name] for name in names if env.get(name)}}


def _notice_prefixes(directory: str) -> list[str]:
    """``<SLUG>`` of every notice file in ``directory`` (a slug is its file's name)."""
    return [path.stem.upper().replace("-", "_") for path in sorted(Path(directory).glob("*.toml"))]


def _networks(name: str, env: Mapping[str, str], default: str) -> tuple[str, ...]:
    """A comma-separated list of addresses or networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``)."""
    raw = env.get(name, "").strip() or default
    networks = []
    for part in raw.split(","):
        try:
            networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            message = f"{name} must list IP addresses or networks separated by commas, not {part.strip()!r}"
            raise ConfigError(message) from None
    return tuple(networks)


def _operations(env: Mapping[str, str]) -> dict[str, Any]:
    """What an operator's tools read: the log format, who may scrape metrics, readiness."""
    log_format = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, not {log_format!r}")
    return {
        "LOG_FORMAT": log_format,
        # /metrics answers only these clients (after ProxyFix); everyone else gets 404.
        "METRICS_ALLOW": _networks("METRICS_ALLOW", env, "127.0.0.1/32,::1/128"),
        # /readyz fails when the outbox worker has not reported for longer than this.
        "WORKER_HEARTBEAT_MAX_AGE": _int("WORKER_HEARTBEAT_MAX_AGE", env, 300, 10),
    }


def _web(production: bool) -> dict[str, Any]:
    # Only the dashboard has a session (app/dashboard/auth.py): its cookie goes to the
    # dashboard's paths only, so a marketer's browser does not send it to subscribers' pages.
    return {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "SESSION_COOKIE_PATH": "/dashboard",
        # Flask-Login's remember-me cookie: never set (no "remember me" at login), and
        # if an old one is ever cleared, that happens on the dashboard's path too.
        "REMEMBER_COOKIE_PATH": "/dashboard",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "WTF_CSRF_TIME_LIMIT": None,
    }


def load_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables."""
    env = dict(os.environ if env is None else env)
    app_env = _app_env(env)
    production = app_env == "production"
    instance = _instance(env)
    keys = _keys(env, instance, production)
    return {
        "APP_ENV": app_env,
        "TESTING": app_env == "testing",
        **keys,
        **_database(env, instance),
        **_webhook_secrets(env),
        **_smtp(env),
        **_dkim(env),
        "PUBLIC_URL": _public_url(env.get("PUBLIC_URL") or "http://127.0.0.1:5000", production),
        "INSTANCE_PATH": str(instance),
        "MAIL_DIR": str(instance / "mail"),
        **_notice_settings(env),
        **_limits(env),
        **_outbox(env, instance),
        **_providers(env),
        **_operations(env),
        **_web(production),
    }
