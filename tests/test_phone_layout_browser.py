"""The subscriber's pages on a phone: Debian's Chromium at 320 and 390 px, through gunicorn.

Every public page a subscriber reaches (sign-up to erasure, for a subscriber with a long
address and name, a harvested prospect and a customer with a long source URL) must fit
the screen: no sideways scroll (the document is no wider than the viewport), each value
of the manage page given the width of the screen rather than a sliver beside its label,
and the manage page no taller than a few screens. Without Chromium or Playwright the test
skips and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser.harness import launched_chromium, mail_link, sign_up
from .support import Service, SmtpSink, free_port, serving

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WIDTHS = (320, 390)
# A manage page holds one notice's card and the data-request card: at 320 px it was
# about 6,500 px tall when each value wrapped letter by letter; now about 2,000.
MANAGE_MAX_HEIGHT = 3000
LONG_ADDRESS = "anna-karin.lindqvist-bergstrom.marknadsavdelningen@exempel-foretaget-i-norrbotten.se"
LONG_NAME = "Anna-Karin Lindqvist-Bergström af Norrbottensvägen"
LONG_SOURCE = (
    "https://www.exempel-foretaget-i-norrbotten.se/om-oss/kontakta-oss/medarbetare-och-kontaktpersoner"
    "?avdelning=marknadsavdelningen&sida=2"
)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink, web_port: int) -> dict[str, str]:
    return {**app_env, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "PUBLIC_URL": f"http://127.0.0.1:{web_port}"}


@pytest.fixture
def service(app, app_env: dict[str, str], web_port: int, tmp_path: Path) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    with serving(app_env, web_port, tmp_path / "gunicorn.log") as server:
        yield server


MEASURE = """() => {
  const root = document.documentElement;
  const main = document.querySelector("main");
  const values = [...document.querySelectorAll("dl.held dd")].map(dd => Math.round(dd.getBoundingClientRect().width));
  return {
    scrollWidth: root.scrollWidth,
    clientWidth: root.clientWidth,
    height: root.scrollHeight,
    mainWidth: main ? Math.round(main.getBoundingClientRect().width) : 0,
    narrowestValue: values.length ? Math.min(...values) : null,
  };
}"""


# What a mail client posts for one-click: the page's own form without its "via=page" marker.
ONE_CLICK = """() => {
  document.querySelector("input[name=via]").remove();
  document.querySelector("main form").submit();
}"""


class Layout:
    """Measures the page open in the browser at each phone width and keeps what does not fit."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.heights: dict[str, int] = {}

    def check(self, name: str) -> None:
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 740})
            m = self.page.evaluate(MEASURE)
            where = f"{name} at {width} px"
            if m["scrollWidth"] > m["clientWidth"]:
                self.problems.append(f"{where}: scrolls sideways ({m['scrollWidth']} > {m['clientWidth']} px)")
            if m["narrowestValue"] is not None:
                # One column on a phone: a value has (nearly) the card's whole width.
                if m["narrowestValue"] < 0.75 * m["mainWidth"]:
                    self.problems.append(f"{where}: a value is {m['narrowestValue']} px wide of {m['mainWidth']}")
                self.heights[where] = m["height"]
                if m["height"] > MANAGE_MAX_HEIGHT:
                    self.problems.append(f"{where}: {m['height']} px tall (at most {MANAGE_MAX_HEIGHT})")

    def visit(self, url: str, name: str) -> None:
        self.page.goto(url)
        self.check(name)


