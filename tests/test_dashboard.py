"""The marketers' dashboard, driven through its pages as a marketer would."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.extensions import db
from app.models import ConsentEvent, OutboxJob, Subscription, User

from .support import queue_sync_jobs, subscribe_and_confirm

PASSWORD = "correct horse battery staple"


def create_user(runner, email: str, role: str, notices: tuple[str, ...] = ("munkeby", "mysoft")) -> None:  # type: ignore[no-untyped-def]
    args = ["users", "create", email, "--role", role, "--password", PASSWORD]
    for slug in notices:
        args += ["--notice", slug]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output


def form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def log_in(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    token = form_token(client.get("/dashboard/login").get_data(as_text=True))
    return client.post("/dashboard/login", data={"csrf_token": token, "email": email, "password": password})


@pytest.fixture
def marketer(app, client, runner):  # type: ignore[no-untyped-def]
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    return client


def actor_of(app, email: str) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        return f"user:{db.session.execute(select(User.id).where(User.email == email)).scalar_one()}"


def subscription_ref(app, email: str) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(select(Subscription.ref).where(Subscription.email == email)).scalar_one()


# Open to anyone: the login form, and the API's description of itself.
PUBLIC_ENDPOINTS = ("dashboard.login", "api.openapi")


def concrete_path(rule) -> str:  # type: ignore[no-untyped-def]
    """A URL the rule matches, with a plausible value for each of its parts."""
    path = rule.rule
    for arg in rule.arguments:
        value = "1" if arg.endswith("_id") else "retry" if arg == "what" else "x"
        path = re.sub(rf"<(?:[^:>]+:)?{arg}(?:\([^)]*\))?>", value, path)
    return path


def test_every_dashboard_route_refuses_anonymous_visitors(app, client):
    # A real CSRF token (and the session it belongs to), so that a POST is
    # refused for want of a login, not stopped earlier by the CSRF check.
    token = form_token(client.get("/dashboard/login").get_data(as_text=True))
    checked = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(("dashboard.", "api.")) or rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        path = concrete_path(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            answer = client.open(path, method=method, data=None if method == "GET" else {"csrf_token": token})
            where = (method, path, answer.status_code)
            if rule.endpoint.startswith("api."):
                assert answer.status_code == 401 and answer.json["error"] == "unauthorized", where
            elif method == "GET":
                assert answer.status_code == 302, where
                assert answer.headers["Location"].startswith("/dashboard/login"), where
            else:
                assert answer.status_code == 401, where
            assert b"@" not in answer.data, path  # nothing personal leaks
            checked.add((method, rule.endpoint))
    assert {
        ("POST", "dashboard.outbox_action"),
        ("POST", "dashboard.rectify"),
        ("POST", "dashboard.logout"),
        ("GET", "dashboard.subject"),
        ("POST", "api.opt_out"),
    } <= checked
    assert len(checked) >= 20


def test_every_dashboard_and_api_view_states_the_role_or_scope_it_needs(app):
    # Checked on the registered view, so a new route without ``requires``/``needs``
    # fails here even before anyone thinks of testing it anonymously.
    from app.accounts import SCOPES
    from app.dashboard.auth import ROLE_RANK

    open_to_any_login = ("dashboard.logout",)
    views = {
        endpoint: view
        for endpoint, view in app.view_functions.items()
        if endpoint.startswith(("dashboard.", "api."))
        and endpoint not in PUBLIC_ENDPOINTS + open_to_any_login
        and not endpoint.endswith(".static")
    }
    assert len(views) >= 15
    for endpoint, view in views.items():
        if endpoint.startswith("dashboard."):
            assert getattr(view, "required_role", None) in ROLE_RANK, f"{endpoint} names no role"
        else:
            assert getattr(view, "required_scope", None) in SCOPES, f"{endpoint} names no scope"


def test_framework_errors_under_the_api_answer_with_stable_codes(client):
    # The API's own errors name a code (``unauthorized``); so must the ones the
    # framework raises, whatever language the caller's client asks for.
    # (Kept here, beside the route-guard tests, by the split of this working tree.)
    headers = {"Accept-Language": "sv"}
    oversized = b"{}" + b" " * (1024 * 1024 + 1)
    answers = {
        "not_found": client.get("/api/v1/nowhere", headers=headers),
        "method_not_allowed": client.delete("/api/v1/consent", headers=headers),
        "payload_too_large": client.post(
            "/api/v1/opt-outs", data=oversized, content_type="application/json", headers=headers
        ),
    }
    for _ in range(600):  # the API's limit per minute; the 601st is refused, token or not
        client.get("/api/v1/events", headers=headers)
    answers["rate_limited"] = client.get("/api/v1/events", headers=headers)
    for code, answer in answers.items():
        assert answer.mimetype == "application/json", code
        body = answer.json
        assert body["error"] == code and body["status"] == answer.status_code, body
        assert set(body) == {"error", "detail", "status"} and body["detail"].isascii(), body
    assert [answer.status_code for answer in answers.values()] == [404, 405, 413, 429]
    assert "GET" in answers["method_not_allowed"].headers["Allow"]


def test_login_wrong_password_then_right_then_logout(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    with app.app_context():
        stored = db.session.execute(select(User.password_hash).where(User.email == "maria@munkeby.se")).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    wrong = log_in(client, "maria@munkeby.se", "not the password at all")
    assert wrong.status_code == 401 and "Fel e-postadress eller lösenord" in wrong.get_data(as_text=True)
    unknown = log_in(client, "nobody@munkeby.se")
    assert unknown.status_code == 401
    right = log_in(client, "maria@munkeby.se")
    assert right.status_code == 302 and right.headers["Location"] == "/dashboard/"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/dashboard/").status_code == 200
    assert client.post("/dashboard/logout").status_code == 400  # no CSRF token
    token = form_token(client.get("/dashboard/").get_data(as_text=True))
    assert client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard/").status_code == 302


def test_login_is_rate_limited(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    answers = [log_in(client, "maria@munkeby.se", "wrong password number x").status_code for _ in range(11)]
    assert answers[:10] == [401] * 10 and answers[10] == 429


def test_next_never_leads_off_the_dashboard(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    token = form_token(client.get("/dashboard/login").get_data(as_text=True))
    data = {"csrf_token": token, "email": "maria@munkeby.se", "password": PASSWORD}
    answer = client.post("/dashboard/login?next=//evil.example/dashboard", data=data)
    assert answer.headers["Location"] == "/dashboard/"


def test_a_deactivated_user_is_logged_out_at_once(app, marketer):
    with app.app_context():
        db.session.execute(User.__table__.update().values(active=False))
        db.session.commit()
    assert marketer.get("/dashboard/").status_code == 302


def language_switch(page: str) -> str:
    match = re.search(r'<nav aria-label="[^"]+" class="lang">\s*<a href="([^"]+)"', page)
    assert match, "no language switch on the page"
    return match.group(1).replace("&amp;", "&")


def test_the_dashboard_remembers_the_language_chosen(app, client, runner):
    create_user(runner, "maria@munkeby.se", "marketer")
    login = client.get("/dashboard/login?lang=en").get_data(as_text=True)
    assert "<h1>Log in</h1>" in login
    data = {"csrf_token": form_token(login), "email": "maria@munkeby.se", "password": PASSWORD}
    answer = client.post("/dashboard/login?lang=en", data=data)
    assert answer.status_code == 302
    overview = client.get(answer.headers["Location"]).get_data(as_text=True)  # the choice outlives the login
    assert "<h1>Overview</h1>" in overview and '<html lang="en">' in overview
    # From the overview to the subscribers, by the menu's plain link: still English.
    assert 'href="/dashboard/subscribers">Subscribers</a>' in overview
    subscribers = client.get("/dashboard/subscribers?notice=munkeby&status=subscribed").get_data(as_text=True)
    assert "<h1>Subscribers</h1>" in subscribers
    # The switch keeps the page the user is on, filters and all.
    switch = language_switch(subscribers)
    assert switch == "/dashboard/subscribers?notice=munkeby&status=subscribed&lang=sv"
    swedish = client.get(switch).get_data(as_text=True)
    assert "<h1>Prenumeranter</h1>" in swedish
    assert language_switch(swedish) == "/dashboard/subscribers?notice=munkeby&status=subscribed&lang=en"
    assert "<h1>Översikt</h1>" in client.get("/dashboard/").get_data(as_text=True)


def test_the_language_choice_stays_on_the_dashboard(app, client, runner):
    english = client.get("/munkeby/privacy?lang=en")
    assert '<html lang="en">' in english.get_data(as_text=True)
    assert "Set-Cookie" not in english.headers  # subscriber pages remember nothing
    create_user(runner, "maria@munkeby.se", "marketer")
    log_in(client, "maria@munkeby.se")
    assert "<h1>Overview</h1>" in client.get("/dashboard/?lang=en").get_data(as_text=True)
    public = client.get("/munkeby/privacy")
    assert '<html lang="sv">' in public.get_data(as_text=True) and "Set-Cookie" not in public.headers


def test_users_create_refuses_weak_passwords_and_duplicates(runner):
    mine = ["--notice", "munkeby"]
    weak = runner.invoke(args=["users", "create", "a@munkeby.se", "--role", "admin", "--password", "short", *mine])
    assert weak.exit_code == 1 and "12 characters" in weak.output
    create_user(runner, "a@munkeby.se", "admin")
    again = runner.invoke(args=["users", "create", "A@munkeby.se", "--role", "viewer", "--password", PASSWORD, *mine])
    assert again.exit_code == 1 and "exists" in again.output
    prompted = runner.invoke(
        args=["users", "create", "b@munkeby.se", "--role", "viewer", *mine], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert prompted.exit_code == 0, prompted.output


def test_overview_shows_counts_rate_chart_and_sync_health(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "munkeby", "bo@example.com")
    page = marketer.get("/dashboard/").get_data(as_text=True)
    munkeby = page[page.index('id="n-munkeby"') : page.index('id="n-mysoft"')]
    assert re.search(r'data-figure="subscribed">2<', munkeby)
    assert re.search(r'data-figure="confirmation-rate">100,0\xa0%<', munkeby)  # as Swedish writes it
    assert munkeby.count("<polyline") == 3 and "http" not in munkeby.split("<svg")[1].split("</svg>")[0]
    assert 'data-figure="queued">2<' in page  # two provider syncs waiting (no credentials set)


def make_dead(app, kind: str) -> int:  # type: ignore[no-untyped-def]
    """The one job of ``kind`` fails for good, as a provider's permanent refusal would leave it."""
    with app.app_context():
        db.session.execute(
            OutboxJob.__table__.update().where(OutboxJob.kind == kind).values(state="dead", last_error="refused")
        )
        db.session.commit()
        [job_id] = db.session.execute(select(OutboxJob.id).where(OutboxJob.state == "dead")).scalars()
    return job_id


