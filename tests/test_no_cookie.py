"""Subscribers' pages set no cookie.

Mysoft's notice says its site sets no tracking cookies, and the service's public pages set
none at all: only the dashboard, for staff, has a session. Every route outside /dashboard is
walked as ``app.url_map`` lists it (a new route is walked without a change here), with every
method it takes and valid tokens where it takes one, by a fresh browser and by browsers that
come back with cookies of earlier visits. The sign-up form is protected without a cookie: a
signed, dated token bound to its notice, and a refusal of posts started by another site.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.routing import Rule

from app import create_app
from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription

from .browser.harness import launched_chromium
from .support import (
    PUBLIC_URL,
    Mailbox,
    csrf_token,
    free_port,
    link_in,
    live_server,
    sign_up,
    subscribe_and_confirm,
    unsubscribe_path,
)
from .test_dashboard import PASSWORD, create_user, log_in

WEBHOOK_SECRETS = {"MAILCHIMP_WEBHOOK_SECRET": "m" * 40, "APSIS_WEBHOOK_SECRET": "a" * 40}
# Cookies a browser may bring back: never ours to set again on a subscriber's page.
STALE = "session=eyJfZnJlc2giOmZhbHNlfQ.aaaaaa.not-a-signature; remember_token=1|0123456789abcdef"
BROWSERS = ("fresh", "stale cookies", "old session", "marketer")
EXPIRED = "Formuläret hade gått ut"  # the form-expired message, in Swedish (the default language)


@pytest.fixture
def app_env(app_env: dict[str, str]) -> dict[str, str]:
    """With the webhooks' secrets set, so their routes are walked past the secret check too."""
    return {**app_env, **WEBHOOK_SECRETS}


def stored(app) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """Subscriptions, evidence events and outbox jobs: what a sign-up would add to."""
    with app.app_context():
        found = tuple(
            db.session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Subscription, ConsentEvent, OutboxJob)
        )
        db.session.remove()
    return found  # type: ignore[return-value]


def visitor(app, runner, browser: str) -> tuple[FlaskClient, dict[str, str]]:  # type: ignore[no-untyped-def]
    """A client that comes as ``browser`` does, and the headers it sends with every request."""
    if browser == "fresh":
        return app.test_client(), {}
    client = app.test_client(use_cookies=False)  # it sends exactly the Cookie header given
    if browser == "stale cookies":
        return client, {"Cookie": STALE}
    if browser == "old session":
        # What the sign-up page used to set, signed with the service's own key: Flask-WTF's CSRF
        # token, and Flask-Login's note to clear a remember-me cookie on the next answer.
        signer = app.session_interface.get_signing_serializer(app)
        old = signer.dumps({"csrf_token": "0" * 40, "_remember": "clear", "lang": "en"})
        return client, {"Cookie": f"session={old}; remember_token=1|0123456789abcdef"}
    # A marketer logged in on the dashboard, whose browser sends that session cookie everywhere
    # (as it did while the cookie's path was "/").
    create_user(runner, "maria@munkeby.se", "marketer")
    desk = app.test_client()
    assert log_in(desk, "maria@munkeby.se").status_code == 302
    return client, {"Cookie": f"session={desk.get_cookie('session', path='/dashboard').value}"}


