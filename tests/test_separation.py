"""Two controllers on one service, kept apart.

Every route of the dashboard and the API is walked from the URL map (a route added
later is walked too, without editing this test) as a Munkeby user and a Munkeby
token, with the ids, refs and addresses of Mysoft's people: each answers 404 (never
403, which would confirm that someone exists), no answer holds a Mysoft person's
address or name, and nothing of Mysoft's changes. The same routes with Munkeby's
own ids answer, so a 404 is the separation and not a broken route. Mailed links are
walked the same way: a Munkeby link never shows or changes what Mysoft holds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select

from app import accounts
from app.extensions import db
from app.models import ApiToken, ContactImport, OutboxJob, Subscription, User

from .support import link_in, subscribe_and_confirm, unsubscribe_path
from .test_dashboard import PASSWORD, create_user, form_token, log_in

MYSOFT_PERSON = "mia.mysoft@kund.example"
MUNKEBY_PERSON = "mats.munkeby@kund.example"
NEVER_SEEN = "nobody.here@kund.example"
BOTH_PERSON = "bo.both@kund.example"


def _dead_job(notice: str, ref: str) -> int:
    job = OutboxJob(
        kind="sync_consent", notice=notice, subscription_ref=ref, state="dead", payload={}, last_error="RetryJob"
    )
    db.session.add(job)
    db.session.commit()
    return job.id


def _import(notice: str) -> int:
    record = ContactImport(notice=notice, columns=["email"], state="uploaded", created_by="cli")
    db.session.add(record)
    db.session.commit()
    return record.id


@pytest.fixture
def world(app, client, mailbox, runner) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    subscribe_and_confirm(client, mailbox, "munkeby", MUNKEBY_PERSON, "Mats Munkeby")
    subscribe_and_confirm(client, mailbox, "mysoft", MYSOFT_PERSON)
    create_user(runner, "admin@munkeby.se", "admin", notices=("munkeby",))
    create_user(runner, "staff@mysoft.se", "viewer", notices=("mysoft",))
    args = ["tokens", "create", "Munkeby CRM", "--notice", "munkeby"]
    for scope in accounts.SCOPES:
        args += ["--scope", scope]
    munkeby_token = json.loads(runner.invoke(args=args).stdout)["token"]
    runner.invoke(args=["tokens", "create", "Mysoft CRM", "--scope", "read", "--notice", "mysoft"])
    with app.app_context():
        ref = {
            notice: db.session.execute(select(Subscription.ref).where(Subscription.notice == notice)).scalar_one()
            for notice in ("munkeby", "mysoft")
        }
        ids = {
            "mysoft": {
                "ref": ref["mysoft"],
                "job_id": _dead_job("mysoft", ref["mysoft"]),
                "import_id": _import("mysoft"),
                "token_id": db.session.execute(select(ApiToken.id).where(ApiToken.notices == "mysoft")).scalar_one(),
                "user_id": db.session.execute(select(User.id).where(User.email == "staff@mysoft.se")).scalar_one(),
            },
            "munkeby": {
                "ref": ref["munkeby"],
                "job_id": _dead_job("munkeby", ref["munkeby"]),
                "import_id": _import("munkeby"),
                "token_id": db.session.execute(select(ApiToken.id).where(ApiToken.notices == "munkeby")).scalar_one(),
                "user_id": None,  # filled below: a Munkeby user the admin may deactivate
            },
        }
    create_user(runner, "temp@munkeby.se", "viewer", notices=("munkeby",))
    with app.app_context():
        ids["munkeby"]["user_id"] = db.session.execute(
            select(User.id).where(User.email == "temp@munkeby.se")
        ).scalar_one()
    log_in(client, "admin@munkeby.se")
    return {"ids": ids, "api": {"Authorization": f"Bearer {munkeby_token}"}}


def _mysoft_state(app) -> tuple[Any, ...]:  # type: ignore[no-untyped-def]
    with app.app_context():
        sub = db.session.execute(select(Subscription).where(Subscription.notice == "mysoft")).scalar_one()
        job = db.session.execute(select(OutboxJob.state).where(OutboxJob.notice == "mysoft")).scalars().all()
        token = db.session.execute(select(ApiToken.revoked_at).where(ApiToken.notices == "mysoft")).scalar_one()
        user = db.session.execute(select(User.active).where(User.email == "staff@mysoft.se")).scalar_one()
        record = db.session.execute(select(ContactImport.state).where(ContactImport.notice == "mysoft")).scalar_one()
        return (sub.email, sub.name, sub.status, sub.relationship, sub.last_contact_at, sub.reviewed_at,
                tuple(job), token, user, record)


def _form(client, extra: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    token = form_token(client.get("/dashboard/tokens").get_data(as_text=True))
    return {
        "csrf_token": token,
        "notice": "mysoft",
        "notices": "mysoft",
        "confirm": MYSOFT_PERSON,
        "email": MYSOFT_PERSON,
        "name": "Changed",
        "scopes": "read",
        "role": "viewer",
        "password": PASSWORD,
        "relationship": "customer",
        "last_contact": "2026-01-05",
        "email_column": "email",
        "lawful_basis": "consent",
        "source": "a fair",
        "source_date": "2026-01-05",
        **extra,
    }


def _routes(app, prefix: str) -> list[Any]:  # type: ignore[no-untyped-def]
    skip = {"dashboard.login", "dashboard.logout", "api.openapi"}
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith(prefix) and rule.endpoint not in skip]


def _url(rule, values: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    args = {}
    for name in rule.arguments:
        if name == "what":
            args[name] = "retry"
        else:
            assert name in values, f"{rule.rule}: teach this test which value of {name!r} belongs to Mysoft"
            args[name] = values[name]
    return rule.build(args)[1]


def test_every_dashboard_route_answers_a_munkeby_user_as_if_mysoft_had_nobody(app, client, world):
    before = _mysoft_state(app)
    walked = 0
    for rule in _routes(app, "dashboard."):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = _url(rule, world["ids"]["mysoft"])
            if method == "GET":
                answer = client.get(url, query_string={"notice": "mysoft", "q": MYSOFT_PERSON})
            else:
                answer = client.post(url, data=_form(client, {}))
            body = answer.get_data(as_text=True)
            if rule.arguments - {"what"}:
                assert answer.status_code == 404, (method, url, answer.status_code)
            else:
                assert answer.status_code in (200, 302, 303, 400, 404), (method, url, answer.status_code)
            assert MYSOFT_PERSON not in body and "staff@mysoft.se" not in body, (method, url)
            walked += 1
    assert walked >= 20
    assert _mysoft_state(app) == before
    # A page without Mysoft filters shows Munkeby's people, and never Mysoft's.
    listing = client.get("/dashboard/subscribers").get_data(as_text=True)
    assert MUNKEBY_PERSON in listing and MYSOFT_PERSON not in listing
    overview = client.get("/dashboard/").get_data(as_text=True)
    assert "Mysoft" not in overview

    # The same routes with Munkeby's own ids answer: the 404s above are the separation.
    for rule in _routes(app, "dashboard."):
        if not rule.arguments - {"what"}:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = _url(rule, world["ids"]["munkeby"])
            if method == "GET":
                answer = client.get(url)
            else:
                answer = client.post(url, data=_form(client, {"notice": "munkeby", "confirm": MUNKEBY_PERSON}))
            assert answer.status_code != 404, (method, url)


def _plain(answer) -> str:  # type: ignore[no-untyped-def]
    """An answer without what differs between any two calls (sequence numbers, times)."""
    return re.sub(r'"(seq|at|next_after)":\s*("[^"]*"|\d+|null)', "", answer.get_data(as_text=True))


def test_every_api_route_answers_a_munkeby_token_as_if_mysoft_had_nobody(app, client, world):
    headers = world["api"]
    before = _mysoft_state(app)

    def asked(rule, method: str, address: str, notice: str | None):  # type: ignore[no-untyped-def]
        url = _url(rule, world["ids"]["mysoft"])
        body = {"email": address, "notice": notice, "last_contact_at": "2026-01-05T10:00:00Z"}
        if method == "GET":
            query = {"email": address, **({"notice": notice} if notice else {})}
            return client.get(url, query_string=query, headers=headers)
        return client.post(url, json=body, headers=headers)

    for rule in _routes(app, "api."):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method == "POST" and rule.endpoint == "api.subscribe":
                continue  # asks for a sign-up: it mails whoever owns the address, as the form does
            # Under either notice, a Mysoft person's address is answered exactly as one never seen
            # (Mysoft's notice is one this token does not know).
            for notice in ("mysoft", "munkeby", None):
                mine = asked(rule, method, MYSOFT_PERSON, notice)
                unknown = asked(rule, method, NEVER_SEEN, notice)
                assert mine.status_code == unknown.status_code, (method, rule.rule, notice)
                assert _plain(mine).replace(MYSOFT_PERSON, NEVER_SEEN) == _plain(unknown), (method, rule.rule, notice)
                if notice == "mysoft" and method == "POST":
                    assert mine.status_code == 422, (method, rule.rule)
    with app.app_context():  # the API's opt-outs above suppressed the address under Munkeby only
        mysoft = db.session.execute(select(Subscription.status).where(Subscription.notice == "mysoft")).scalar_one()
    assert mysoft == "subscribed"
    assert _mysoft_state(app) == before
    events = client.get("/api/v1/events?limit=500", headers=headers).json["events"]
    assert events and {event["notice"] for event in events} == {"munkeby"}


def test_a_link_mailed_for_munkeby_never_shows_or_changes_what_mysoft_holds(app, client, mailbox):
    munkeby = subscribe_and_confirm(client, mailbox, "munkeby", BOTH_PERSON, "Bo Both")
    subscribe_and_confirm(client, mailbox, "mysoft", BOTH_PERSON)
    tokens = {
        "manage": link_in(munkeby, "manage").rsplit("/", 1)[1],
        "unsubscribe": unsubscribe_path(munkeby).rsplit("/", 1)[1],
        "confirm": link_in(mailbox.to(BOTH_PERSON)[0], "confirm").rsplit("/", 1)[1],
    }
    walked = 0
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("public.") or "token" not in rule.arguments:
            continue
        if rule.endpoint == "public.data_link":
            continue  # mailed to the address itself: it covers every controller, each named
        purpose = rule.rule.strip("/").split("/")[0]
        token = tokens[purpose]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = rule.build({"token": token})[1]
            data = {"notice": "mysoft", "name": "Changed", "kind": "export"}
            answer = client.get(url + "?lang=en") if method == "GET" else client.post(url + "?lang=en", data=data)
            assert "Mysoft" not in answer.get_data(as_text=True), (method, url)
            walked += 1
        with app.app_context():
            status = db.session.execute(
                select(Subscription.status).where(Subscription.notice == "mysoft", Subscription.email == BOTH_PERSON)
            ).scalar_one()
        assert status == "subscribed", rule.rule
    assert walked >= 6
