"""A pytest plugin: no log line the suite produces holds an address, a token or a secret.

It reads three kinds of lines:
- every record logged in the test process while a test body runs, at every level (the
  root logger is opened to DEBUG for the test body, whatever the app set);
- the stderr of every CLI run through ``tests.support.run_flask``;
- every ``*.log`` file under this run's temporary folder (gunicorn's and the workers' logs
  of the end-to-end tests), read when the session ends.

Loggers of the test's own peers are not the service's lines and are left out: the SMTP
server the tests run (aiosmtpd logs recipients), the HTTP client (urllib3 logs the URLs it
requests), the browser driver. At the end of the session any finding fails the run, with
the test, the source and the pattern, and the match shortened so the report leaks nothing.

Under pytest-xdist each worker reads its own tests' lines and hands its count and findings
to the controller when it finishes; the controller reads the log files (the workers'
temporary folders are inside its own) and fails the run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from app.logs import JsonFormatter, TextFormatter

from . import support

# The peers' loggers: the tests' SMTP server, HTTP clients and browser, and asyncio under them.
PEER_LOGGERS = ("mail.log", "urllib3", "requests", "asyncio", "playwright", "hypothesis", "schemathesis", "filelock")

ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# The service's own sender and the placeholders of its documentation are not anyone's address.
SERVICE_ADDRESSES = {"nyhetsbrev@localhost"}
PATTERNS = {
    "e-mail address": ADDRESS,
    # A token in a link's path (/unsubscribe/<token>, /manage/data/<token> ...; a route
    # template's "<token>" is not one), and a link token wherever it stands: notice~data~signature.
    "link path": re.compile(r"/(?:unsubscribe|manage(?:/data)?|confirm)/[A-Za-z0-9._~=-]{8,}"),
    "link token": re.compile(r"\b[a-z][a-z0-9-]{0,31}~[A-Za-z0-9_=-]{8,}~[A-Za-z0-9_=~-]{8,}"),
    # itsdangerous's three dot-separated base64 parts (the data links), wherever they stand.
    "signed token": re.compile(r"\b[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{16,}\b"),
    "API token": re.compile(r"cst_[A-Za-z0-9_-]{16,}"),
    # A webhook's secret path segment, and the keys and secrets the tests configure
    # (tests/conftest.py base_env, the webhook tests' secrets).
    "webhook secret": re.compile(
        r"/webhooks/(?:mailchimp|apsis)/[^\s/\"'<>]{8,}|-hook-[a-z]{20}|e2e-(?:mailchimp|apsis)-[a-z]{20}"
    ),
    "secret": re.compile(r"test-secret-key-x{8}|test-pepper-y{8}|\b(?:m{40}|a{40})\b"),
}


@dataclass
class Finding:
    test: str
    source: str
    pattern: str
    excerpt: str


def findings_in(line: str) -> Iterator[tuple[str, str]]:
    for name, pattern in PATTERNS.items():
        for match in pattern.finditer(line):
            text = match.group(0)
            if name == "e-mail address" and (text.lower() in SERVICE_ADDRESSES or text.endswith("@localhost")):
                continue
            yield name, text[:6] + "..." if len(text) > 6 else text


class _Recorder(logging.Handler):
    def __init__(self, audit: LogAudit) -> None:
        super().__init__(logging.DEBUG)
        self.audit = audit
        # The lines as the service writes them, in both of its formats.
        self.formatters = (TextFormatter(), JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(PEER_LOGGERS):
            return
        for formatter in self.formatters:
            try:
                line = formatter.format(record)
            except Exception:  # a record that cannot be formatted is the test's own problem
                return
            self.audit.check(line, f"log record of {record.name}")


class LogAudit:
    def __init__(self) -> None:
        self.test = "(collection)"
        self.findings: list[Finding] = []
        self.lines = 0

    def check(self, text: str, source: str) -> None:
        for line in text.splitlines():
            self.lines += 1
            for pattern, excerpt in findings_in(line):
                self.findings.append(Finding(self.test, source, pattern, excerpt))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        self.test = item.nodeid
        root = logging.getLogger()
        recorder = _Recorder(self)
        level = root.level
        root.addHandler(recorder)
        root.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            root.removeHandler(recorder)
            root.setLevel(level)
            for args, stderr in support.CLI_OUTPUT:
                self.check(stderr, f"stderr of flask {' '.join(args[:2])}")
            support.CLI_OUTPUT.clear()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        """An xdist worker has finished: its lines and findings join the controller's."""
        shipped = getattr(node, "workeroutput", {}).get("log_audit")
        if shipped:
            self.lines += shipped["lines"]
            self.findings += [Finding(**finding) for finding in shipped["findings"]]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if session.config.getoption("--collect-only", default=False):
            return
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reads the files and reports
            workeroutput["log_audit"] = {"lines": self.lines, "findings": [asdict(f) for f in self.findings]}
            return
        base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        for path in sorted(Path(base).rglob("*.log")):
            self.test = f"(file {path.relative_to(base)})"
            self.check(path.read_text(errors="replace"), "log file")
        if self.findings:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.findings:
            terminalreporter.write_line(f"log audit: {self.lines} log lines read, no address, token or secret")
            return
        terminalreporter.section("log audit: personal data or secrets in log lines", red=True)
        for finding in self.findings[:50]:
            terminalreporter.write_line(f"{finding.test}: {finding.pattern} ({finding.excerpt}) in {finding.source}")
        if len(self.findings) > 50:
            terminalreporter.write_line(f"... and {len(self.findings) - 50} more")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LogAudit(), "log_audit")