def mailed_tokens(app, mailbox: Mailbox) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Valid tokens for each token route, taken from the mails a subscriber gets."""
    setup = app.test_client()
    welcome = subscribe_and_confirm(setup, mailbox, "munkeby", "walker@example.com", "Walker")
    assert sign_up(setup, "mysoft", "pending@example.com").status_code == 303
    manage = link_in(welcome, "manage")
    for kind in ("export", "erase"):
        assert setup.post(f"{manage}/request", data={"kind": kind}).status_code == 303
    *_, export_mail, erase_mail = mailbox.to("walker@example.com")

    def last(path: str) -> str:
        return path.rsplit("/", 1)[1]

    confirm = last(link_in(mailbox.last("pending@example.com"), "confirm"))
    manage_token = last(manage)
    return {
        "public.confirm": [confirm],
        "public.resend": [confirm],
        "public.unsubscribe": [last(unsubscribe_path(welcome))],
        "public.manage": [manage_token],
        "public.manage_name": [manage_token],
        "public.manage_unsubscribe": [manage_token],
        "public.manage_request": [manage_token],
        # The erasure last of all (the walk sorts it so): it deletes what the other links find.
        "public.data_link": [last(link_in(export_mail, "manage/data")), last(link_in(erase_mail, "manage/data"))],
    }


def public_rules(app) -> list[Rule]:  # type: ignore[no-untyped-def]
    return [rule for rule in app.url_map.iter_rules() if not re.match(r"/dashboard(/|$)", rule.rule)]


def paths(app, rule: Rule, tokens: dict[str, list[str]]) -> list[str]:  # type: ignore[no-untyped-def]
    """The rule's path with every value worth trying for its arguments: each notice, each token
    mailed for it and one that is not a token, the webhooks' secrets, a static file."""
    notices = app.extensions["notices"]
    options: dict[str, list[str]] = {}
    for arg in sorted(rule.arguments):
        if arg == "slug":
            options[arg] = sorted(notices)
        elif arg == "version":
            options[arg] = sorted(notice.version for notice in notices.values())
        elif arg == "token":
            options[arg] = [*tokens.get(rule.endpoint, []), "not-a-token"]
        elif arg == "secret":
            options[arg] = [app.config.get(f"{rule.endpoint.rsplit('.', 1)[1].upper()}_WEBHOOK_SECRET") or "wrong"]
        elif arg == "filename":
            options[arg] = ["style.css", "no-such-file.css"]
        else:  # an argument this test has not met: a plain value still reaches the route
            options[arg] = ["1"]
    found = []
    for combination in itertools.product(*options.values()):
        built = rule.build(dict(zip(options, combination, strict=True)), append_unknown=False)
        assert built is not None, rule.rule
        found.append(built[1])
    return found


