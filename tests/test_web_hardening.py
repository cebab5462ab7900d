"""What a hostile or careless client can do over HTTP: mail scanners following every link,
mail clients repeating one-click requests, forged Host headers, forms posted without their
CSRF token, and pages without their security headers. (That subscribers' pages set no
cookie at all is tests/test_no_cookie.py's.)"""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from app import create_app
from app.extensions import db
from app.models import ConsentEvent, DataRequest, OutboxJob, Subscription, Suppression

from .support import PUBLIC_URL, csrf_token, link_in, sign_up, subscribe_and_confirm, text_body, unsubscribe_path
from .test_dashboard import create_user, log_in

LINK = re.compile(r"https?://[^\s<>\"')]+")


def everything(app) -> tuple:  # type: ignore[no-untyped-def]
    """Every row a request could change, as one comparable value."""
    with app.app_context():
        found = tuple(
            tuple(tuple(row) for row in db.session.execute(select(*table.__table__.c)).all())
            for table in (Subscription, Suppression, ConsentEvent, OutboxJob, DataRequest)
        )
        db.session.remove()
    return found


def links_in(message: EmailMessage) -> set[str]:
    found = set(LINK.findall(text_body(message)))
    found |= set(LINK.findall(message.get_body(("html",)).get_content()))  # type: ignore[union-attr]
    if message["List-Unsubscribe"]:
        found |= set(LINK.findall(message["List-Unsubscribe"]))
    return found


def every_mail(client, mailbox) -> list[EmailMessage]:  # type: ignore[no-untyped-def]
    """One of each mail a subscriber may get: confirmation, welcome, export and erasure links."""
    sign_up(client, "munkeby", "waiting@example.com", "Wera")
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "reader@example.com")
    manage = link_in(welcome, "manage")
    for kind in ("export", "erase"):
        assert client.post(f"{manage}/request", data={"kind": kind}).status_code == 303
    return mailbox.messages()


def test_mail_scanners_following_every_link_change_nothing(app, client, mailbox):
    mails = every_mail(client, mailbox)
    links = set().union(*(links_in(m) for m in mails))
    assert {"confirm", "unsubscribe", "manage"} <= {u.split("/")[3] for u in links if u.count("/") > 3}
    assert sum("/manage/data/" in u for u in links) == 2  # the export and the erasure link
    before = everything(app)
    scanner = app.test_client()  # no cookies, as a scanner comes
    for url in sorted(links):
        assert url.startswith(PUBLIC_URL + "/"), url
        path = url[len(PUBLIC_URL) :]
        for i in range(50):
            method = ("GET", "HEAD", "OPTIONS")[i % 3]
            answer = scanner.open(path, method=method)
            assert answer.status_code < 500, (method, path, answer.status_code)
    assert everything(app) == before  # 0 state changes, 0 outbox jobs
    assert len(mailbox.messages()) == len(mails)  # and no mail sent


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_one_click_repeated_ten_times_records_one_opt_out_and_one_job(app, client, mailbox, encoding, slug):
    welcome = subscribe_and_confirm(client, mailbox, slug, "clicker@example.com")
    path = unsubscribe_path(welcome)
    with app.app_context():
        jobs_before = db.session.execute(select(func.count()).select_from(OutboxJob)).scalar_one()
    mail_client = app.test_client()  # RFC 8058: no cookies, no CSRF token
    for _ in range(10):
        if encoding == "urlencoded":
            answer = mail_client.post(
                path, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
            )
        else:
            answer = mail_client.post(path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
        assert answer.status_code == 200 and "Location" not in answer.headers
    with app.app_context():
        opt_outs = db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "opted_out")
        ).scalar_one()
        new_jobs = (
            db.session.execute(select(OutboxJob.kind).where(OutboxJob.id > jobs_before, OutboxJob.kind != "mail"))
            .scalars()
            .all()
        )
    assert opt_outs == 1
    assert new_jobs == ["sync_optout"]  # one provider job: the opt-out (Munkeby) or the delete (Mysoft)