def dead_letters_listed(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'action="/dashboard/outbox/(\d+)/retry"', page)}


def test_a_dead_letter_can_be_retried_from_the_overview(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    job_id = make_dead(app, "sync_consent")
    page = marketer.get("/dashboard/").get_data(as_text=True)
    assert dead_letters_listed(page) == {job_id}
    assert marketer.post(f"/dashboard/outbox/{job_id}/retry", data={"csrf_token": form_token(page)}).status_code == 302
    assert dead_letters_listed(marketer.get("/dashboard/").get_data(as_text=True)) == set()
    with app.app_context():
        assert db.session.get(OutboxJob, job_id).state == "pending"
        [retried] = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.type == "provider_sync_retried")
        ).scalars()
        facts = json.loads(retried.facts)
        assert facts["actor"] == actor_of(app, "maria@munkeby.se") and facts["job"] == job_id
        assert retried.notice == "munkeby"


def test_a_dead_letter_can_be_discarded_from_the_overview_keeping_no_address(app, client, mailbox, marketer, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    ref = subscription_ref(app, "anna@example.com")
    token = form_token(marketer.get(f"/dashboard/subscribers/{ref}/erase").get_data(as_text=True))
    marketer.post(f"/dashboard/subscribers/{ref}/erase", data={"csrf_token": token, "confirm": "anna@example.com"})
    job_id = make_dead(app, "sync_optout")  # the provider never deleted the address
    with app.app_context():
        assert db.session.get(OutboxJob, job_id).payload["personal_email"] == "anna@example.com"
    page = marketer.get("/dashboard/").get_data(as_text=True)
    assert dead_letters_listed(page) == {job_id}

    answer = marketer.post(f"/dashboard/outbox/{job_id}/discard", data={"csrf_token": form_token(page)})
    assert answer.status_code == 302
    page = marketer.get("/dashboard/").get_data(as_text=True)
    assert dead_letters_listed(page) == set() and 'data-figure="dead">0<' in page
    with app.app_context():
        job = db.session.get(OutboxJob, job_id)
        assert job.state == "discarded" and "anna@example.com" not in json.dumps(job.payload)
        [discarded] = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.type == "provider_sync_discarded")
        ).scalars()
        facts = json.loads(discarded.facts)
        assert facts["actor"] == actor_of(app, "maria@munkeby.se") and facts["job"] == job_id
        assert discarded.channel == "dashboard" and discarded.subscription_ref == ref
    # Discarded is final: neither button works on it any more.
    again = marketer.post(f"/dashboard/outbox/{job_id}/retry", data={"csrf_token": form_token(page)})
    assert again.status_code == 302
    assert "inte längre ett misslyckat jobb" in marketer.get(again.headers["Location"]).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(OutboxJob, job_id).state == "discarded"
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_subscribers_are_searched_filtered_and_paged_by_key(app, client, marketer):
    with app.app_context():
        queue_sync_jobs("munkeby", 60, "subscribed", "sync_consent")
    first = marketer.get("/dashboard/subscribers?notice=munkeby&status=subscribed").get_data(as_text=True)
    assert first.count("/dashboard/subscribers/") == 50
    after = re.search(r'rel="next" href="[^"]*after=(\d+)', first).group(1)
    second = marketer.get(f"/dashboard/subscribers?notice=munkeby&status=subscribed&after={after}").get_data(
        as_text=True
    )
    assert second.count("/dashboard/subscribers/") == 10 and 'rel="next"' not in second
    found = marketer.get("/dashboard/subscribers?q=reader5").get_data(as_text=True)
    expected = {"reader5@example.com"} | {f"reader5{i}@example.com" for i in range(10)}
    assert set(re.findall(r">(reader5\d*@example.com)<", found)) == expected
    assert marketer.get("/dashboard/subscribers?status=nonsense").status_code == 400
    assert marketer.get("/dashboard/subscribers?notice=nowhere").status_code == 404


