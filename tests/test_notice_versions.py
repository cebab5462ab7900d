"""Changing a notice file makes a new version; old ones stay readable and countable."""

from __future__ import annotations

import json
import re
import shutil

from app import create_app
from app.extensions import db

from .support import REPO, subscribe_and_confirm


def edited_notices(folder, new_summary_line: str):  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "notices").glob("*.toml"):
        shutil.copy(source, folder / source.name)
    path = folder / "munkeby.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Vår personal i Malmö.", new_summary_line, 1), encoding="utf-8")
    return folder


def test_an_edited_notice_is_a_new_version_and_the_old_one_stays(app_env, tmp_path, app, client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "first@firma.se", "First")
    old_version = app.extensions["notices"]["munkeby"].version

    env = {**app_env, "NOTICES_DIR": str(edited_notices(tmp_path / "notices", "Vår personal i Malmö och Lund."))}
    restarted = create_app(env=env)
    try:
        check_versions(restarted, old_version, mailbox)
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