@pytest.mark.parametrize("proxied", [False, True])
def test_forged_host_headers_never_reach_a_mail(app_env, mailbox, proxied):
    env = {**app_env, "TRUSTED_PROXY_COUNT": "1"} if proxied else app_env
    app = create_app(env=env)
    client = app.test_client()
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    token = csrf_token(client, "/munkeby/subscribe", **forged)
    data = {"csrf_token": token, "email": "target@example.com", "name": "T", "consent": "y"}
    assert client.post("/munkeby/subscribe", data=data, headers=forged).status_code == 303
    confirm = link_in(mailbox.last("target@example.com"), "confirm")
    assert client.post(confirm, headers=forged).status_code == 200
    welcome = mailbox.last("target@example.com")
    manage = link_in(welcome, "manage")
    client.post(f"{manage}/request", data={"kind": "export"}, headers=forged)
    mails = mailbox.to("target@example.com")
    assert len(mails) == 3
    for mail in mails:
        for url in links_in(mail):
            assert url.startswith(PUBLIC_URL + "/"), url
        assert "evil.example" not in mail.as_string()
    with app.app_context():
        db.engine.dispose()


def test_every_dashboard_post_without_its_csrf_token_is_refused(app, client, runner, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "someone@example.com")
    create_user(runner, "admin@munkeby.se", "admin")
    assert log_in(client, "admin@munkeby.se").status_code == 302
    before = everything(app)
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("dashboard.") or "POST" not in rule.methods:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = re.sub(rf"<(?:[^:>]+:)?{arg}>", "1" if arg.endswith("_id") else "retry", path)
        answer = client.post(path, data={"email": "x@example.com", "reason": "test"})
        assert answer.status_code == 400, (path, answer.status_code)
        checked += 1
    assert checked >= 8
    assert everything(app) == before
    assert client.get("/dashboard/").status_code == 200  # still logged in: the refusals were the token's


def holding_a_value(answer) -> list[str]:  # type: ignore[no-untyped-def]
    """The cookies an answer sets (the dashboard's only). A deletion (an empty value that
    expires at once, as Flask-Login sends for a remember-me cookie) carries nothing to protect."""
    cookies = answer.headers.getlist("Set-Cookie")
    for cookie in cookies:
        if re.match(r"[^=]+=;", cookie):
            assert "Max-Age=0" in cookie, cookie
    return [c for c in cookies if not re.match(r"[^=]+=;", c)]


def pages(client, mailbox) -> list[str]:  # type: ignore[no-untyped-def]
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "viewer@example.com")
    sign_up(client, "mysoft", "pending@example.com")
    return [
        "/",
        "/munkeby/subscribe",
        "/mysoft/subscribe",
        "/munkeby/privacy",
        "/munkeby/subscribe/sent",
        link_in(mailbox.last("pending@example.com"), "confirm"),
        unsubscribe_path(welcome),
        link_in(welcome, "manage"),
        "/confirm/not-a-token",
        "/unsubscribe/not-a-token",
        "/manage/not-a-token",
        "/no-such-page",
        "/healthz",
        "/dashboard/login",
        "/api/v1/openapi.json",
    ]


def test_every_page_carries_the_security_headers_and_flagged_cookies(app, client, runner, mailbox):
    public = pages(client, mailbox)
    create_user(runner, "boss@munkeby.se", "admin")
    assert log_in(client, "boss@munkeby.se").status_code == 302
    dashboard = [
        "/dashboard/",
        "/dashboard/subscribers",
        "/dashboard/subscribers?q=viewer",
        "/dashboard/import",
        "/dashboard/tokens",
    ]
    for path in public + dashboard:
        answer = client.get(path)
        assert answer.status_code < 500, path
        csp = answer.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
        assert not re.search(r"https?:|\*|'unsafe-inline'|'unsafe-eval'", csp), (path, csp)
        assert answer.headers.get("Referrer-Policy") == "same-origin", path
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", path
        assert answer.headers.get("X-Frame-Options") == "DENY", path
        for cookie in holding_a_value(answer):
            assert "HttpOnly" in cookie and "SameSite=" in cookie, (path, cookie)
    for path in public[5:8]:  # the token pages
        assert client.get(path).headers.get("Cache-Control") == "no-store", path


def test_in_production_cookies_are_secure_and_pages_demand_https(app_env):
    env = {**app_env, "APP_ENV": "production", "PUBLIC_URL": PUBLIC_URL}
    app = create_app(env=env)
    try:
        client = app.test_client()
        answer = client.get("/dashboard/login", base_url=PUBLIC_URL)  # its form's CSRF token is in the session
        cookies = holding_a_value(answer)
        assert cookies and all("Secure" in c and "HttpOnly" in c and "Path=/dashboard" in c for c in cookies)
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
        public = client.get("/munkeby/subscribe", base_url=PUBLIC_URL)
        assert public.headers.getlist("Set-Cookie") == []
        assert public.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        with app.app_context():
            db.engine.dispose()


