"""A request that reads a row and then records something on it (an API token's last use, a
login's time) still succeeds when another process wrote to the database in between, as a
retention purge or an unsubscribe storm does many times a second. On SQLite a read
transaction that tries to become a write after such a commit fails at once ("database is
locked"), whatever the busy timeout."""

from __future__ import annotations

from argon2 import PasswordHasher
from sqlalchemy import select, text

from app import accounts
from app.extensions import db
from app.models import ApiToken, User

from .test_api import make_token
from .test_dashboard import create_user, log_in


def another_process_writes() -> None:
    """A commit on a connection of its own, between the request's read and its write."""
    with db.engine.connect() as conn:
        conn.execute(text("UPDATE notice_versions SET notice = notice"))
        conn.commit()


def test_an_api_call_succeeds_when_the_database_was_written_after_its_token_was_read(
    app, client, runner, monkeypatch
):
    reader = make_token(runner, "read")
    read_token = accounts.token_for

    def token_then_a_write_elsewhere(secret: str) -> ApiToken | None:
        token = read_token(secret)
        another_process_writes()
        return token

    monkeypatch.setattr(accounts, "token_for", token_then_a_write_elsewhere)
    answer = client.get("/api/v1/consent?email=a@example.com", headers=reader)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    with app.app_context():
        assert db.session.execute(select(ApiToken.last_used_at)).scalar_one() is not None


def test_a_login_succeeds_when_the_database_was_written_during_the_password_check(app, client, runner, monkeypatch):
    create_user(runner, "maria@munkeby.se", "marketer")

    class HasherThenAWriteElsewhere(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            ok = super().verify(hash, password)
            another_process_writes()
            return ok

    monkeypatch.setattr(accounts, "_hasher", HasherThenAWriteElsewhere())
    answer = log_in(client, "maria@munkeby.se")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/dashboard/")
    with app.app_context():
        assert db.session.execute(select(User.last_login_at)).scalar_one() is not None
