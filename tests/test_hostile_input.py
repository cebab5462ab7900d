"""Hostile input on every form, webhook and API field: no answer is a 5xx, and no mail the
service writes carries a header it did not mean to write."""

from __future__ import annotations

import io
import json
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.extensions import db
from app.models import Subscription

from .support import csrf_token, link_in, subscribe_and_confirm
from .test_api import make_token
from .test_dashboard import create_user, form_token, log_in

EXAMPLES = 10_000
MC_SECRET = "mc-hook-" + "h" * 24
APSIS_SECRET = "apsis-hook-" + "h" * 24

NASTY = [
    "",
    " ",
    "a" * 10_000,
    "x@example.com\r\nBcc: victim@example.org",
    "Name\r\nSubject: injected",
    "line\nbreak",
    "\x00",
    "nul\x00byte@example.com",
    "åsa@exempel.se",
    "ÅSA@EXEMPEL.SE",
    "user@xn--exmpel-cua.se",
    "=?utf-8?b?SGk=?=",
    "<script>alert(1)</script>",
    "' OR '1'='1",
    "../../../etc/passwd",
    "%0d%0aSet-Cookie: x=y",
    "\u202eevil",
    "😀" * 100,
    "9" * 30,
    "-1",
    "2147483648",
    "null",
    "true",
    "{}",
    "[]",
    "munkeby",
    "mysoft",
    "subscribed",
    "unsubscribe",
    "export",
    "erase",
    "2026-13-45T25:61:00",
    "2026-11-30 10:00:00",
]
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)
VALUE = st.one_of(st.sampled_from(NASTY), TEXT, st.builds(lambda a, b: f"{a}@example.com{b}", TEXT, TEXT))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), VALUE),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(VALUE, inner, max_size=4)),
    max_leaves=8,
)