# Each would otherwise be answered as usual: a NUL in a place no handler checks.
NUL_REQUESTS = {
    "path part": ("GET", "/munkeby/privacy%00", {}),
    "query key": ("GET", "/munkeby/subscribe?la%00ng=en", {}),
    "query value": ("GET", "/munkeby/subscribe?utm=e%00n", {}),
    "form field": ("POST", "UNSUBSCRIBE", {"form": "List-Unsubscribe=One-Click&note=a%00b"}),
    "raw form byte": ("POST", "UNSUBSCRIBE", {"form": b"List-Unsubscribe=One-Click&note=a\x00b"}),
    "multipart field": ("POST", "UNSUBSCRIBE", {"multipart": {"List-Unsubscribe": "One-Click", "note": "a\x00b"}}),
    "JSON value, nested": ("POST", "/api/v1/opt-outs", {"json": {"notice": "munkeby", "x": [{"y": "\x00"}]}}),
    "JSON key": ("POST", "/api/v1/opt-outs", {"json": {"notice\x00": "munkeby"}}),
}


@pytest.mark.parametrize("where", NUL_REQUESTS)
def test_a_nul_anywhere_in_a_request_is_refused_before_any_handler(app, client, mailbox, where):
    method, path, body = NUL_REQUESTS[where]
    if path == "UNSUBSCRIBE":
        path = unsubscribe_path(subscribe_and_confirm(client, mailbox, "munkeby", "nul@example.com"))
    kwargs = {}
    if "form" in body:
        kwargs = {"data": body["form"], "content_type": "application/x-www-form-urlencoded"}
    elif "multipart" in body:
        kwargs = {"data": body["multipart"], "content_type": "multipart/form-data"}
    elif "json" in body:
        kwargs = {"json": body["json"]}
    before = everything(app)
    assert client.open(path, method=method, **kwargs).status_code == 400
    assert everything(app) == before
    # The same request without the NUL is answered (an API call without a token: 401).
    clean = path.replace("%00", "")
    if "form" in body:
        kwargs["data"] = body["form"].replace("%00" if isinstance(body["form"], str) else b"\x00", type(body["form"])())
    elif "multipart" in body:
        kwargs["data"] = {k: v.replace("\x00", "") for k, v in body["multipart"].items()}
    elif "json" in body:
        kwargs["json"] = {"notice": "munkeby"}
    assert client.open(clean, method=method, **kwargs).status_code in (200, 401)


def test_text_that_only_looks_like_a_nul_is_not_refused(client):
    """``%2500`` is the text "%00", and ``\\\\u0000`` in JSON a backslash and "u0000": neither is a NUL."""
    assert client.get("/munkeby/subscribe?lang=%2500").status_code == 200
    assert client.get("/munkeby/privacy%2500").status_code == 404  # reached the router
    assert client.post("/api/v1/opt-outs", json={"notice": "\\u0000"}).status_code == 401  # reached the API


TOO_LARGE = {"data": b"{" + b" " * (1024 * 1024) + b"}", "content_type": "application/json"}
MULTIPART = {"data": {"type": "x"}, "content_type": "multipart/form-data"}


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("GET", "/api/v1/no-such-endpoint", {}, 404),
        ("DELETE", "/api/v1/consent", {}, 405),
        ("GET", "/api/v1/events", {}, 401),
        ("POST", "/api/v1/opt-outs", TOO_LARGE, 413),
        ("POST", "/webhooks/apsis/" + "w" * 30, {"json": {"type": "unsubscribe"}}, 404),
        ("GET", "/webhooks/apsis/" + "w" * 30, {}, 405),
        ("POST", "/webhooks/mailchimp/" + "w" * 30, MULTIPART, 415),
        ("POST", "/webhooks/no-such-provider/x", {}, 404),
    ],
)
def test_every_json_error_has_the_one_shape(client, method, path, kwargs, status):
    """Whether a route refuses the request or the framework does, the API and the webhooks answer alike."""
    answer = client.open(path, method=method, **kwargs)
    assert answer.status_code == status and answer.mimetype == "application/json"
    assert set(answer.json) == {"error", "detail", "status"} and answer.json["status"] == status
    assert answer.json["error"].isidentifier() and answer.json["detail"]
    if status == 405:
        assert answer.headers["Allow"]