def test_every_subscriber_page_fits_a_phone(service, smtp, chromium, tmp_path):  # type: ignore[no-untyped-def]
    context = chromium.new_context(locale="sv-SE", viewport={"width": 390, "height": 740}, accept_downloads=True)
    page = context.new_page()
    layout = Layout(page)
    url = service.url
    try:
        layout.visit(f"{url}/", "index")
        for slug in ("munkeby", "mysoft"):
            layout.visit(f"{url}/{slug}/subscribe", f"{slug} sign-up")
            layout.visit(f"{url}/{slug}/privacy", f"{slug} privacy notice")
        page.goto(f"{url}/munkeby/subscribe")
        page.click("button[type=submit]")  # nothing filled in: the errors
        page.wait_for_load_state()
        layout.check("sign-up with errors")

        # A subscriber with a long address and name, under both notices.
        sign_up(page, url, "munkeby", LONG_ADDRESS, LONG_NAME)
        layout.check("check your inbox")
        layout.visit(mail_link(smtp, LONG_ADDRESS, "confirm", url), "confirm")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        layout.check("confirmed")
        munkeby_manage = mail_link(smtp, LONG_ADDRESS, "manage", url, after=1)
        sent = len(smtp.messages(LONG_ADDRESS))
        sign_up(page, url, "mysoft", LONG_ADDRESS)
        page.goto(mail_link(smtp, LONG_ADDRESS, "confirm", url, after=sent))
        page.click("button[type=submit]")
        page.wait_for_load_state()
        for lang in ("sv", "en"):
            layout.visit(f"{munkeby_manage}?lang={lang}", f"manage, subscriber ({lang})")

        # A prospect and a customer imported for Mysoft, with a long source URL.
        contacts = tmp_path / "contacts.csv"
        contacts.write_text(
            "email;kind\n"
            "prospect.with.a.rather.long.address@exempel-foretaget-i-norrbotten.se;prospect\n"
            "kund@exempel-foretaget-i-norrbotten.se;customer\n",
            encoding="utf-8",
        )
        imported = service.flask(
            "contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
            "--source", LONG_SOURCE, "--email-column", "email", "--relationship-column", "kind",
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        assert service.flask("outbox", "run", "--once").returncode == 0  # the Art. 14 mails
        prospect = "prospect.with.a.rather.long.address@exempel-foretaget-i-norrbotten.se"
        prospect_manage = mail_link(smtp, prospect, "manage", url)
        customer_manage = mail_link(smtp, "kund@exempel-foretaget-i-norrbotten.se", "manage", url)
        for lang in ("sv", "en"):
            layout.visit(f"{prospect_manage}?lang={lang}", f"manage, prospect ({lang})")
            layout.visit(f"{customer_manage}?lang={lang}", f"manage, customer ({lang})")

        # The data links: a copy (then the same link again, used) and an erasure.
        sent = len(smtp.messages(LONG_ADDRESS))
        page.goto(munkeby_manage)
        page.click("button[value=export]")
        page.wait_for_load_state()
        layout.check("manage, link sent")
        export = mail_link(smtp, LONG_ADDRESS, "manage/data", url, after=sent)
        layout.visit(export, "data link, copy (two controllers)")
        with page.expect_download():
            page.click("main button[type=submit]")
        layout.visit(export, "data link, used")
        layout.visit(f"{url}/manage/not-a-link", "invalid link")

        sent = len(smtp.messages(prospect))
        page.goto(prospect_manage)
        page.click("button[value=erase]")
        page.wait_for_load_state()
        erase = mail_link(smtp, prospect, "manage/data", url, after=sent)
        layout.visit(erase, "data link, erasure")
        page.click("main button[type=submit]")
        page.wait_for_load_state()
        layout.check("erased")

        # Unsubscribing: the page, its answer, and the one-click answer a mail client gets.
        unsubscribe = mail_link(smtp, LONG_ADDRESS, "unsubscribe", url)
        layout.visit(unsubscribe, "unsubscribe")
        page.click("main button[type=submit]")
        page.wait_for_load_state()
        layout.check("unsubscribed")
        one_click = mail_link(smtp, "kund@exempel-foretaget-i-norrbotten.se", "unsubscribe", url)
        page.goto(one_click)
        # What a mail client posts: the same form without the page's own marker.
        with page.expect_navigation():
            page.evaluate(ONE_CLICK)
        assert "avregistrerad" in page.content()
        layout.check("one-click answer")
    finally:
        context.close()
    print("manage page heights:", layout.heights)
    assert layout.problems == []
    assert layout.heights, "no manage page was measured"
