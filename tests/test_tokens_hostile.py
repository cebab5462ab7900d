"""Signed links under attack: changed bytes, a token used for another purpose, expiry to
the second, and signing keys rotated through ``SECRET_KEY_FALLBACKS``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app import create_app, tokens
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .support import link_in, sign_up, subscribe_and_confirm, unsubscribe_path

# Characters an attacker may put in a token: its alphabet, its separator, and others.
ALPHABET = st.sampled_from("ABCXYZabcxyz0189-_.=+%~ \x00é")  # "/" would change the route, not the token
EDIT = st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(min_value=0), ALPHABET)
EDITS = st.lists(EDIT, min_size=1, max_size=3)
EXAMPLES = 400  # per purpose: 1,200 changed tokens in all


def mutate(token: str, edits: list[tuple[str, int, str]]) -> str:
    chars = list(token)
    for kind, at, char in edits:
        at %= len(chars) + (kind == "insert")
        if kind == "replace":
            chars[at] = char
        elif kind == "insert":
            chars.insert(at, char)
        elif len(chars) > 1:
            del chars[at]
    return "".join(chars)


def state(app) -> tuple[int, int, list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        events = db.session.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()
        jobs = db.session.execute(select(func.count()).select_from(OutboxJob)).scalar_one()
        subs = db.session.execute(select(Subscription.ref, Subscription.status).order_by(Subscription.ref)).all()
        db.session.remove()
    return events, jobs, [tuple(s) for s in subs]


def people(client, mailbox) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A pending sign-up's confirm token, and a subscriber's unsubscribe and manage tokens."""
    sign_up(client, "munkeby", "pending@example.com", "Pia")
    confirm = link_in(mailbox.last("pending@example.com"), "confirm").rsplit("/", 1)[1]
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "member@example.com")
    return {
        "confirm": confirm,
        "unsubscribe": unsubscribe_path(welcome).rsplit("/", 1)[1],
        "manage": link_in(welcome, "manage").rsplit("/", 1)[1],
    }


def answers(client, purpose: str, token: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Every way the service is asked to act on a token of this purpose."""
    path = quote(token, safe="")
    if purpose == "confirm":
        return [client.get(f"/confirm/{path}").status_code, client.post(f"/confirm/{path}").status_code]
    if purpose == "unsubscribe":
        one_click = {"List-Unsubscribe": "One-Click"}
        return [
            client.get(f"/unsubscribe/{path}").status_code,
            client.post(f"/unsubscribe/{path}", data=one_click).status_code,
        ]
    return [
        client.get(f"/manage/{path}").status_code,
        client.post(f"/manage/{path}/unsubscribe", data={"notice": "mysoft"}).status_code,
    ]


@pytest.mark.fuzz  # hypothesis runs inside the test
def test_changed_tokens_are_refused_with_4xx_and_change_nothing(app, client, mailbox):
    valid = people(client, mailbox)
    before = state(app)
    refused = 0

    def attempts(purpose: str, token: str):  # type: ignore[no-untyped-def]
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(edits=EDITS)
        def attempt(edits):  # type: ignore[no-untyped-def]
            nonlocal refused
            changed = mutate(token, edits)
            if changed == token:
                return
            codes = answers(client, purpose, changed)
            assert all(400 <= code < 500 for code in codes), (purpose, changed, codes)
            refused += 1

        return attempt

    for purpose, token in valid.items():
        attempts(purpose, token)()

    assert refused >= 1000
    assert state(app) == before  # no event, no job, no status changed
    # The untouched tokens still work, so the refusals were about the changes.
    assert all(code == 200 for code in answers(client, "confirm", valid["confirm"])[:1])


def test_a_token_is_accepted_only_for_its_own_purpose(app, client, mailbox):
    valid = people(client, mailbox)
    with app.test_request_context():
        data_token = tokens.make("data", {"n": "mysoft", "h": "0" * 64, "a": "export"})
    before = state(app)
    for purpose, token in [*valid.items(), ("data", data_token)]:
        for other in ("confirm", "unsubscribe", "manage"):
            if other != purpose:
                codes = answers(client, other, token)
                assert all(400 <= code < 500 for code in codes), (purpose, other, codes)
    assert state(app) == before


def test_confirm_links_expire_to_the_second(app, client, mailbox):
    max_age = app.config["CONFIRM_MAX_AGE"]
    minted = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    with time_machine.travel(minted, tick=False):
        sign_up(client, "munkeby", "late@example.com")
    confirm = link_in(mailbox.last("late@example.com"), "confirm")
    with time_machine.travel(minted + timedelta(seconds=max_age + 1), tick=False):
        assert client.get(confirm).status_code == 410
        assert client.post(confirm).status_code == 410
    with time_machine.travel(minted + timedelta(seconds=max_age - 1), tick=False):
        assert client.get(confirm).status_code == 200
        assert client.post(confirm).status_code == 200
    with app.app_context():
        status = db.session.execute(select(Subscription.status)).scalar_one()
    assert status == "subscribed"


def test_links_signed_with_a_retired_key_work_until_it_is_dropped(app, app_env, tmp_path):
    old = app
    old_client = old.test_client()
    from .support import Mailbox

    mailbox = Mailbox(tmp_path / "instance" / "mail")
    welcome = subscribe_and_confirm(old_client, mailbox, "munkeby", "kept@example.com")
    unsubscribe = unsubscribe_path(welcome)
    manage = link_in(welcome, "manage")
    new_key = "rotated-secret-key-" + "z" * 32
    rotated = create_app(env={**app_env, "SECRET_KEY": new_key, "SECRET_KEY_FALLBACKS": app_env["SECRET_KEY"]})
    client = rotated.test_client()
    assert client.get(manage).status_code == 200
    assert client.get(unsubscribe).status_code == 200
    with rotated.app_context():  # what it signs now uses the new key
        payload = tokens.read("unsubscribe", unsubscribe.rsplit("/", 1)[1])
        fresh = "/unsubscribe/" + tokens.make("unsubscribe", payload)
        db.engine.dispose()

    dropped = create_app(env={**app_env, "SECRET_KEY": new_key})
    client = dropped.test_client()
    assert client.get(manage).status_code == 400
    assert client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert client.get(fresh).status_code == 200  # signed with the key that stays
    with dropped.app_context():
        kept = select(Subscription.status).where(Subscription.email == "kept@example.com")
        assert db.session.execute(kept).scalar_one() == "subscribed"
        db.session.remove()  # give the connection back before the pool goes
        db.engine.dispose()