def form_token_of(client, slug: str, headers: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    """The token of ``slug``'s sign-up form, fetched as the browser would: that answer sets no cookie either."""
    answer = client.get(f"/{slug}/subscribe", headers=headers)
    assert answer.headers.getlist("Set-Cookie") == [], (slug, answer.headers)
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', answer.get_data(as_text=True))
    assert found, "no token on the form"
    return found.group(1)


def post_body(client, headers: dict[str, str], slug: str, n: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One form that every public POST finds its fields in: a whole sign-up (with the form's own
    token), one-click, a name, a notice and a data request."""
    return {
        "csrf_token": form_token_of(client, slug, headers),
        "email": f"walk{n}@example.com",
        "name": "Walker",
        "consent": "y",
        "List-Unsubscribe": "One-Click",
        "notice": slug,
        "kind": "export",
    }


@pytest.mark.parametrize("browser", BROWSERS)
def test_no_public_answer_sets_a_cookie(app, runner, mailbox, browser):
    tokens = mailed_tokens(app, mailbox)
    client, headers = visitor(app, runner, browser)
    requests: list[tuple[str, str, dict[str, Any] | None]] = []
    endpoints = set()
    for rule in public_rules(app):
        endpoints.add(rule.endpoint)
        for path in paths(app, rule, tokens):
            for method in sorted(rule.methods or ()):
                slug = path.split("/")[1] if "slug" in rule.arguments else "munkeby"
                body = post_body(client, headers, slug, len(requests)) if method == "POST" else None
                requests.append((method, path, body))
                if rule.endpoint == "public.subscribe" and method == "POST":
                    requests.append((method, path, {}))  # the answer with every error on it
    erase = tokens["public.data_link"][1]
    requests.sort(key=lambda r: (r[0] == "POST", erase in r[1]))  # reads first, the erasure last
    requests += [
        ("GET", "/no-such-page", None),
        ("GET", "/munkeby/subscribe?lang=e%00n", None),
        ("DELETE", "/munkeby/subscribe", None),
        ("POST", "/munkeby/subscribe", {"email": "x@example.com", "name": "x" * (1024 * 1024)}),
    ]
    answers: dict[tuple[str, str], int] = {}
    for method, path, body in requests:
        answer = client.open(path, method=method, data=body, headers=headers)
        # /readyz answers 503 by design while no outbox worker runs (none does here).
        assert answer.status_code < 500 or (path == "/readyz" and answer.status_code == 503), (method, path)
        assert answer.headers.getlist("Set-Cookie") == [], (browser, method, path, answer.headers)
        answers.setdefault((method, path), answer.status_code)
        answer.close()  # a static file is sent from an open file
    good = post_body(client, headers, "mysoft", 0)
    cross_site = client.post("/mysoft/subscribe", data=good, headers={**headers, "Sec-Fetch-Site": "cross-site"})
    app.config["SUBSCRIBE_RATE_LIMIT"] = "1 per hour"
    client.post("/mysoft/subscribe", data={}, headers=headers)  # the one allowed (the window starts anew)
    limited = client.post("/mysoft/subscribe", data={}, headers=headers)
    for answer in (cross_site, limited):
        assert answer.headers.getlist("Set-Cookie") == [], (browser, answer.status_code)
    assert (cross_site.status_code, limited.status_code) == (403, 429)
    if browser == "fresh":  # and the browser holds none now
        assert client.get_cookie("session") is None and client.get_cookie("remember_token") is None

    # The walk reached every public endpoint, and the tokens it carried were good ones.
    assert endpoints >= {"public.subscribe", "public.confirm", "public.unsubscribe", "public.data_link", "static"}
    assert not any(endpoint.startswith("dashboard.") for endpoint in endpoints)
    [confirm], [unsubscribe], [manage] = (tokens[e] for e in ("public.confirm", "public.unsubscribe", "public.manage"))
    export, erase = tokens["public.data_link"]
    assert answers[("GET", "/munkeby/subscribe")] == 200
    assert answers[("POST", "/munkeby/subscribe")] == 303
    assert answers[("GET", "/munkeby/subscribe/sent")] == 200
    assert answers[("GET", "/static/style.css")] == 200
    for page in (f"/confirm/{confirm}", f"/unsubscribe/{unsubscribe}", f"/manage/{manage}", f"/manage/data/{export}"):
        assert answers[("GET", page)] == 200, page
    assert answers[("POST", f"/confirm/{confirm}")] == 200
    assert answers[("POST", f"/unsubscribe/{unsubscribe}")] == 200  # one-click
    assert answers[("POST", f"/manage/{manage}/request")] == 303
    assert answers[("POST", f"/manage/data/{erase}")] == 200
    assert answers[("GET", "/no-such-page")] == 404
    assert answers[("GET", "/munkeby/subscribe?lang=e%00n")] == 400
    assert answers[("DELETE", "/munkeby/subscribe")] == 405


def test_a_logged_in_marketer_keeps_the_session_through_public_pages(app, client, runner):
    """The session cookie is sent to the dashboard only, and public pages neither read nor rewrite it."""
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    cookie = client.get_cookie("session", path="/dashboard")
    assert cookie is not None and cookie.path == "/dashboard"
    # A browser that still holds the cookie for every path (as issued before it was scoped)
    # sends it to the public pages too: they neither read it nor answer with one.
    for path in ("/munkeby/subscribe", "/mysoft/privacy", "/healthz", "/"):
        answer = client.get(path, headers={"Cookie": f"session={cookie.value}"})
        assert answer.headers.getlist("Set-Cookie") == [] and "Cookie" not in answer.headers.get("Vary", ""), path
    sign_up(client, "munkeby", "colleague@example.com")
    assert client.get("/dashboard/").status_code == 200


def test_under_a_path_prefix_the_dashboard_session_cookie_comes_back(app, runner):
    """Served at https://host/nyhetsbrev/ (SCRIPT_NAME), the dashboard is /nyhetsbrev/dashboard."""
    create_user(runner, "maria@munkeby.se", "marketer")
    prefixed = app.test_client()
    base = "http://localhost/nyhetsbrev/"
    page = prefixed.get("dashboard/login", base_url=base).get_data(as_text=True)
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert token is not None
    answer = prefixed.post(
        "dashboard/login",
        base_url=base,
        data={"csrf_token": token.group(1), "email": "maria@munkeby.se", "password": PASSWORD},
    )
    assert answer.status_code == 302
    assert "Path=/nyhetsbrev/dashboard" in " ".join(answer.headers.getlist("Set-Cookie"))
    assert prefixed.get("dashboard/", base_url=base).status_code == 200


# --- the sign-up form's own token ---------------------------------------------------------


def form(client, slug: str = "munkeby", **fields: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A complete sign-up of ``slug``'s form, as a person sends it, with ``fields`` changed."""
    token = csrf_token(client, f"/{slug}/subscribe")
    return {"csrf_token": token, "email": "anna@example.com", "consent": "y", **fields}


def refused_as_expired(app, client, mailbox: Mailbox, data: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    answer = client.post("/munkeby/subscribe", data=data)
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert EXPIRED in page and 'id="error-summary"' in page
    assert stored(app) == (0, 0, 0) and mailbox.messages() == []


def test_a_form_without_its_token_is_refused_and_changes_nothing(app, client, mailbox):
    data = form(client)
    del data["csrf_token"]
    refused_as_expired(app, client, mailbox, data)
    # The page it answers with carries a fresh token: sent from there, the form goes through.
    page = client.post("/munkeby/subscribe", data=data).get_data(as_text=True)
    again = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert again and client.post("/munkeby/subscribe", data={**data, "csrf_token": again.group(1)}).status_code == 303


def test_a_forged_token_is_refused(app_env, app, client, mailbox):
    forged = form(client)
    head, _, signature = forged["csrf_token"].rpartition(".")
    refused_as_expired(app, client, mailbox, {**forged, "csrf_token": f"{head}.{signature[::-1]}"})
    other = create_app(env={**app_env, "SECRET_KEY": "another-secret-key-" + "z" * 32})  # another service's key
    elsewhere = form(other.test_client())
    with other.app_context():
        db.engine.dispose()
    refused_as_expired(app, client, mailbox, {**form(client), "csrf_token": elsewhere["csrf_token"]})
    refused_as_expired(app, client, mailbox, form(client, csrf_token="not-a-token"))


def test_a_token_of_another_notice_does_not_post_to_this_one(app, client, mailbox):
    mysoft = form(client, "mysoft")
    refused_as_expired(app, client, mailbox, mysoft)  # posted to /munkeby/subscribe


def test_an_old_form_is_refused_and_a_recent_one_accepted(app, client, mailbox):
    now = datetime.now(UTC)
    with time_machine.travel(now - timedelta(hours=2, minutes=1)):
        old = form(client)
    refused_as_expired(app, client, mailbox, old)
    with time_machine.travel(now - timedelta(hours=1, minutes=59)):
        recent = form(client, email="recent@example.com")
    assert client.post("/munkeby/subscribe", data=recent).status_code == 303


def test_a_form_served_before_a_key_rotation_still_posts(app_env, mailbox):
    old_key = app_env["SECRET_KEY"]
    before = create_app(env=app_env)
    data = form(before.test_client())
    new_key = "the-new-secret-key-" + "n" * 32
    rotated = create_app(env={**app_env, "SECRET_KEY": new_key, "SECRET_KEY_FALLBACKS": old_key})
    try:
        assert rotated.test_client().post("/munkeby/subscribe", data=data).status_code == 303
        assert mailbox.last("anna@example.com")
    finally:
        for each in (before, rotated):
            each.extensions["after_response"].wait_idle(timeout=60)
            with each.app_context():
                db.engine.dispose()


def test_token_less_floods_are_still_counted_by_the_rate_limit(app, client):
    app.config["SUBSCRIBE_RATE_LIMIT"] = "3 per hour"
    statuses = [client.post("/munkeby/subscribe", data={"email": f"f{i}@example.com"}).status_code for i in range(3)]
    assert statuses == [400, 400, 400]
    assert client.post("/munkeby/subscribe", data=form(client)).status_code == 429
    assert stored(app) == (0, 0, 0)


# --- where the post comes from ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": PUBLIC_URL},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a page that hides its origin
        {"Origin": "http://news.example.org"},  # our host, but not our scheme
        {"Origin": PUBLIC_URL + ":8443"},
        {"Origin": "https://news.example.org.evil.example"},
        {"Origin": "https://[::1"},  # not even a URL: refused, never an error
        {"Origin": "https://[zz]"},
    ],
    ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()),
)
def test_a_sign_up_sent_from_another_site_is_refused_and_changes_nothing(app, client, mailbox, headers):
    data = form(client)  # a good token, as a page elsewhere could fetch one
    answer = client.post("/munkeby/subscribe?lang=en", data=data, headers=headers)
    assert answer.status_code == 403
    page = answer.get_data(as_text=True)
    assert "sent from another website" in page and "Nothing was changed" in page
    assert stored(app) == (0, 0, 0) and mailbox.messages() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": PUBLIC_URL, "Sec-Fetch-Site": "same-origin"},
        {"Origin": "HTTPS://NEWS.EXAMPLE.ORG:443"},  # the same origin, however written
        {"Sec-Fetch-Site": "same-origin"},
        # The service opened under another name for itself (localhost for 127.0.0.1): the
        # browser says the form and the post share their origin, which is what matters.
        {"Origin": "http://localhost:5000", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # the person's own action (a bookmark, the address bar)
        {},  # an older browser or a script: the token alone has to do
    ],
    ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()) or "neither",
)
def test_a_sign_up_from_our_own_page_or_without_either_header_is_accepted(app, client, mailbox, headers):
    answer = client.post("/munkeby/subscribe", data=form(client), headers=headers)
    assert answer.status_code == 303
    assert mailbox.last("anna@example.com")


