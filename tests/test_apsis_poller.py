"""`providers poll-apsis`: APSIS's email event export, as APSIS documents it.

Request an export (one a minute per account), wait for it, download the gzip CSV,
apply UNSUBSCRIBED / BOUNCED / ABUSE rows once, move the cursor. The fake serves the
export as developer.apsis.com describes it (post_emails-reports-1,
get_emails-reports-report-id-1).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, ProviderCursor

from .fakes.apsis import FakeApsis
from .support import REPO, provider_env, subscribe_and_confirm

SECTION = "mysoft-section"


@pytest.fixture
def app_env(app_env: dict[str, str], apsis: FakeApsis) -> dict[str, str]:
    apsis.report_interval = 0  # the service keeps to one request a minute itself (tested below)
    return {**app_env, **provider_env(apsis=apsis)}


def later(minutes: int) -> str:
    """A time after the sign-ups these tests make (an opt-out from before one would be stale)."""
    return (datetime.now(UTC) + timedelta(minutes=minutes, seconds=1)).isoformat()


def held(runner, address: str) -> bool:  # type: ignore[no-untyped-def]
    return runner.invoke(args=["subjects", "export", address]).exit_code == 0


def a_minute_passes(app) -> None:  # type: ignore[no-untyped-def]
    """The last export request moves a minute into the past."""
    with app.app_context():
        for row in db.session.execute(select(ProviderCursor)).scalars():
            if row.last_called_at is not None:
                row.last_called_at -= timedelta(seconds=61)
        db.session.commit()


def poll(runner, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(args=["providers", "poll-apsis", "--wait", "5", *args])


def opted_out(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        kinds = select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "opted_out")
        return db.session.execute(kinds).scalar_one()


def test_the_export_is_read_and_each_row_applied_once(app, client, mailbox, runner, apsis):
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        subscribe_and_confirm(client, mailbox, "mysoft", address)
    first = apsis.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, later(0))
    apsis.add_report_event("BOUNCED", "b@example.com", SECTION, later(1))
    apsis.add_report_event("OPENED", "c@example.com", SECTION, later(2))

    result = poll(runner)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"applied": 2, "ignored": 1}
    assert not held(runner, "a@example.com") and not held(runner, "b@example.com")
    assert held(runner, "c@example.com")  # an open is no opt-out
    assert apsis.report_calls == 1 and apsis.download_calls == 1

    # Next run: only the new window. A row the email tool delivered again (same correlation_id,
    # a later server_time) has no second effect.
    apsis.add_report_event("ABUSE", "c@example.com", SECTION, later(3))
    apsis.repeat_report_event(first)
    a_minute_passes(app)
    result = poll(runner)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"applied": 1, "duplicate": 1}
    assert not held(runner, "c@example.com")
    assert opted_out(app) == 3


def test_an_export_apsis_is_still_making_is_picked_up_by_the_next_run(app, client, mailbox, runner, apsis):
    subscribe_and_confirm(client, mailbox, "mysoft", "a@example.com")
    apsis.set_report_polls(3)
    apsis.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, later(0))
    waiting = runner.invoke(args=["providers", "poll-apsis", "--wait", "0"])
    assert waiting.exit_code == 0 and "waiting" in json.loads(waiting.stdout)
    assert held(runner, "a@example.com")
    done = poll(runner)  # no minute needed: it asks about the export already requested
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["outcomes"] == {"applied": 1}
    assert apsis.report_calls == 1 and not held(runner, "a@example.com")


def test_an_expired_download_link_fails_the_run_and_the_window_is_asked_for_again(app, client, mailbox, runner, apsis):
    subscribe_and_confirm(client, mailbox, "mysoft", "a@example.com")
    apsis.add_report_event("UNSUBSCRIBED", "a@example.com", SECTION, later(0))
    apsis.download_url_lifetime = 0
    failed = poll(runner)
    assert failed.exit_code == 1 and "expired" in failed.stderr
    assert held(runner, "a@example.com")
    apsis.download_url_lifetime = 3600
    a_minute_passes(app)
    again = poll(runner)
    assert again.exit_code == 0, again.output
    assert not held(runner, "a@example.com") and apsis.report_calls == 2


def test_the_poller_asks_for_one_export_a_minute(app, runner, apsis):
    assert poll(runner).exit_code == 0
    second = poll(runner)
    assert second.exit_code == 0 and "one export request a minute" in json.loads(second.stdout)["skipped"]
    assert apsis.report_calls == 1 and apsis.count_429 == 0


def test_a_row_about_an_opt_out_older_than_a_new_confirmed_sign_up_does_not_undo_it(
    app, client, mailbox, runner, apsis
):
    opted_out_at = datetime.now(UTC) - timedelta(minutes=5)  # at APSIS, before the sign-up below
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    apsis.add_report_event("UNSUBSCRIBED", "bo@example.com", SECTION, opted_out_at.isoformat())
    result = poll(runner)
    assert json.loads(result.stdout)["outcomes"] == {"stale": 1}
    assert held(runner, "bo@example.com")


def test_a_row_with_no_event_time_is_still_applied(app, client, mailbox, runner, apsis):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    apsis.add_report_event("UNSUBSCRIBED", "bo@example.com", SECTION, None)  # event_time 0
    result = poll(runner)
    assert result.exit_code == 0, result.output
    assert not held(runner, "bo@example.com")


def test_without_credentials_or_with_a_wrong_notice_it_says_so(app, app_env, runner):
    app.config.update(APSIS_CLIENT_ID="", APSIS_CLIENT_SECRET="")
    result = runner.invoke(args=["providers", "poll-apsis"])
    assert result.exit_code == 1 and "APSIS_CLIENT_ID" in result.stderr
    assert runner.invoke(args=["providers", "poll-apsis", "--notice", "munkeby"]).exit_code == 1


def test_with_two_apsis_notices_the_export_cannot_be_split_and_it_refuses(app_env, tmp_path: Path):
    from app import create_app

    notices = tmp_path / "notices"
    notices.mkdir()
    for name in ("munkeby.toml", "mysoft.toml"):
        shutil.copy(REPO / "notices" / name, notices)
    text = (REPO / "notices" / "mysoft.toml").read_text(encoding="utf-8")
    (notices / "mysoft-events.toml").write_text(
        text.replace('slug = "mysoft"', 'slug = "mysoft-events"').replace('"mysoft-section"', '"events-section"'),
        encoding="utf-8",
    )
    two = create_app(env={**app_env, "NOTICES_DIR": str(notices)})
    result = two.test_cli_runner().invoke(args=["providers", "poll-apsis"])
    assert result.exit_code == 1 and "no section column" in result.stderr
    with two.app_context():
        db.engine.dispose()