def test_subject_page_export_and_certificate(app, client, mailbox, marketer, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    ref = subscription_ref(app, "anna@example.com")
    page = marketer.get(f"/dashboard/subscribers/{ref}?lang=en").get_data(as_text=True)
    assert "Signed up on the form" in page and "Consent confirmed" in page and "notice version" in page

    def exports() -> int:
        with app.app_context():
            query = select(func.count()).where(ConsentEvent.type == "subject_exported")
            return db.session.execute(query).scalar_one()

    # Following the address (a scanner, a prefetch) neither downloads nor records anything.
    assert marketer.get(f"/dashboard/subscribers/{ref}/export.json").status_code == 405
    assert marketer.post(f"/dashboard/subscribers/{ref}/export.json").status_code == 400  # no CSRF token
    assert exports() == 0
    download = marketer.post(f"/dashboard/subscribers/{ref}/export.json", data={"csrf_token": form_token(page)})
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.headers["Content-Type"].startswith("application/json")
    assert json.loads(download.data)["subscriptions"][0]["email"] == "anna@example.com"
    with app.app_context():
        [exported] = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "subject_exported")).scalars()
        assert json.loads(exported.facts)["actor"] == actor_of(app, "maria@munkeby.se")
    certificate = marketer.get(f"/dashboard/subscribers/{ref}/certificate?lang=sv").get_data(as_text=True)
    assert re.search(r'class="ok" data-figure="chain">\s*Kedjekontroll: alla \d+ händelser', certificate)
    assert "MISSLYCKADES" not in certificate
    with app.app_context():  # tamper with the evidence; the certificate must say so
        db.session.execute(
            ConsentEvent.__table__.update().where(ConsentEvent.type == "consent_confirmed").values(channel="forged")
        )
        db.session.commit()
    certificate = marketer.get(f"/dashboard/subscribers/{ref}/certificate?lang=en").get_data(as_text=True)
    assert re.search(r'class="warn" data-figure="chain">\s*Chain check FAILED at event \d+', certificate)
    assert "Chain check: all" not in certificate


