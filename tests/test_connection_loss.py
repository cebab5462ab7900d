"""PostgreSQL connections that the server dropped while they sat in the pool (a restart, an
idle timeout on the way) are noticed at checkout and replaced: no subscriber meets them."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Subscription

from .support import link_in, subscribe_and_confirm

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def drop_server_connections(database_url: str) -> int:
    """What a server restart does to the service's connections: every one of them ended, and
    its server process gone (pg_terminate_backend only asks it to go)."""
    others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(database_url, autocommit=True) as admin:
        ended = [row[0] for row in admin.execute(others).fetchall()]
        for pid in ended:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while {row[0] for row in admin.execute(others).fetchall()} & set(ended):
            assert time.monotonic() < deadline, "the server did not end the connections"
            time.sleep(0.01)
    return len(ended)


def test_connections_the_server_dropped_are_replaced_before_a_request_uses_them(app, client, mailbox, database_url):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a failure shows as the page a subscriber would see
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    with app.app_context():
        db.session.remove()
        assert db.engine.pool.checkedin() >= 1  # pooled, waiting for the next request
    assert drop_server_connections(database_url) >= 1
    opt_out = client.post(link_in(welcome, "unsubscribe"), data={"List-Unsubscribe": "One-Click"})
    assert opt_out.status_code == 200
    with app.app_context():
        status = db.session.execute(select(Subscription.status).where(Subscription.email == "anna@example.com"))
        assert status.scalar_one() == "unsubscribed"
        db.session.remove()
