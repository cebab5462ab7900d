"""Dashboard sessions end when they should: on logout (everywhere), on a new password,
on deactivation, after 30 idle minutes and 12 hours after login; accounts name their notices."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import time_machine

from .test_dashboard import PASSWORD, create_user, log_in

START = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def logged_in(client) -> bool:  # type: ignore[no-untyped-def]
    answer = client.get("/dashboard/")
    return answer.status_code == 200


def test_logout_ends_every_session_of_the_user(app, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    desk, phone = app.test_client(), app.test_client()
    log_in(desk, "maria@munkeby.se")
    log_in(phone, "maria@munkeby.se")
    assert logged_in(desk) and logged_in(phone)
    stolen = phone.get_cookie("session", path="/dashboard").value
    desk.post("/dashboard/logout", data={"csrf_token": _csrf(desk)})
    assert not logged_in(desk) and not logged_in(phone)
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    assert replay.get("/dashboard/").status_code == 302  # the copied cookie is dead too


def test_the_session_cookie_is_the_dashboards_only(app, client, runner):
    """Set for the dashboard's paths: a marketer's browser does not send it to subscribers' pages."""
    create_user(runner, "maria@munkeby.se", "viewer")
    answer = log_in(client, "maria@munkeby.se")
    [cookie] = answer.headers.getlist("Set-Cookie")
    assert cookie.startswith("session=") and "Path=/dashboard;" in cookie + ";"
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get_cookie("session", path="/") is None
    assert logged_in(client)
    for page in ("/munkeby/subscribe", "/munkeby/privacy", "/"):
        assert "Set-Cookie" not in client.get(page).headers, page
    assert logged_in(client)  # the public pages left the session as it was


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    from .test_dashboard import form_token

    return form_token(client.get("/dashboard/").get_data(as_text=True))


