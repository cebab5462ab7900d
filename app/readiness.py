"""``/readyz``: may a load balancer send this process traffic, and is the service keeping up.

``/healthz`` stays the cheap liveness probe (the process answers and reaches its database).
``/readyz`` names each check with its outcome and a reason an operator can act on:

- ``database``: a ``SELECT 1``;
- ``migrations``: the database's schema revision is the code's (a process started before a
  deploy's migrations ran, or after, is not ready);
- ``redis``: the rate limits' Redis answers a PING (passes as "not configured" without one);
- ``worker``: an ``outbox run`` has reported within ``WORKER_HEARTBEAT_MAX_AGE`` (300 s):
  without a worker, retries, provider opt-outs and erasures at the providers wait, and the
  48-hour opt-out promise is at risk;
- ``ledger_sequencer``: no evidence event has waited longer than
  ``LEDGER_MAX_MERGE_DELAY_SECONDS`` (60 s) for its place in the chain.

The ledger's signed checkpoint is reported too, and does not fail readiness: a checkpoint
older than a few renewal periods means the worker is not renewing it, which the worker check
already catches; the figure is there for the operator.

200 when every check passes, 503 otherwise; never cached, no cookie, not rate limited.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from . import service_marks
from .extensions import db, limiter
from .models import utcnow

bp = Blueprint("readiness", __name__)

REDIS_TIMEOUT_SECONDS = 0.5


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def _database() -> dict[str, Any]:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach it is the answer
        db.session.rollback()
        return _check("database", False, f"cannot reach the database ({type(exc).__name__})")
    return _check("database", True, db.engine.dialect.name)


def _code_heads() -> set[str]:
    heads = current_app.extensions.get("readiness_code_heads")
    if heads is None:
        config = current_app.extensions["migrate"].migrate.get_config()
        heads = set(ScriptDirectory.from_config(config).get_heads())
        current_app.extensions["readiness_code_heads"] = heads
    return heads


def _migrations() -> dict[str, Any]:
    wanted = _code_heads()
    try:
        current = set(MigrationContext.configure(db.session.connection()).get_current_heads())
    except Exception as exc:
        db.session.rollback()
        return _check("migrations", False, f"cannot read the schema revision ({type(exc).__name__})")
    if current != wanted:
        found, needed = ", ".join(sorted(current)) or "none", ", ".join(sorted(wanted))
        return _check("migrations", False, f"the database is at {found}, the code needs {needed}: run db upgrade")
    return _check("migrations", True, ", ".join(sorted(current)))


def _redis() -> dict[str, Any]:
    uri = current_app.config["RATELIMIT_STORAGE_URI"]
    if not uri.startswith(("redis://", "rediss://", "unix://")):
        return _check("redis", True, "not configured (rate limits kept in this process)")
    import redis

    try:
        client = redis.Redis.from_url(
            uri, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return _check("redis", False, f"Redis does not answer ({type(exc).__name__})")
    return _check("redis", True, "answers")


def _worker() -> dict[str, Any]:
    max_age = current_app.config["WORKER_HEARTBEAT_MAX_AGE"]
    try:
        beat = service_marks.read(service_marks.WORKER_HEARTBEAT)
    except Exception as exc:
        db.session.rollback()
        return _check("worker", False, f"cannot read the heartbeat ({type(exc).__name__})")
    if beat is None:
        return _check("worker", False, "no outbox worker has reported: start `flask --app wsgi outbox run`")
    age = (utcnow() - beat).total_seconds()
    if age > max_age:
        return _check("worker", False, f"the outbox worker last reported {age:.0f} s ago (more than {max_age} s)")
    return _check("worker", True, f"reported {age:.0f} s ago")


def _sequencer() -> dict[str, Any]:
    from .ledger import pending

    try:
        waiting = pending(db.session)
    except Exception as exc:
        db.session.rollback()
        return _check("ledger_sequencer", False, f"cannot read the pending evidence ({type(exc).__name__})")
    if waiting.overdue:
        return _check(
            "ledger_sequencer",
            False,
            f"{waiting.overdue} evidence events have waited more than {waiting.bound_seconds:g} s for their place in "
            "the chain: start `flask --app wsgi outbox run` (or `ledger sequence --follow`)",
        )
    if not waiting.count:
        return _check("ledger_sequencer", True, "no evidence waiting")
    return _check("ledger_sequencer", True, f"{waiting.count} waiting, the oldest {waiting.oldest_seconds:.0f} s")


def _checkpoint() -> dict[str, Any]:
    from .ledger import checkpoint_path

    path = checkpoint_path()
    try:
        written = path.stat().st_mtime
    except FileNotFoundError:
        return _check("ledger_checkpoint", True, "no checkpoint file yet (written with the first events)")
    except OSError as exc:
        return _check("ledger_checkpoint", True, f"cannot read the checkpoint file ({type(exc).__name__})")
    age = timedelta(seconds=time.time() - written).total_seconds()
    return _check("ledger_checkpoint", True, f"written {age:.0f} s ago")


@bp.get("/readyz")
@limiter.exempt
def readyz() -> ResponseReturnValue:
    database = _database()
    if database["ok"]:
        migrations, worker = _migrations(), _worker()
        sequencer = _sequencer() if migrations["ok"] else _check("ledger_sequencer", False, "not checked: schema")
    else:  # without a database the checks that read it would only wait and say the same
        migrations = _check("migrations", False, "not checked: no database")
        worker = _check("worker", False, "not checked: no database")
        sequencer = _check("ledger_sequencer", False, "not checked: no database")
    checks = [database, migrations, _redis(), worker, sequencer, _checkpoint()]
    ready = all(check["ok"] for check in checks)
    db.session.rollback()
    response = jsonify({"status": "ready" if ready else "not ready", "checks": checks})
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register ``/readyz``."""
    app.register_blueprint(bp)
