"""The overview's figures, right on both databases, and read from indexes alone on SQLite.

The overview is the page every login lands on. On a list of a million it must not walk the
subscriptions table: the counts by status and version come from the tallies the database keeps
(``app/tallies.py``, ``tests/test_tallies.py``), and the two kinds of contact
that are few among many (customers, contacts held on legitimate interest) have small indexes
of their own (``app/models.py``), which a query reaches only when it states their condition
with its values in the SQL. The queue's figures (an import queues a job a contact) are counted
up to a cap, each through one index range.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, update

from app import outbox
from app.extensions import db
from app.models import OutboxJob

from .support import (
    plans_with,
    queue_sync_jobs,
    sign_up,
    statements_sent,
    subscribe_and_confirm,
    unsubscribe_path,
)
from .test_dashboard import create_user, log_in

READS_SUBSCRIPTIONS = re.compile(r"\bFROM subscriptions\b", re.IGNORECASE)
# A step on subscriptions by anything but a covering index or one of the small indexes reads
# rows from the table: every row of a notice (or of the table) for a count.
SMALL_INDEXES = r"INDEX ix_subscriptions_(customer_review|interest_held)\b"
WALKS = rf"(SCAN|SEARCH) subscriptions\b(?! USING (COVERING INDEX|{SMALL_INDEXES}))"


def figure(section: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}">([^<]*)<', section)
    assert match, f"no {name} figure"
    return match.group(1)


def sections(page: str) -> dict[str, str]:
    return {
        "munkeby": page[page.index('id="n-munkeby"') : page.index('id="n-mysoft"')],
        "mysoft": page[page.index('id="n-mysoft"') :],
    }


@pytest.fixture
def marketer(client, runner):  # type: ignore[no-untyped-def]
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    return client


def people(app, client, mailbox, runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Munkeby: two subscribers who signed up, a customer imported with consent and added ten years
    ago (due for review), one who left, one waiting. Mysoft: one subscriber, one waiting, three
    contacts imported on legitimate interest."""
    app.config["SUBSCRIBE_RATE_LIMIT"] = "1000 per hour"
    for address in ("anna@example.com", "bo@example.com"):
        subscribe_and_confirm(client, mailbox, "munkeby", address)
    left = subscribe_and_confirm(client, mailbox, "munkeby", "cia@example.com")
    assert client.post(unsubscribe_path(left), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    sign_up(client, "munkeby", "dan@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "eva@example.com")
    sign_up(client, "mysoft", "fia@example.com")
    imports = {
        "munkeby": ("email;relation;tillagd\nkund@firma.se;kund;2016-01-04\n", "consent", "--proof", "CRM consent log"),
        "mysoft": ("email;relation;tillagd\nper@firma.se;;\nola@firma.se;;\nkim@firma.se;;\n", "legitimate_interest"),
    }
    for notice, (rows, basis, *proof) in imports.items():
        contacts = tmp_path / f"{notice}.csv"
        contacts.write_text(rows)
        imported = runner.invoke(
            args=["contacts", "import", str(contacts), "--notice", notice, "--basis", basis, *proof,
                  "--source", "https://www.firma.se/kontakt", "--relationship-column", "relation",
                  "--added-column", "tillagd"]
        )  # fmt: skip
        assert imported.exit_code == 0, imported.output


def test_the_overview_counts_each_kind_of_person_once_under_its_notice(  # type: ignore[no-untyped-def]
    app, client, mailbox, runner, marketer, tmp_path
):
    people(app, client, mailbox, runner, tmp_path)
    found = sections(marketer.get("/dashboard/?lang=en").get_data(as_text=True))
    names = ("subscribed", "pending", "unsubscribed")
    assert [figure(found["munkeby"], name) for name in names] == ["3", "1", "1"]  # the customer consented
    assert 'data-figure="legitimate-interest"' not in found["munkeby"]  # it imports on consent only
    assert figure(found["munkeby"], "review-due") == "1"
    names = ("subscribed", "legitimate-interest", "pending", "unsubscribed")
    assert [figure(found["mysoft"], name) for name in names] == ["1", "3", "1", "0"]


def test_the_overview_reads_subscriptions_through_indexes_only(  # type: ignore[no-untyped-def]
    app, client, mailbox, runner, marketer, tmp_path, database_url
):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite plans from a statement's shape alone; PostgreSQL's plans follow its statistics")
    people(app, client, mailbox, runner, tmp_path)
    with statements_sent(app, READS_SUBSCRIPTIONS) as sent:
        assert marketer.get("/dashboard/").status_code == 200
    # The reviews due and the uninformed; the counts by status and version read the tallies.
    assert len(sent) >= 3
    assert not [sql for sql, _ in sent if re.search(r"GROUP BY [^)]*subscriptions\.(status|notice_version)\b", sql)]
    assert plans_with(app, sent, WALKS) == []


READS_JOBS = re.compile(r"\bFROM outbox_jobs\b", re.IGNORECASE)


def test_the_queue_figures_stop_at_the_cap_and_read_one_index_range_each(  # type: ignore[no-untyped-def]
    app, client, runner, marketer, monkeypatch, database_url
):
    """An import queues a sync job a contact (850,000 for a million rows). The overview counts a
    notice's jobs up to a cap and then says "more than", instead of walking them at each visit."""
    monkeypatch.setattr(outbox, "DASHBOARD_COUNT_CAP", 40)
    with app.app_context():
        queue_sync_jobs("munkeby", 60, "unsubscribed", "sync_optout")
        queue_sync_jobs("mysoft", 3, "subscribed", "sync_consent")
    page = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    assert figure(page, "queued") == "more than 40"
    assert figure(page, "dead") == "0"
    assert re.search(r'data-figure="oldest-opt-out"[^>]*>\s*0(\.\d)? min', page)

    # No provider is set up here: a pass of the worker leaves every job waiting for it.
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    with statements_sent(app, READS_JOBS) as sent:
        page = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    waiting = re.findall(r'data-figure="waiting">([^<]*)<', page)
    assert any("Munkeby" in line and "more than 40 jobs wait" in line for line in waiting), waiting
    assert any("3 jobs wait" in line for line in waiting), waiting
    if database_url.startswith("sqlite"):  # PostgreSQL plans from its statistics
        assert sent
        assert plans_with(app, sent, r"\bSCAN outbox_jobs\b|\bix_outbox_jobs_due\b") == []
        # The waiting jobs' range starts at their reason: the jobs with none are not read.
        reasons = [(sql, parameters) for sql, parameters in sent if " LIKE " in sql]
        assert reasons and len(plans_with(app, reasons, r"last_error>\?")) == len(reasons)

    # Below the cap the figure is exact again.
    with app.app_context():
        munkeby = db.session.execute(select(OutboxJob.id).where(OutboxJob.notice == "munkeby")).scalars().all()
        db.session.execute(update(OutboxJob).where(OutboxJob.id.in_(sorted(munkeby)[7:])).values(state="done"))
        db.session.commit()
    page = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    assert figure(page, "queued") == "10"  # munkeby's 7 and mysoft's 3