def test_a_new_password_and_deactivation_end_live_sessions(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    log_in(client, "maria@munkeby.se")
    assert logged_in(client)
    new = "a much longer new password"
    changed = runner.invoke(args=["users", "set-password", "maria@munkeby.se", "--password", new])
    assert changed.exit_code == 0, changed.output
    assert not logged_in(client)
    assert log_in(client, "maria@munkeby.se").status_code == 401  # the old password no longer works
    log_in(client, "maria@munkeby.se", new)
    assert logged_in(client)
    assert runner.invoke(args=["users", "deactivate", "maria@munkeby.se"]).exit_code == 0
    assert not logged_in(client)
    assert log_in(client, "maria@munkeby.se", new).status_code == 401
    unknown = runner.invoke(args=["users", "deactivate", "nobody@munkeby.se"])
    assert unknown.exit_code == 1 and "no user" in unknown.output
    weak = runner.invoke(args=["users", "set-password", "maria@munkeby.se", "--password", "short"])
    assert weak.exit_code == 1 and "12 characters" in weak.output


def test_a_session_ends_after_30_idle_minutes_and_12_hours_whatever_the_activity(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    with time_machine.travel(START, tick=False) as clock:
        log_in(client, "maria@munkeby.se")
        clock.shift(timedelta(minutes=29))
        assert logged_in(client)
        clock.shift(timedelta(minutes=31))
        answer = client.get("/dashboard/subscribers")
        assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"]
    with time_machine.travel(START + timedelta(days=1), tick=False) as clock:
        log_in(client, "maria@munkeby.se")
        minutes = 0
        while logged_in(client) and minutes < 24 * 60:  # busy all day: a request every 20 minutes
            clock.shift(timedelta(minutes=20))
            minutes += 20
    assert minutes == 12 * 60 + 20, minutes  # the first request past 12 hours finds the session ended


def test_a_session_does_not_hang_on_a_forwarded_for_header(app, client, runner):
    """Flask-Login's "strong" mode fingerprints X-Forwarded-For, which any client sets: it is off,
    and the session's strength is the key every request checks (see the logout test)."""
    create_user(runner, "maria@munkeby.se", "viewer")
    log_in(client, "maria@munkeby.se")
    for forwarded in ("203.0.113.9", "198.51.100.7, 10.0.0.1"):
        assert client.get("/dashboard/", headers={"X-Forwarded-For": forwarded}).status_code == 200


def test_a_next_with_control_characters_is_ignored(app, client, runner):
    create_user(runner, "maria@munkeby.se", "viewer")
    from .test_dashboard import form_token

    for target in ("/dashboard/\r\nSet-Cookie:x=1", "/dashboard/%0d%0a", "/dashboard/\x7f", "/dashboard/é"):
        page = client.get("/dashboard/login")
        answer = client.post(
            "/dashboard/login",
            query_string={"next": target},
            data={"csrf_token": form_token(page.get_data(as_text=True)), "email": "maria@munkeby.se",
                  "password": PASSWORD},
        )
        assert answer.status_code == 302, target
        assert answer.headers["Location"] in ("/dashboard/", "/dashboard/%0d%0a"), answer.headers["Location"]
        client.post("/dashboard/logout", data={"csrf_token": _csrf(client)})


def test_every_account_names_its_notices_and_there_is_no_implicit_all(app, runner):
    for args in (
        ["users", "create", "boss@munkeby.se", "--role", "admin", "--password", PASSWORD],
        ["tokens", "create", "crm", "--scope", "read"],
    ):
        refused = runner.invoke(args=args)
        assert refused.exit_code != 0 and "--notice" in refused.output
    unknown = runner.invoke(args=["tokens", "create", "crm", "--scope", "read", "--notice", "elsewhere"])
    assert unknown.exit_code == 1 and "munkeby" in unknown.output
    made = runner.invoke(args=["tokens", "create", "crm", "--scope", "read", "--notice", "mysoft"])
    assert json.loads(made.stdout)["notices"] == ["mysoft"]


def test_an_admin_hands_on_only_their_own_notices(app, client, runner):
    from .test_dashboard import form_token

    create_user(runner, "boss@munkeby.se", "admin", notices=("munkeby",))
    log_in(client, "boss@munkeby.se")
    page = client.get("/dashboard/users").get_data(as_text=True)
    assert 'value="munkeby"' in page and 'value="mysoft"' not in page
    fields = {"csrf_token": form_token(page), "email": "new@munkeby.se", "role": "viewer", "password": PASSWORD}
    refused = client.post("/dashboard/users", data={**fields, "notices": ["munkeby", "mysoft"]})
    assert refused.status_code == 400
    assert client.post("/dashboard/users", data=fields).status_code == 400  # no notice at all
    made = client.post("/dashboard/users", data={**fields, "notices": ["munkeby"]})
    assert made.status_code == 303
    listed = json.loads(runner.invoke(args=["tokens", "list"]).stdout)
    assert listed == []
    fresh = app.test_client()
    log_in(fresh, "new@munkeby.se")
    assert logged_in(fresh)
    token = form_token(client.get("/dashboard/users").get_data(as_text=True))
    new_id = next(u for u in _users(app) if u[1] == "new@munkeby.se")[0]
    assert client.post(f"/dashboard/users/{new_id}/deactivate", data={"csrf_token": token}).status_code == 303
    assert not logged_in(fresh)


def _users(app) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from app.extensions import db
    from app.models import User

    with app.app_context():
        return [tuple(row) for row in db.session.execute(select(User.id, User.email))]  # type: ignore[misc]


def test_an_account_from_before_notices_sees_nothing_until_given_its_notices(app, client, runner):
    create_user(runner, "old@munkeby.se", "viewer")
    from sqlalchemy import update

    from app.extensions import db
    from app.models import User

    with app.app_context():  # as the upgrade leaves an account made before accounts named notices
        db.session.execute(update(User).values(notices=""))
        db.session.commit()
    log_in(client, "old@munkeby.se")
    assert "Munkeby" not in client.get("/dashboard/?lang=en").get_data(as_text=True)
    given = runner.invoke(args=["users", "set-notices", "old@munkeby.se", "--notice", "munkeby"])
    assert json.loads(given.stdout) == {"user": "old@munkeby.se", "notices": ["munkeby"]}
    assert not logged_in(client)  # the change ends the session; the next one sees Munkeby
    log_in(client, "old@munkeby.se")
    assert "Munkeby" in client.get("/dashboard/?lang=en").get_data(as_text=True)
