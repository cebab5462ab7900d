"""Real-browser tests: Debian's Chromium driven by Playwright against gunicorn.

A marketer logs in, reads the overview, searches, opens a subject, exports and
erases; a subscriber signs up, confirms from the mail (read from the SMTP
server) and unsubscribes in one click. Screenshots of the main pages go to
``SCREENSHOT_DIR`` (``docs/screenshots`` when refreshing them, else a temporary
folder). Without a Chromium binary or Playwright the tests skip and say why.
Launching Chromium and reading links from the mail are shared with
tests/test_pages_browser.py (tests/browser/harness.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser.harness import launched_chromium, mail_link, screenshot, screenshot_dir
from .support import Service, SmtpSink, free_port, serving

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshot_dir(tmp_path / "screenshots")


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink, web_port: int) -> dict[str, str]:
    return {
        **app_env,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
    }


@pytest.fixture
def service(app, app_env: dict[str, str], web_port: int, tmp_path: Path) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    with serving(app_env, web_port, tmp_path / "gunicorn.log") as server:
        yield server


@pytest.fixture
def page(chromium):  # type: ignore[no-untyped-def]
    context = chromium.new_context(locale="sv-SE", viewport={"width": 1200, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def test_a_subscriber_signs_up_confirms_and_unsubscribes(service, smtp, page, shots):
    page.goto(f"{service.url}/munkeby/subscribe")
    assert page.locator("html").get_attribute("lang") == "sv"
    assert not page.locator("input[name=consent]").is_checked()  # never pre-ticked
    screenshot(page, shots / "subscribe.png")
    page.fill("input[name=email]", "lisa@example.com")
    page.fill("input[name=name]", "Lisa Ek")
    page.check("input[name=consent]")
    page.click("button[type=submit]")
    page.wait_for_url("**/munkeby/subscribe/sent**")
    assert "inkorg" in page.content()

    page.goto(mail_link(smtp, "lisa@example.com", "confirm", service.url))
    assert len(smtp.messages("lisa@example.com")) == 1  # opening the link confirms nothing
    screenshot(page, shots / "confirm.png")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "Tack" in page.content()
    assert service.status_of("lisa@example.com") == "subscribed"

    # The welcome mail's "your data and settings" link: the person's own page.
    page.goto(mail_link(smtp, "lisa@example.com", "manage", service.url))
    assert "lisa@example.com" in page.content() and "Lisa Ek" in page.content()
    screenshot(page, shots / "manage.png")
    page.fill("input[name=name]", "Lisa Ek Berg")
    page.click("form[action*='/name'] button[type=submit]")
    page.wait_for_load_state()
    assert "Ditt namn har ändrats." in page.content() and "Lisa Ek Berg" in page.content()

    page.goto(mail_link(smtp, "lisa@example.com", "unsubscribe", service.url))
    screenshot(page, shots / "unsubscribe.png")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert service.status_of("lisa@example.com") == "unsubscribed"


def test_a_marketer_finds_exports_and_erases_a_subject(service, smtp, page, shots, tmp_path):
    both = ("--notice", "munkeby", "--notice", "mysoft")
    created = service.flask("users", "create", "maria@munkeby.se", "--role", "marketer", "--password", PASSWORD, *both)
    assert created.returncode == 0, created.stderr
    for address in ("anna@example.com", "bo@example.com"):
        with page.context.new_page() as signup:
            signup.goto(f"{service.url}/munkeby/subscribe")
            signup.fill("input[name=email]", address)
            signup.check("input[name=consent]")
            signup.click("button[type=submit]")
            signup.wait_for_url("**/sent**")
            signup.goto(mail_link(smtp, address, "confirm", service.url))
            signup.click("button[type=submit]")
            signup.wait_for_load_state()

    page.goto(f"{service.url}/dashboard/")
    page.wait_for_url("**/dashboard/login**")
    page.fill("input[name=email]", "maria@munkeby.se")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{service.url}/dashboard/")
    overview = page.locator("#n-munkeby").locator("..")
    assert overview.locator('[data-figure="subscribed"]').inner_text() == "2"
    assert page.locator("svg.chart").count() == 2
    screenshot(page, shots / "dashboard-overview.png")

    page.click("text=Prenumeranter")
    page.fill("input[name=q]", "anna")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    rows = page.locator("table.subscribers tbody tr")
    assert rows.count() == 1 and "anna@example.com" in rows.first.inner_text()
    screenshot(page, shots / "dashboard-subscribers.png")

    page.click("text=anna@example.com")
    page.wait_for_load_state()
    assert "consent_confirmed" in page.content()
    screenshot(page, shots / "dashboard-subject.png")

    with page.expect_download() as download:
        page.click("text=Exportera (JSON)")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported["subscriptions"][0]["email"] == "anna@example.com"

    page.click("text=Radera…")
    page.wait_for_load_state()
    page.fill("input[name=confirm]", "anna@example.com")
    screenshot(page, shots / "dashboard-erase.png")
    page.click("button.danger")
    page.wait_for_url("**/dashboard/subscribers")
    assert service.status_of("anna@example.com") is None
    assert service.status_of("bo@example.com") == "subscribed"
