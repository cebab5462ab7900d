"""Fixtures: every app-backed test runs on SQLite and on PostgreSQL.

PostgreSQL is the one this machine runs on 127.0.0.1:5432 (override with
TEST_POSTGRES_URL). Where none is reachable, the PostgreSQL half of the suite
is skipped with the reason shown, so the suite still passes on a bare machine.
Each session gets its own throwaway database; tables are emptied between tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text

from app import create_app
from app.extensions import db, limiter
from app.providers.apsis import ApsisProvider
from app.providers.mailchimp import MailchimpProvider

from .fakes.apsis import FakeApsis
from .fakes.mailchimp import FakeMailchimp
from .support import PUBLIC_URL, Mailbox, SettledClient, SmtpSink

# Every log line the suite produces is read for addresses, tokens and secrets (tests/log_audit.py).
pytest_plugins = ["tests.log_audit"]

# Every app a test builds hands its test client's requests' mail over before returning.
Flask.test_client_class = SettledClient

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: not reachable here
        return f"PostgreSQL not reachable at {POSTGRES_URL} ({type(exc).__name__}); PostgreSQL tests skipped"


def base_env(instance: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "APP_ENV": "testing",
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "SUPPRESSION_PEPPER": "test-pepper-" + "y" * 32,
        "PUBLIC_URL": PUBLIC_URL,
        "PATH": os.environ.get("PATH", ""),
    }
    env.update(extra)
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every property-based test is a ``fuzz`` test: thousands of generated cases each, worth
    running in CI and before a change lands, not in the edit-test loop. A test decorated with
    ``@given`` is found here; one that runs hypothesis inside its body carries the mark itself."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    instance = tmp_path_factory.mktemp("sqlite-template")
    path = instance / "template.sqlite3"
    app = create_app(env=base_env(instance, f"sqlite:///{path}"))
    with app.app_context():
        db.engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"consent_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """This test's own copy of the migrated SQLite file (a module that runs on SQLite only
    takes it as its ``database_url``)."""
    target = tmp_path / "instance" / "consent.sqlite3"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_database_url" if request.param == "sqlite" else "postgres_database")


@pytest.fixture
def app_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment the app under test is built from; tests may add to it."""
    return base_env(tmp_path / "instance", database_url)


@pytest.fixture
def app(app_env: dict[str, str]):  # type: ignore[no-untyped-def]
    app = create_app(env=app_env)
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            tables = [t.name for t in db.metadata.sorted_tables]
            db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            db.session.execute(text("INSERT INTO ledger_head (id, seq, hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
            db.session.commit()
            from app.schema import record_notice_versions

            record_notice_versions()
    limiter.reset()
    yield app
    app.extensions["after_response"].wait_idle(timeout=60)  # mail still being sent uses the pool
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


REDIS = "127.0.0.1", 6379


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own on this machine's server, emptied before and after; where no
    Redis is reachable, the test is skipped with the reason (the shared counters need one)."""
    import random

    import redis

    try:
        redis.Redis(*REDIS, socket_connect_timeout=2).ping()
    except Exception as exc:  # any failure means: not reachable here
        pytest.skip(f"Redis not reachable at {REDIS[0]}:{REDIS[1]} ({type(exc).__name__}); shared-counter test skipped")
    # Under pytest-xdist each worker draws from a block of numbers of its own (two workers:
    # 1-7 and 8-14), so two tests running at once never empty each other's database; past 15
    # workers the blocks are one number each and wrap around, and two workers may share one.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    block = max(15 // workers, 1)
    index = 1 + (worker * block + random.randrange(block)) % 15
    client = redis.Redis(*REDIS, db=index)
    client.flushdb()
    yield f"redis://{REDIS[0]}:{REDIS[1]}/{index}"
    client.flushdb()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def runner(app):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


@pytest.fixture
def mailbox(app) -> Mailbox:  # type: ignore[no-untyped-def]
    return Mailbox(Path(app.config["MAIL_DIR"]))


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server on 127.0.0.1 that keeps what it receives."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def apsis() -> Iterator[FakeApsis]:
    """A fake APSIS One API on 127.0.0.1; no token from an earlier fake on the same port is kept."""
    ApsisProvider._tokens.clear()
    with FakeApsis() as fake:
        yield fake


@pytest.fixture
def mailchimp() -> Iterator[FakeMailchimp]:
    """A fake Mailchimp API on 127.0.0.1 with Munkeby's audience. A new fake can reuse an earlier
    one's port, so the provider's memory of audiences already given the link fields starts empty."""
    MailchimpProvider._fields_checked.clear()
    with FakeMailchimp() as fake:
        fake.add_list("munkeby0001", marketing_permissions=["perm-email", "perm-ads"])  # its GDPR fields
        yield fake
