"""/readyz: each check by name, 503 with the reason when one fails, 200 when all pass."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import text

from app import create_app, service_marks
from app.extensions import db
from app.models import utcnow

from .support import free_port


def _checks(response) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    return {check["name"]: check for check in response.get_json()["checks"]}


def test_without_a_worker_the_service_is_not_ready_and_says_to_start_one(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == "no-store" and "Set-Cookie" not in response.headers
    checks = _checks(response)
    assert checks["database"]["ok"] and checks["migrations"]["ok"] and checks["redis"]["ok"]
    assert not checks["worker"]["ok"] and "outbox run" in checks["worker"]["detail"]


def test_a_worker_pass_makes_it_ready_and_five_silent_minutes_make_it_not(app, client, runner):
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "ready"
    with time_machine.travel(utcnow() + timedelta(seconds=301), tick=False):
        later = client.get("/readyz")
    assert later.status_code == 503
    assert "more than 300 s" in _checks(later)["worker"]["detail"]


def test_a_database_behind_the_code_is_not_ready(app, client):
    with app.app_context():
        service_marks.touch(service_marks.WORKER_HEARTBEAT)
        head = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        db.session.execute(text("UPDATE alembic_version SET version_num = '0006'"))
        db.session.commit()
    try:
        checks = _checks(response := client.get("/readyz"))
    finally:  # the PostgreSQL database is the session's, shared with the tests after this one
        with app.app_context():
            db.session.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
            db.session.commit()
    assert response.status_code == 503
    assert not checks["migrations"]["ok"] and "0006" in checks["migrations"]["detail"]
    assert "db upgrade" in checks["migrations"]["detail"]


def test_a_redis_that_does_not_answer_makes_it_not_ready(app_env):
    # A port nothing listens on: the rate limits' store is gone.
    app = create_app(env={**app_env, "RATELIMIT_STORAGE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with app.app_context():
        service_marks.touch(service_marks.WORKER_HEARTBEAT)
        db.session.commit()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert not _checks(response)["redis"]["ok"]
    with app.app_context():
        db.engine.dispose()


def test_a_redis_that_answers_is_ready(app_env, redis_url):
    app = create_app(env={**app_env, "RATELIMIT_STORAGE_URL": redis_url})
    with app.app_context():
        service_marks.touch(service_marks.WORKER_HEARTBEAT)
        db.session.commit()
    response = app.test_client().get("/readyz")
    assert response.status_code == 200 and _checks(response)["redis"]["detail"] == "answers"
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unreachable_database_is_named_and_the_answer_is_not_a_500(app_env, tmp_path):
    app = create_app(env=app_env)
    with app.app_context():
        db.engine.dispose()
    # The database file turned into a folder: every connection fails.
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    import os

    os.rename(path, path + ".away")
    os.mkdir(path)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = _checks(response)
    assert not checks["database"]["ok"] and checks["migrations"]["detail"] == "not checked: no database"
