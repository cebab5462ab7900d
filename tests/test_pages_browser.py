"""Every page in Debian's Chromium, 390 and 1280 px wide, in Swedish and English.

Each page must fit its width (no horizontal scrolling), and axe-core (npm, pinned in
tests/browser/package.json) must find no WCAG 2.1 A/AA violation of serious or critical
impact. A full-page screenshot of each goes to ``SCREENSHOT_DIR`` as
``<page>-<lang>-<width>.png`` (``docs/screenshots`` to refresh the committed ones).

One gunicorn service and one browser serve the whole module. Pages are reached the
way a person reaches them: forms filled in, links read from the mail the service
sent to a real SMTP server on loopback, dashboard pages after logging in. The one
exception is the expired confirmation link, minted with the service's own token
function as it would have been eight days ago. Pages that show the outcome of an
action (confirmed, erased, used link...) get a fresh person each time; the others
share the people made once for the module.

Without Chromium, Playwright or axe-core (``npm ci --prefix tests/browser``) the tests
skip and say how to install what is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .browser.harness import (
    axe_source,
    axe_violations,
    blocking,
    launched_chromium,
    mail_link,
    overflow,
    screenshot,
    sign_up,
)
from .browser.harness import screenshot_dir as shots_folder
from .conftest import base_env
from .support import Service, SmtpSink, free_port, serving

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

LANGUAGES = ("sv", "en")
WIDTHS = (390, 1280)
LOCALES = {"sv": "sv-SE", "en": "en-GB"}
HEIGHT = 900
PASSWORD = "correct horse battery staple"
ADMIN = "admin@munkeby.se"
SUBJECT = "lisa@example.com"  # the Munkeby subscriber whose links and dashboard pages are shared
PROSPECT = "kontakt@firma.example"  # Mysoft's harvested prospect, told by the Art. 14 mail
# Nothing leaves the machine: provider calls, were any made, would reach a closed loopback port.
NOWHERE = "http://127.0.0.1:9"


@dataclass
class Site:
    """The running service, its mail, and what the module's shared people left behind."""

    service: Service
    smtp: SmtpSink
    env: dict[str, str]
    folder: Path
    links: dict[str, str] = field(default_factory=dict)  # name -> URL, filled as people are made
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return self.service.url

    def address(self, what: str) -> str:
        return f"{what}{next(self.numbers)}@example.com"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def axe() -> str:
    return axe_source()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shots_folder(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def site(chromium: Any, axe: str, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    # chromium and axe first: without them the module skips before starting a service.
    folder = tmp_path_factory.mktemp("pages")
    instance = folder / "instance"
    instance.mkdir()
    database = instance / "consent.sqlite3"
    shutil.copy(sqlite_template, database)
    port = free_port()
    smtp = SmtpSink()
    smtp.start()
    env = base_env(
        instance,
        f"sqlite:///{database}",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        # Every page at every width and language signs people up: more than an hour's worth for one IP.
        SUBSCRIBE_RATE_LIMIT="10000 per hour",
        MAILCHIMP_API_URL=NOWHERE,
        APSIS_API_URL=NOWHERE,
    )
    try:
        with serving(env, port, folder / "gunicorn.log") as service:
            yield Site(service, smtp, env, folder)
    finally:
        smtp.stop()


@pytest.fixture(scope="module")
def people(site: Site, chromium: Any) -> Site:
    """The people and records that the read-only pages share, made once for the module."""
    both = ("--notice", "munkeby", "--notice", "mysoft")
    for email, role in ((ADMIN, "admin"), ("maria@munkeby.se", "marketer")):
        made = site.service.flask("users", "create", email, "--role", role, "--password", PASSWORD, *both)
        assert made.returncode == 0, made.stderr
    token = site.service.flask("tokens", "create", "CRM", "--scope", "read", "--scope", "contact", *both)
    assert token.returncode == 0, token.stderr

    context = chromium.new_context(locale="sv-SE")
    try:
        page = context.new_page()
        sign_up(page, site.url, "munkeby", SUBJECT, "Lisa Ek")
        site.links["confirm"] = mail_link(site.smtp, SUBJECT, "confirm", site.url)
        site.links["expired"] = expired_confirm_link(site, site.links["confirm"])
        page.goto(site.links["confirm"])
        page.click("main button[type=submit]")
        page.wait_for_load_state()
        site.links["manage"] = mail_link(site.smtp, SUBJECT, "manage", site.url)
        site.links["unsubscribe"] = mail_link(site.smtp, SUBJECT, "unsubscribe", site.url)
        site.links["export"] = data_link(page, site, site.links["manage"], SUBJECT, "export")
        site.links["erase"] = data_link(page, site, site.links["manage"], SUBJECT, "erase")
        for _ in range(2):  # a list longer than one row
            other = site.address("reader")
            sign_up(page, site.url, "mysoft", other)
            page.goto(mail_link(site.smtp, other, "confirm", site.url))
            page.click("main button[type=submit]")
            page.wait_for_load_state()

        # Mysoft's harvested prospect: imported from a public web page, told by the Art. 14 mail.
        contacts = site.folder / "contacts.csv"
        contacts.write_text(f"E-post,Namn\n{PROSPECT},Karin Berg\n", encoding="utf-8")
        imported = site.service.flask(
            "contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
            "--source", "https://www.firma.example/kontakt", "--email-column", "E-post", "--name-column", "Namn",
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        drained = site.service.flask("outbox", "run", "--once")
        assert drained.returncode == 0, drained.stderr
        site.links["prospect"] = mail_link(site.smtp, PROSPECT, "manage", site.url)

        # The dashboard's own records: the subject, and an import waiting for its columns.
        log_in(page, site)
        page.goto(f"{site.url}/dashboard/subscribers?q=lisa")
        page.click(f"text={SUBJECT}")
        page.wait_for_load_state()
        site.links["subject"] = page.url
        page.goto(f"{site.url}/dashboard/import?notice=mysoft")
        page.set_input_files("input[name=file]", str(contacts))
        page.check("input[name=lawful_basis][value=legitimate_interest]")
        page.fill("input[name=source]", "https://www.firma.example/om-oss")
        page.fill("input[name=source_date]", datetime.now(UTC).date().isoformat())
        page.click("main form[enctype] button[type=submit]")
        page.wait_for_url("**/dashboard/imports/**")
        site.links["import"] = page.url
    finally:
        context.close()
    return site


def expired_confirm_link(site: Site, mailed: str) -> str:
    """The mailed confirmation link as the service would have signed it eight days ago."""
    import time_machine

    from app import create_app, tokens

    slug, packed, _time, _mac = mailed.rsplit("/", 1)[1].split("~")
    raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
    ref, nonce = raw[: tokens.REF_BYTES].hex(), raw[tokens.REF_BYTES :].hex()
    app = create_app(env=site.env)
    with app.app_context(), time_machine.travel(datetime.now(UTC) - timedelta(days=8), tick=False):
        token = tokens.link("confirm", slug, ref, nonce=nonce)
    return f"{site.url}/confirm/{token}"


def subscriber(page: Any, site: Site) -> tuple[str, str]:
    """A new confirmed Munkeby subscriber: their address and the manage link of their welcome mail."""
    address = site.address("reader")
    sign_up(page, site.url, "munkeby", address)
    page.goto(mail_link(site.smtp, address, "confirm", site.url))
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    return address, mail_link(site.smtp, address, "manage", site.url)


def data_link(page: Any, site: Site, manage: str, address: str, kind: str) -> str:
    """Ask on the manage page for the export or erasure link, and read it from the mail."""
    before = len(site.smtp.messages(address))
    page.goto(manage)
    page.click(f"button[name=kind][value={kind}]")
    page.wait_for_load_state()
    site.smtp.wait_for(address, before + 1)
    return mail_link(site.smtp, address, "manage/data", site.url)


def log_in(page: Any, site: Site) -> None:
    page.goto(f"{site.url}/dashboard/login")
    page.fill("input[name=email]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{site.url}/dashboard/")


# --- the pages: each brings the page to the state a person sees ---------------------------------


def _goto(name: str) -> Callable[[Any, Site], None]:
    def visit(page: Any, site: Site) -> None:
        page.goto(site.links[name])

    return visit


def _path(path: str) -> Callable[[Any, Site], None]:
    def visit(page: Any, site: Site) -> None:
        page.goto(site.url + path)

    return visit


def sign_up_with_errors(page: Any, site: Site) -> None:
    page.goto(f"{site.url}/munkeby/subscribe")
    page.fill("input[name=email]", "not an address")
    page.click("main button[type=submit]")  # the consent box left unticked too
    page.wait_for_load_state()


def sent(page: Any, site: Site) -> None:
    sign_up(page, site.url, "mysoft", site.address("new"))


def confirmed(page: Any, site: Site) -> None:
    address = site.address("new")
    sign_up(page, site.url, "munkeby", address)
    page.goto(mail_link(site.smtp, address, "confirm", site.url))
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def stale_link(page: Any, site: Site) -> None:
    """A confirmation link pressed after the person unsubscribed with the same mail's link."""
    address = site.address("new")
    sign_up(page, site.url, "munkeby", address)
    confirm = mail_link(site.smtp, address, "confirm", site.url)
    page.goto(mail_link(site.smtp, address, "unsubscribe", site.url))
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    page.goto(confirm)
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def unsubscribed(page: Any, site: Site) -> None:
    address, _manage = subscriber(page, site)
    page.goto(mail_link(site.smtp, address, "unsubscribe", site.url))
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def one_click(page: Any, site: Site) -> None:
    """The answer to a mail client's RFC 8058 POST, as a browser would show it."""
    address, _manage = subscriber(page, site)
    link = mail_link(site.smtp, address, "unsubscribe", site.url)
    page.goto(link)
    with page.expect_navigation():
        page.evaluate(
            """(action) => {
                const form = document.createElement('form');
                form.method = 'post';
                form.action = action;
                const field = document.createElement('input');
                field.type = 'hidden';
                field.name = 'List-Unsubscribe';
                field.value = 'One-Click';
                form.append(field);
                document.body.append(form);
                form.submit();
            }""",
            link,
        )


def erased(page: Any, site: Site) -> None:
    address, manage = subscriber(page, site)
    page.goto(data_link(page, site, manage, address, "erase"))
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def used_link(page: Any, site: Site) -> None:
    """The export link pressed a second time: the first press downloaded the file."""
    address, manage = subscriber(page, site)
    page.goto(data_link(page, site, manage, address, "export"))
    with page.expect_download():
        page.click("main button[type=submit]")
    page.click("main button[type=submit]")
    page.wait_for_load_state()


PAGES: dict[str, Callable[[Any, Site], None]] = {
    "index": _path("/"),
    "subscribe-munkeby": _path("/munkeby/subscribe"),
    "subscribe-mysoft": _path("/mysoft/subscribe"),
    "subscribe-errors": sign_up_with_errors,
    "sent": sent,
    "privacy-munkeby": _path("/munkeby/privacy"),
    "privacy-mysoft": _path("/mysoft/privacy"),
    "confirm": _goto("confirm"),
    "confirm-expired": _goto("expired"),
    "confirmed": confirmed,
    "stale-link": stale_link,
    "unsubscribe": _goto("unsubscribe"),
    "unsubscribed": unsubscribed,
    "one-click": one_click,
    "manage-munkeby": _goto("manage"),
    "manage-mysoft-prospect": _goto("prospect"),
    "data-export": _goto("export"),
    "data-erase": _goto("erase"),
    "erased": erased,
    "used-link": used_link,
    "invalid-link": _path("/manage/this-link-was-never-ours"),
    "not-found": _path("/no-such-page"),
    "dashboard-login": _path("/dashboard/login"),  # in a fresh context: nobody is logged in
}

DASHBOARD: dict[str, Callable[[Any, Site], None]] = {
    "dashboard-overview": _path("/dashboard/"),
    "dashboard-subscribers": _path("/dashboard/subscribers"),
    "dashboard-subject": _goto("subject"),
    "dashboard-certificate": lambda page, site: page.goto(site.links["subject"] + "/certificate"),
    "dashboard-import": _path("/dashboard/import"),
    "dashboard-import-status": _goto("import"),
    "dashboard-users": _path("/dashboard/users"),
    "dashboard-tokens": _path("/dashboard/tokens"),
    "dashboard-erase": lambda page, site: page.goto(site.links["subject"] + "/erase"),
}


def cases(names: list[str]) -> list[Any]:
    # The id names page, language and width, so a failure says where to look.
    return [
        pytest.param(name, lang, width, id=f"{name}-{lang}-{width}")
        for name in names
        for lang in LANGUAGES
        for width in WIDTHS
    ]


@pytest.fixture(scope="module")
def staff(chromium: Any, people: Site) -> Iterator[dict[str, Any]]:
    """One logged-in dashboard session per language (the language comes from the browser)."""
    contexts = {}
    try:
        for lang in LANGUAGES:
            contexts[lang] = chromium.new_context(locale=LOCALES[lang])
            page = contexts[lang].new_page()
            log_in(page, people)
            page.close()
        yield contexts
    finally:
        for context in contexts.values():
            context.close()


def check(page: Any, name: str, lang: str, width: int, axe: str, shots: Path, failures: list[int]) -> None:
    """Screenshot the page, then fail with every problem found on it."""
    screenshot(page, shots / f"{name}-{lang}-{width}.png")
    where = f"{name} ({lang}, {width} px, {page.url})"
    problems = [f"answered {status}" for status in failures]
    shown = page.locator("html").get_attribute("lang")
    if shown != lang:
        problems.append(f"the page is in {shown!r}, not {lang!r}")
    wide = overflow(page)
    if wide is not None:
        sizes = f"scrollWidth {wide['scrollWidth']} > clientWidth {wide['clientWidth']}"
        boxes, culprits = _elements(wide["boxes"]), _elements(wide["culprits"])
        problems.append(f"scrolls sideways: {sizes}; too wide: {boxes}; in it: {culprits}")
    violations = axe_violations(page, axe)
    for violation in blocking(violations):
        targets = ", ".join(" ".join(node["target"]) for node in violation["nodes"])
        problems.append(f"axe {violation['id']} ({violation['impact']}): {violation['help']}: {targets}")
    record(name, lang, width, page.url, wide, violations)
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


def _elements(found: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['element']} (right edge {e['right']} px: {e['text']!r})" for e in found)


def record(
    name: str, lang: str, width: int, url: str, wide: dict[str, Any] | None, found: list[dict[str, Any]]
) -> None:
    """One JSON line per page checked to ``BROWSER_FINDINGS``, when set: the raw findings (every
    axe violation, whatever its impact) that a report of all pages is written from."""
    target = os.environ.get("BROWSER_FINDINGS")
    if not target:
        return
    line = {"page": name, "lang": lang, "width": width, "url": url, "overflow": wide, "axe": found}
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")


def open_page(context: Any, width: int) -> tuple[Any, list[int]]:
    page = context.new_page()
    page.set_viewport_size({"width": width, "height": HEIGHT})
    failures: list[int] = []

    def answered(response: Any) -> None:
        # A server error on the way to the page, or on it, is a finding too.
        if response.status >= 500 and response.request.is_navigation_request():
            failures.append(response.status)

    page.on("response", answered)
    return page, failures


@pytest.mark.parametrize(("name", "lang", "width"), cases(list(PAGES)))
def test_public_page_fits_and_has_no_serious_accessibility_problem(
    name: str, lang: str, width: int, chromium: Any, people: Site, axe: str, shots: Path
) -> None:
    # Each public page in a context of its own: no cookie carried over, as for someone clicking a mail link.
    context = chromium.new_context(locale=LOCALES[lang])
    try:
        page, failures = open_page(context, width)
        PAGES[name](page, people)
        check(page, name, lang, width, axe, shots, failures)
    finally:
        context.close()


@pytest.mark.parametrize(("name", "lang", "width"), cases(list(DASHBOARD)))
def test_dashboard_page_fits_and_has_no_serious_accessibility_problem(
    name: str, lang: str, width: int, staff: dict[str, Any], people: Site, axe: str, shots: Path
) -> None:
    page, failures = open_page(staff[lang], width)
    try:
        DASHBOARD[name](page, people)
        check(page, name, lang, width, axe, shots, failures)
    finally:
        page.close()



def test_the_checks_catch_a_page_that_scrolls_sideways_and_a_field_without_a_label(chromium: Any, axe: str) -> None:
    # The checks themselves, on a page made to fail them: a pass above means something.
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_viewport_size({"width": 390, "height": HEIGHT})
        page.set_content(
            '<!doctype html><html lang="en"><title>Broken</title><main><h1>Broken</h1>'
            '<input type="text" name="q"><img src="data:,"><pre class="log">' + "x" * 200 + "</pre></main></html>"
        )
        wide = overflow(page)
        assert wide is not None and wide["clientWidth"] == 390
        assert wide["boxes"][0]["element"] == "pre.log"
        found = {violation["id"] for violation in blocking(axe_violations(page, axe))}
        assert {"label", "image-alt"} <= found
    finally:
        context.close()
