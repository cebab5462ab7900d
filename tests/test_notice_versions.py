"""Changing a notice file makes a new version; old ones stay readable and countable."""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import datetime

from babel import dates as babel_dates

from app import create_app
from app.extensions import db
from app.models import NoticeVersion
from app.notices import version_of

from .support import REPO, link_in, subscribe_and_confirm


def edited_notices(folder, new_summary_line: str):  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "notices").glob("*.toml"):
        shutil.copy(source, folder / source.name)
    path = folder / "munkeby.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Vår personal i Malmö.", new_summary_line, 1), encoding="utf-8")
    return folder


def test_an_edited_notice_is_a_new_version_and_the_old_one_stays(app_env, tmp_path, app, client, mailbox, runner):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "first@firma.se", "First")
    old_version = app.extensions["notices"]["munkeby"].version
    manage = link_in(welcome, "manage")

    env = {**app_env, "NOTICES_DIR": str(edited_notices(tmp_path / "notices", "Vår personal i Malmö och Lund."))}
    restarted = create_app(env=env)
    try:
        check_versions(restarted, old_version, mailbox)
        check_evidence_links(restarted, old_version, manage)
    finally:
        with restarted.app_context():
            db.session.remove()
            db.engine.dispose()


def check_versions(restarted, old_version: str, mailbox) -> None:  # type: ignore[no-untyped-def]
    new_version = restarted.extensions["notices"]["munkeby"].version
    assert new_version != old_version
    new_client = restarted.test_client()
    subscribe_and_confirm(new_client, mailbox, "munkeby", "second@firma.se", "Second")

    current = new_client.get("/munkeby/privacy").get_data(as_text=True)
    assert "Malmö och Lund" in current and new_version in current
    for path in (f"/munkeby/privacy/{old_version}", f"/munkeby/privacy?version={old_version}"):
        page = new_client.get(path)
        assert page.status_code == 200
        body = page.get_data(as_text=True)
        assert "Vår personal i Malmö." in body and "Malmö och Lund" not in body and old_version in body
    # The language switch keeps the version being read.
    switch = re.search(r'href="([^"]+)" hreflang="en"', body).group(1).replace("&amp;", "&")
    english = new_client.get(switch).get_data(as_text=True)
    assert "Our staff in Malmö." in english and old_version in english
    assert new_client.get("/munkeby/privacy/" + "0" * 64).status_code == 404
    assert new_client.get("/munkeby/privacy?version=not-a-hash").status_code == 404

    exported = json.loads(restarted.test_cli_runner().invoke(args=["subjects", "export", "first@firma.se"]).stdout)
    assert exported["subscriptions"][0]["notice_version"] == old_version
    assert {e["notice_version"] for e in exported["events"]} == {old_version}

    # The dashboard counts subscriptions by the version they consented under.
    cli = restarted.test_cli_runner()
    cli.invoke(
        args=["users", "create", "vera@munkeby.se", "--role", "viewer", "--password", "v" * 16, "--notice", "munkeby"]
    )
    login = new_client.get("/dashboard/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login).group(1)
    new_client.post("/dashboard/login", data={"csrf_token": token, "email": "vera@munkeby.se", "password": "v" * 16})
    overview = new_client.get("/dashboard/").get_data(as_text=True)
    assert f'data-figure="version-{old_version[:12]}">1<' in overview
    assert f'data-figure="version-{new_version[:12]}">1<' in overview
    listed = new_client.get(f"/dashboard/subscribers?notice=munkeby&version={old_version}").get_data(as_text=True)
    assert "first@firma.se" in listed and "second@firma.se" not in listed


def check_evidence_links(restarted, old_version: str, manage: str) -> None:  # type: ignore[no-untyped-def]
    """What was recorded under the old version still leads to that version's own text."""
    client = restarted.test_client()
    with restarted.app_context():
        first_shown = db.session.get(NoticeVersion, ("munkeby", old_version)).first_seen_at
    page = client.get(manage + "?lang=en").get_data(as_text=True)
    link = re.search(r'href="(/munkeby/privacy/[0-9a-f]{64}[^"]*)"', page)
    assert link is not None and old_version in link.group(1)
    exported = json.loads(restarted.test_cli_runner().invoke(args=["subjects", "export", "first@firma.se"]).stdout)
    from_export = exported["subscriptions"][0]["privacy_notice"].split("://", 1)[1].split("/", 1)[1]
    for path in (html.unescape(link.group(1)), "/" + from_export + "&lang=en"):
        body = client.get(path).get_data(as_text=True)
        assert "Our staff in Malmö." in body and "Malmö and Lund" not in body
        day = babel_dates.format_date(first_shown, format="long", locale="en")
        assert f"This is an earlier version of the notice, first shown {day}." in body
        assert "In effect since" not in body  # that is said of the current version only
        assert f'href="/munkeby/privacy/{old_version}?lang=en"' in body


def legacy_content(shown: dict) -> dict:  # type: ignore[type-arg]
    """A version as stored before notices marked their headings and stated their transfers."""
    content = {key: value for key, value in shown.items() if key not in ("text_format", "transfers")}
    content["text"] = {
        lang: {**text, "body": re.sub(r"(?m)^## ", "", text["body"])} for lang, text in shown["text"].items()
    }
    return content


def test_a_version_stored_before_headings_were_marked_opens_with_its_paragraph(app, client):
    notice = app.extensions["notices"]["munkeby"]
    content = legacy_content(dict(notice.shown))
    version = version_of(content)
    with app.app_context():
        db.session.add(
            NoticeVersion(notice="munkeby", version=version, content=content, first_seen_at=datetime(2025, 3, 4, 9))
        )
        db.session.commit()
    page = client.get(f"/munkeby/privacy/{version}?lang=en").get_data(as_text=True)
    elements = re.findall(r"<(h2|p)\b[^>]*>(.*?)</\1>", page, re.DOTALL)
    body = [(tag, " ".join(html.unescape(inner).split())) for tag, inner in elements if "<" not in inner]
    # The wrapped first sentence is a paragraph again, not a heading over the rest of it.
    assert body[0] == (
        "p",
        "This notice describes how Munkeby Systems processes your personal data when you subscribe to our newsletter.",
    )
    assert [text for tag, text in body if tag == "h2"] == [
        "What data do we process?",
        "Why, and on what basis?",
        "Who processes the data?",
        "How long do we keep it?",
        "Your rights",
        "Contact",
    ]
    # It stated no transfers as data, so the page does not speak for it.
    assert "Transfers outside the EU/EEA" not in page
    assert "first shown March 4, 2025." in page


def test_a_stored_version_that_cannot_be_read_is_not_found_never_an_error(app, client):
    with app.app_context():
        for version, content in (("a" * 64, {"text": {"sv": "just a string"}}), ("b" * 64, {"text": {}})):
            db.session.add(NoticeVersion(notice="munkeby", version=version, content=content))
        db.session.commit()
    assert client.get("/munkeby/privacy/" + "a" * 64).status_code == 404
    assert client.get("/munkeby/privacy/" + "b" * 64).status_code == 404
