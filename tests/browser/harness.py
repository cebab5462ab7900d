"""Chromium through Playwright, mail links read from the SMTP sink, axe-core run in a page.

Shared by tests/test_browser.py (the user journeys) and tests/test_pages_browser.py
(every page at two widths in two languages). Without Debian's Chromium, Playwright
or the npm-installed axe-core, the tests that need them skip and say how to install.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..support import SmtpSink

HERE = Path(__file__).resolve().parent
AXE_SCRIPT = HERE / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# The WCAG 2.1 A and AA rules; "best-practice" and AAA rules are left out on purpose.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING_IMPACTS = frozenset({"serious", "critical"})


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Debian's Chromium, headless; skips the calling test when it or Playwright is missing."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def axe_source() -> str:
    """axe-core's script as npm installed it; skips the calling test when it is not installed."""
    if not AXE_SCRIPT.is_file():
        pytest.skip(f"axe-core is not installed ({AXE_SCRIPT} missing): run `npm ci --prefix tests/browser`")
    return AXE_SCRIPT.read_text(encoding="utf-8")


def screenshot_dir(default: Path) -> Path:
    """``SCREENSHOT_DIR`` (``docs/screenshots`` to refresh the committed ones), else ``default``."""
    folder = Path(os.environ.get("SCREENSHOT_DIR") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Any, path: Path) -> None:
    """The whole page as a PNG. Chromium now and then answers a capture with "Unable to capture
    screenshot" when no frame is ready (seen with both cores busy): that one error is asked again,
    a few times; any other, or a fourth, fails the test."""
    for attempt in range(4):
        try:
            page.screenshot(path=str(path), full_page=True)
            return
        except Exception as exc:  # playwright's Error; its module is imported only where installed
            if "Unable to capture screenshot" not in str(exc) or attempt == 3:
                raise
            time.sleep(0.25)


def mail_link(smtp: SmtpSink, address: str, kind: str, base: str, timeout: float = 20, after: int = 0) -> str:
    """The ``kind`` link (``confirm``, ``manage``, ``manage/data``...) of the latest mail to
    ``address`` that has one, among those past the first ``after``; the service mails right
    after its answer, so this waits a little."""
    # The token ends the link: "/manage/<token>" must not match the "/manage/data/..." links.
    pattern = re.compile(re.escape(base) + rf"/{kind}/[A-Za-z0-9._~-]+(?![A-Za-z0-9._~/-])")
    deadline = time.monotonic() + timeout
    while True:
        for message in reversed(smtp.messages(address)[after:]):
            body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            match = pattern.search(body)
            if match:
                return match.group(0)
        assert time.monotonic() < deadline, f"no {kind} link in a mail to {address}"
        time.sleep(0.02)


def sign_up(page: Any, base: str, slug: str, address: str, name: str | None = None) -> None:
    """Sign up on ``slug``'s form as a person does: fill it in, tick the box, send, see the answer."""
    page.goto(f"{base}/{slug}/subscribe")
    page.fill("input[name=email]", address)
    if name is not None:
        page.fill("input[name=name]", name)
    page.check("input[name=consent]")
    page.click("main button[type=submit]")
    page.wait_for_url("**/subscribe/sent**")


def inject_axe(page: Any, source: str) -> None:
    """Load axe-core into the page.

    ``page.add_script_tag(path=...)`` adds the file's text as an inline ``<script>``,
    which the service's CSP (``script-src 'self'``, no ``'unsafe-inline'``) refuses:
    Playwright reports "Executing inline script violates the following Content Security
    Policy directive". A script evaluated through the DevTools protocol is not subject
    to the page's CSP, so the same source is evaluated that way. The policy stays in
    force for everything else, so axe inspects the page as a subscriber gets it; a
    context with ``bypass_csp=True`` would not (the policy also decides which styles and
    scripts apply), and the tests would then pass pages that break under the real policy.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(f"() => {{ {source}\n}}")  # the newline ends a trailing line comment, if any
    assert page.evaluate("() => typeof window.axe === 'object'"), "axe-core could not be loaded into the page"


def axe_violations(page: Any, source: str) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now, each node with its impact."""
    inject_axe(page, source)
    result = page.evaluate(
        """async (tags) => {
            const options = {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']};
            const outcome = await axe.run(document, options);
            return {
                passed: outcome.passes.length,
                violations: outcome.violations.map(v => ({
                    id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map(n => ({
                        impact: n.impact, target: n.target.map(String), summary: n.failureSummary,
                    })),
                })),
            };
        }""",
        AXE_TAGS,
    )
    # No rule passing at all would mean axe looked at nothing (an empty or unloaded document).
    assert result["passed"] > 0, f"axe-core checked nothing on {page.url}"
    return list(result["violations"])


def blocking(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The violations with an impact of serious or critical, keeping only such nodes."""
    found = []
    for violation in violations:
        nodes = [node for node in violation["nodes"] if (node["impact"] or violation["impact"]) in BLOCKING_IMPACTS]
        if nodes:
            found.append({**violation, "nodes": nodes})
    return found


OVERFLOW_SCRIPT = """() => {
    const root = document.documentElement;
    const width = root.clientWidth;
    const describe = (el) => {
        let name = el.tagName.toLowerCase();
        if (el.id) name += '#' + el.id;
        for (const cls of el.classList) name += '.' + cls;
        return name;
    };
    const box = (el) => Math.round(el.getBoundingClientRect().right);
    // Its content's right edge too, where that spills out of the box (a long unbroken word),
    // unless the box scrolls or clips its own content.
    const spills = (el) => getComputedStyle(el).overflowX === 'visible';
    const content = (el) => Math.round(el.getBoundingClientRect().left + el.scrollWidth);
    const reach = (el) => spills(el) ? Math.max(box(el), content(el)) : box(el);
    const all = [...document.body.querySelectorAll('*')];
    const wide = all.filter(el => reach(el) > width);
    // The innermost elements that reach past the edge: the content that pushes the page wide;
    // and the outermost boxes that are wider than the page: what should fit or scroll on its own.
    const innermost = wide.filter(el => !wide.some(other => other !== el && el.contains(other)));
    const boxes = all.filter(el => box(el) > width);
    const outermost = boxes.filter(el => !boxes.includes(el.parentElement));
    const show = (el) => ({element: describe(el), right: reach(el), text: (el.textContent || '').trim().slice(0, 60)});
    return {
        scrollWidth: root.scrollWidth,
        clientWidth: width,
        boxes: (outermost.length ? outermost : innermost).slice(0, 3).map(show),
        culprits: innermost.slice(0, 5).map(show),
    };
}"""


def overflow(page: Any) -> dict[str, Any] | None:
    """None when the page fits its width (documentElement.scrollWidth <= clientWidth), else the
    two widths, the outermost elements that stick out (``boxes``) and the innermost (``culprits``)."""
    found = page.evaluate(OVERFLOW_SCRIPT)
    return None if found["scrollWidth"] <= found["clientWidth"] else dict(found)