def test_rectify_and_erase_are_evidence_with_the_acting_user(app, client, mailbox, marketer, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    ref = subscription_ref(app, "anna@example.com")
    token = form_token(marketer.get(f"/dashboard/subscribers/{ref}").get_data(as_text=True))
    marketer.post(
        f"/dashboard/subscribers/{ref}/rectify",
        data={"csrf_token": token, "name": "Anna Lind", "email": "anna@example.com"},
    )
    with app.app_context():
        assert db.session.execute(select(Subscription.name).where(Subscription.ref == ref)).scalar_one() == "Anna Lind"
        [rectified] = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "rectified")).scalars()
        assert json.loads(rectified.facts) == {"fields": ["name"], "actor": actor_of(app, "maria@munkeby.se")}

    token = form_token(marketer.get(f"/dashboard/subscribers/{ref}/erase").get_data(as_text=True))
    wrong = marketer.post(
        f"/dashboard/subscribers/{ref}/erase", data={"csrf_token": token, "confirm": "someone@else.com"}
    )
    assert wrong.status_code == 400
    assert runner.invoke(args=["subjects", "export", "anna@example.com"]).exit_code == 0
    done = marketer.post(
        f"/dashboard/subscribers/{ref}/erase", data={"csrf_token": token, "confirm": "anna@example.com"}
    )
    assert done.status_code == 302
    assert runner.invoke(args=["subjects", "export", "anna@example.com"]).exit_code == 1
    with app.app_context():
        [requested] = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "erasure_requested")).scalars()
        assert json.loads(requested.facts)["actor"] == actor_of(app, "maria@munkeby.se")
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_an_address_is_corrected_from_the_subject_page_and_the_provider_forgets_the_old_one(
    app, client, mailbox, marketer, runner
):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    subscribe_and_confirm(client, mailbox, "munkeby", "bo@example.com")
    subscribe_and_confirm(client, mailbox, "munkeby", "cleo@example.com")
    assert runner.invoke(args=["subjects", "erase", "cleo@example.com"]).exit_code == 0  # suppressed from now on
    ref = subscription_ref(app, "anna@example.com")
    token = form_token(marketer.get(f"/dashboard/subscribers/{ref}").get_data(as_text=True))

    def correct(address: str) -> str:
        answer = marketer.post(
            f"/dashboard/subscribers/{ref}/rectify", data={"csrf_token": token, "name": "Anna Berg", "email": address}
        )
        assert answer.status_code == 302
        return marketer.get(answer.headers["Location"]).get_data(as_text=True)

    def held(address: str) -> bool:
        return runner.invoke(args=["subjects", "export", address]).exit_code == 0

    def delete_jobs_for(address: str) -> list[OutboxJob]:
        with app.app_context():
            jobs = db.session.execute(select(OutboxJob).where(OutboxJob.kind == "sync_optout")).scalars()
            return [job for job in jobs if job.payload.get("personal_email") == address]

    refused = {
        "bo@example.com": "Den adressen finns redan under den här informationstexten.",
        "cleo@example.com": "Den adressen har avregistrerats och kan inte läggas till genom en rättelse.",
    }
    for address, message in refused.items():
        assert message in correct(address)
        assert held("anna@example.com") and held("bo@example.com") and not held("cleo@example.com")
        assert delete_jobs_for("anna@example.com") == []
    with app.app_context():
        assert db.session.execute(select(func.count()).where(ConsentEvent.type == "rectified")).scalar_one() == 0

    assert "Rättat: E-postadress." in correct("Anna.Lind@Example.com")
    assert held("anna.lind@example.com") and not held("anna@example.com")
    assert subscription_ref(app, "anna.lind@example.com") == ref
    [delete] = delete_jobs_for("anna@example.com")
    assert delete.state == "pending" and delete.notice == "munkeby"
    with app.app_context():
        [rectified] = db.session.execute(select(ConsentEvent).where(ConsentEvent.type == "rectified")).scalars()
        assert json.loads(rectified.facts) == {"fields": ["email"], "actor": actor_of(app, "maria@munkeby.se")}
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_a_viewer_may_look_but_not_act(app, client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    create_user(runner, "vera@munkeby.se", "viewer")
    log_in(client, "vera@munkeby.se")
    ref = subscription_ref(app, "anna@example.com")
    page = client.get(f"/dashboard/subscribers/{ref}").get_data(as_text=True)
    assert "/erase" not in page
    token = form_token(client.get("/dashboard/").get_data(as_text=True))
    assert (
        client.post(f"/dashboard/subscribers/{ref}/rectify", data={"csrf_token": token, "name": "X"}).status_code == 403
    )
    assert client.get(f"/dashboard/subscribers/{ref}/erase").status_code == 403
    assert client.get("/dashboard/tokens").status_code == 403


def test_an_admin_creates_and_revokes_api_tokens(app, client, runner):
    create_user(runner, "admin@munkeby.se", "admin")
    log_in(client, "admin@munkeby.se")
    token = form_token(client.get("/dashboard/tokens").get_data(as_text=True))
    page = client.post(
        "/dashboard/tokens",
        data={"csrf_token": token, "name": "Dynamics 365", "scopes": ["read", "opt_out"], "notices": ["munkeby"]},
    ).get_data(as_text=True)
    secret = re.search(r"<code data-token>(cst_[A-Za-z0-9_-]+)</code>", page).group(1)
    assert secret not in client.get("/dashboard/tokens").get_data(as_text=True)  # shown once
    listed = json.loads(runner.invoke(args=["tokens", "list"]).stdout)
    assert listed == [
        {
            "id": 1,
            "name": "Dynamics 365",
            "scopes": ["read", "opt_out"],
            "notices": ["munkeby"],
            "created_by": actor_of(app, "admin@munkeby.se"),
            "revoked": False,
        }
    ]
    assert client.post("/dashboard/tokens/1/revoke", data={"csrf_token": token}).status_code == 302
    assert json.loads(runner.invoke(args=["tokens", "list"]).stdout)[0]["revoked"] is True
    assert client.post("/dashboard/tokens/1/revoke", data={"csrf_token": token}).status_code == 404  # once only
    with app.app_context():
        events = db.session.execute(
            select(ConsentEvent.type, ConsentEvent.channel, ConsentEvent.facts).order_by(ConsentEvent.seq)
        ).all()
    admin = actor_of(app, "admin@munkeby.se")
    assert [(kind, channel, json.loads(facts)) for kind, channel, facts in events] == [
        (
            "api_token_created",
            "dashboard",
            {"token": 1, "scopes": ["read", "opt_out"], "notices": ["munkeby"], "actor": admin},
        ),
        ("api_token_revoked", "dashboard", {"token": 1, "actor": admin}),
    ]


def test_out_of_range_ids_are_refused_not_crashed_on(app, marketer):
    for after in ("99999999999", "%C2%B2", "-1"):
        assert marketer.get(f"/dashboard/subscribers?after={after}").status_code == 200
    token = form_token(marketer.get("/dashboard/").get_data(as_text=True))
    assert marketer.post("/dashboard/outbox/99999999999/retry", data={"csrf_token": token}).status_code == 404


def import_csv(rows: int, padding: int = 0) -> bytes:
    note = "x" * padding
    lines = ["Namn;E-post;Anteckning"] + [f"Person {i};person{i}@firma.se;{note}" for i in range(rows)]
    lines.append("Trasig;inte-en-adress;")
    return ("\n".join(lines) + "\n").encode()


def upload(client, body: bytes, **fields: str):  # type: ignore[no-untyped-def]
    token = form_token(client.get("/dashboard/import").get_data(as_text=True))
    data = {
        "csrf_token": token,
        "notice": "mysoft",
        "lawful_basis": "legitimate_interest",
        "source": "https://www.firma.se/kontakt",
        "source_date": "2026-11-01",
        "file": FileStorage(io.BytesIO(body), filename="kontakter.csv", content_type="text/csv"),
        **fields,
    }
    # Encoded in memory: the test client would spool a large body to a temporary file it never closes.
    boundary, body_bytes = encode_multipart(data)
    return client.post(
        "/dashboard/import", data=body_bytes, content_type=f"multipart/form-data; boundary={boundary}"
    )


def test_a_marketer_imports_a_large_file_with_a_dry_run_first(app, marketer, runner):
    body = import_csv(300, padding=4_000)  # about 1.2 MB: over the 1 MB limit of every other form
    assert len(body) > 1024 * 1024
    answer = upload(marketer, body)
    assert answer.status_code == 302
    status_url = answer.headers["Location"]
    page = marketer.get(status_url).get_data(as_text=True)
    assert re.search(r"<option\s*>Namn</option>", page) and re.search(r"<option\s*>E-post</option>", page)
    token = form_token(page)

    marketer.post(
        status_url, data={"csrf_token": token, "email_column": "E-post", "name_column": "", "mode": "dry-run"}
    )
    waiting = marketer.get(status_url)
    assert waiting.headers["Refresh"] == "2" and "outbox run" in waiting.get_data(as_text=True)
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    checked = marketer.get(status_url).get_data(as_text=True)
    assert 'data-figure="added">300<' in checked and 'data-figure="skipped_invalid">1<' in checked
    assert runner.invoke(args=["subjects", "export", "person7@firma.se"]).exit_code == 1  # dry run wrote nothing

    marketer.post(  # no name column: Mysoft's notice collects none (a name column is refused)
        status_url, data={"csrf_token": token, "email_column": "E-post", "name_column": "", "mode": "import"}
    )
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    done = marketer.get(status_url).get_data(as_text=True)
    assert 'data-figure="added">300<' in done and 'data-figure="state">importerad<' in done
    exported = json.loads(runner.invoke(args=["subjects", "export", "person7@firma.se"]).stdout)
    [imported] = [e for e in exported["events"] if e["type"] == "imported"]
    assert imported["facts"]["actor"] == actor_of(app, "maria@munkeby.se")
    assert not list((Path(app.config["INSTANCE_PATH"]) / "imports").glob("*.csv"))  # the upload is gone


def test_import_uploads_are_checked(app, marketer, runner):
    assert upload(marketer, b"\x89PNG\r\n\x1a\n\x00\x00binary").status_code == 400
    assert upload(marketer, import_csv(3), lawful_basis="consent").status_code == 400  # no proof given
    assert upload(marketer, import_csv(3), source_date="2999-01-01").status_code == 400
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Subscription)).scalar_one() == 0


def test_the_upload_limit_holds_for_imports_too(app, marketer):
    app.config["IMPORT_MAX_BYTES"] = 1024 * 1024
    assert upload(marketer, import_csv(300, padding=4_000)).status_code == 413