def test_links_mailed_to_subscribers_need_no_origin_and_no_form_token(app, client, mailbox):
    """Mail clients post one-click without Origin or token; the token-authorised pages are the
    signed link's to authorise, wherever they are posted from."""
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "reader@example.com")
    mail_client = app.test_client(use_cookies=False)
    elsewhere = {"Origin": "https://webmail.example", "Sec-Fetch-Site": "cross-site"}
    manage = link_in(welcome, "manage")
    assert mail_client.post(f"{manage}/request", data={"kind": "export"}, headers=elsewhere).status_code == 303
    one_click = mail_client.post(
        unsubscribe_path(welcome), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert one_click.status_code == 200 and one_click.headers.getlist("Set-Cookie") == []


# --- in a real browser --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.browser
def test_a_real_browser_signs_up_with_no_cookie_and_passes_the_origin_check(app_env, tmp_path):
    port = free_port()
    served = create_app(env={**app_env, "PUBLIC_URL": f"http://127.0.0.1:{port}"})
    mailbox = Mailbox(tmp_path / "instance" / "mail")
    try:
        with launched_chromium() as browser, live_server(served, port) as base:
            context = browser.new_context(locale="en-GB")  # type: ignore[attr-defined]
            page = context.new_page()
            page.goto(f"{base}/munkeby/subscribe")
            page.fill("#email", "browser@example.com")
            page.check("#consent")
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"/munkeby/subscribe/sent"))
            assert context.cookies() == []
            context.close()
        served.extensions["after_response"].wait_idle(timeout=60)
        assert mailbox.last("browser@example.com")
    finally:
        with served.app_context():
            db.engine.dispose()