def fields(draw, names: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    chosen = draw(st.lists(st.sampled_from(names), unique=True))
    return {name: draw(VALUE) for name in chosen}


MAILCHIMP_FIELDS = [
    "type",
    "fired_at",
    "data[email]",
    "data[list_id]",
    "data[reason]",
    "data[action]",
    "data[new_email]",
    "data[old_email]",
    "data[merges][FNAME]",
    "data[merges][EMAIL]",
]
API_FIELDS = ["email", "notice", "lang", "name", "relationship", "last_contact_at", "source", "reason"]


@pytest.fixture
def app_env(app_env: dict[str, str]) -> dict[str, str]:
    return {
        **app_env,
        "MAILCHIMP_WEBHOOK_SECRET": MC_SECRET,
        "APSIS_WEBHOOK_SECRET": APSIS_SECRET,
        "SUBSCRIBE_RATE_LIMIT": "1000000 per hour",
    }


@pytest.fixture
def app(app, app_env):  # type: ignore[no-untyped-def]
    app.config["RATELIMIT_ENABLED"] = False
    from app.extensions import limiter

    limiter.enabled = False
    yield app
    limiter.enabled = True


@pytest.mark.fuzz  # hypothesis runs inside the test
def test_no_hostile_input_gets_a_5xx_or_into_a_mail_header(app, client, runner, mailbox):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "held@example.com", "Held")
    manage = link_in(welcome, "manage")
    unsubscribe = link_in(welcome, "unsubscribe")
    api = make_token(runner, "read", "subscribe", "opt_out", "contact")
    signup_csrf = csrf_token(client, "/munkeby/subscribe")
    staff = app.test_client()
    create_user(runner, "staff@munkeby.se", "admin")
    assert log_in(staff, "staff@munkeby.se").status_code == 302
    staff_csrf = form_token(staff.get("/dashboard/tokens").get_data(as_text=True))
    anonymous = app.test_client()
    login_csrf = form_token(anonymous.get("/dashboard/login").get_data(as_text=True))
    with app.app_context():
        held_ref = db.session.execute(select(Subscription.ref)).scalar_one()
    seen: Counter[str] = Counter()
    mailed = {"n": 0}

    def send(draw):  # type: ignore[no-untyped-def]
        target = draw(
            st.sampled_from(
                [
                    "subscribe",
                    "manage",
                    "token pages",
                    "mailchimp",
                    "apsis",
                    "api json",
                    "api raw",
                    "api query",
                    "dashboard",
                ]
            )
        )
        seen[target] += 1
        if target == "subscribe" and draw(st.booleans()):
            # A real address with a hostile name: these reach the mail that is sent.
            mailed["n"] += 1
            data = {"csrf_token": signup_csrf, "email": f"p{mailed['n']}@example.com", "consent": "y"}
            return client.post(
                f"/{draw(st.sampled_from(['munkeby', 'mysoft']))}/subscribe", data={**data, "name": draw(VALUE)}
            )
        if target == "subscribe":
            data = {"csrf_token": signup_csrf, **fields(draw, ["email", "name", "consent", "website", "lang"])}
            slug = draw(st.sampled_from(["munkeby", "mysoft", quote(draw(VALUE), safe="")]))
            return client.post(f"/{slug}/subscribe", data=data)
        if target == "manage":
            action = draw(st.sampled_from(["name", "request", "unsubscribe"]))
            return client.post(f"{manage}/{action}", data=fields(draw, ["name", "kind", "notice", "lang"]))
        if target == "token pages":
            path = draw(st.sampled_from(["/confirm/", "/unsubscribe/", "/manage/", "/manage/data/"]))
            token = draw(st.one_of(VALUE, st.just(unsubscribe.rsplit("/", 1)[1])))
            return client.post(path + quote(token, safe=""), data=fields(draw, ["List-Unsubscribe", "via"]))
        if target == "mailchimp":
            return client.post(f"/webhooks/mailchimp/{MC_SECRET}", data=fields(draw, MAILCHIMP_FIELDS))
        if target == "apsis":
            return client.post(f"/webhooks/apsis/{APSIS_SECRET}", json=draw(JSON))
        path = draw(st.sampled_from(["/api/v1/subscriptions", "/api/v1/opt-outs", "/api/v1/contacts"]))
        if target == "api json":
            body = draw(st.one_of(JSON, st.fixed_dictionaries({}, optional={k: JSON for k in API_FIELDS})))
            return client.post(path, json=body, headers=api)
        if target == "api raw":
            raw = draw(st.one_of(st.binary(max_size=200), VALUE.map(lambda v: v.encode("utf-8"))))
            return client.post(path, data=raw, headers={**api, "Content-Type": "application/json"})
        if target == "api query":
            endpoint = draw(st.sampled_from(["/api/v1/consent", "/api/v1/events"]))
            return client.get(endpoint, query_string=fields(draw, ["email", "after", "limit", "type"]), headers=api)
        page = draw(st.sampled_from(["subscribers", "subject", "tokens", "import", "login"]))
        if page == "subscribers":
            return staff.get("/dashboard/subscribers", query_string=fields(draw, ["q", "notice", "status", "after"]))
        if page == "tokens":
            return staff.post("/dashboard/tokens", data={"csrf_token": staff_csrf, **fields(draw, ["name", "scopes"])})
        if page == "login":
            return anonymous.post(
                "/dashboard/login", data={"csrf_token": login_csrf, **fields(draw, ["email", "password"])}
            )
        if page == "import":
            names = ["notice", "lawful_basis", "source", "source_date", "proof"]
            upload = (io.BytesIO(draw(st.binary(max_size=300))), draw(VALUE) or "x.csv")
            data = {"csrf_token": staff_csrf, "file": upload, **fields(draw, names)}
            return staff.post("/dashboard/import", data=data, content_type="multipart/form-data")
        ref = draw(st.one_of(VALUE, st.just(held_ref), st.just("0" * 32)))
        action = draw(st.sampled_from(["rectify", "contact", "erase", "reviewed"]))
        names = ["name", "email", "last_contact", "relationship", "confirm"]
        data = {"csrf_token": staff_csrf, **fields(draw, names)}
        return staff.post(f"/dashboard/subscribers/{quote(ref, safe='')}/{action}", data=data)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def attempt(data):  # type: ignore[no-untyped-def]
        answer = send(data.draw)
        assert answer.status_code < 500, (answer.status_code, answer.get_data(as_text=True)[:300])
        if answer.status_code >= 400 and answer.is_json:  # the API's and the webhooks' refusals: one shape
            assert set(answer.json) == {"error", "detail", "status"}, answer.json
            assert answer.json["status"] == answer.status_code

    attempt()
    assert sum(seen.values()) >= EXAMPLES and min(seen.values()) >= EXAMPLES // 50, seen  # every target was hit

    expected = {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Content-Language",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    }
    mails = mailbox.messages()
    assert len(mails) >= 20  # sign-ups with hostile names got through, so their mails are checked too
    for mail in mails:
        assert set(mail.keys()) <= expected, sorted(set(mail.keys()) - expected)
        assert len(mail.get_all("To")) == 1 and "\n" not in mail["To"] and "\r" not in mail["Subject"]
        assert len(mail["To"].addresses) == 1
    with app.app_context():
        db.session.remove()


def test_api_bodies_that_are_not_json_objects_are_refused_clearly(app, client, runner):
    api = make_token(runner, "subscribe")
    for raw in (b"", b"{", b"[]", b'"text"', b"\xff\xfe", json.dumps({"email": None}).encode()):
        answer = client.post("/api/v1/subscriptions", data=raw, headers={**api, "Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500 and answer.json["error"], raw
        assert answer.json["status"] == answer.status_code and answer.json["detail"], raw
    with app.app_context():
        db.session.remove()
