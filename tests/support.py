"""Helpers for tests: read mail as a client would, fill in forms as a person would."""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, insert

from app.addresses import email_hash
from app.extensions import db
from app.models import OutboxJob, Subscription, utcnow

from .fakes.apsis import FakeApsis
from .fakes.mailchimp import FakeMailchimp

PUBLIC_URL = "https://news.example.org"
APSIS_EMAIL_ATTRIBUTE = "1001"  # the fake's version id of com.apsis1.attributes.email
REPO = Path(__file__).resolve().parent.parent


class SettledClient(FlaskClient):
    """The test client, returning once the mail a request handed over has been sent.

    The service sends subscriber mail after its answer, from a thread of its own; a
    test that reads the mailbox right after a request reads it as the person would a
    moment later.
    """

    def open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().open(*args, **kwargs)
        sender = self.application.extensions.get("after_response")
        if sender is not None:
            assert sender.wait_idle(timeout=60), "mail handed over after the response was not sent within 60 s"
        return response


@contextmanager
def statements_sent(app: Flask, pattern: re.Pattern[str]) -> Iterator[list[tuple[str, object]]]:
    """The statements matching ``pattern`` the service sends inside the block, each as it was
    sent: (statement, parameters); many-row calls and EXPLAINs are left out."""
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not executemany and pattern.search(statement) and not statement.startswith("EXPLAIN"):
            seen.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plans_with(app: Flask, statements: list[tuple[str, object]], step: str) -> list[str]:
    """The statements whose SQLite query plan has a step matching the regular expression
    ``step``, each shortened with its plan (SQLite keeps no statistics: its plan follows from
    the statement's shape alone)."""
    found = []
    with app.app_context(), db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            if any(re.search(step, line) for line in plan):
                found.append(f"{' '.join(statement.split())[:200]} -> {plan}")
    return found


# (args, stderr) of every CLI run, read by the log audit (tests/log_audit.py) after each test.
CLI_OUTPUT: list[tuple[tuple[str, ...], str]] = []


def run_flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app wsgi ARGS`` in a process of its own, as an operator runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    CLI_OUTPUT.append((args, result.stderr))
    return result


def notices_with_rule(folder: Path, slug: str, rule: str) -> Path:
    """A copy of the shipped notice files in which ``slug``'s opt-out rule is ``rule``."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "notices").glob("*.toml"):
        text = source.read_text(encoding="utf-8")
        if source.stem == slug:
            text = re.sub(r'(?m)^rule = "\w+"', f'rule = "{rule}"', text)
        (folder / source.name).write_text(text, encoding="utf-8")
    return folder


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    """`flask outbox run` as an operator runs it, in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_workers(processes: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    """SIGTERM to each worker (each finishes its current job), then wait for all of them."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.communicate(timeout=30)  # reads what is left of its log and closes the pipe


class Mailbox:
    """Mail the service wrote to its folder transport, parsed as a client would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def messages(self) -> list[EmailMessage]:
        if not self.directory.exists():
            return []
        files = sorted(self.directory.glob("*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]  # type: ignore[misc]

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages() if m["To"] == address]

    def last(self, address: str) -> EmailMessage:
        found = self.to(address)
        assert found, f"no mail to {address}"
        return found[-1]


def text_body(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def link_in(message: EmailMessage, kind: str) -> str:
    """The path of the first ``/kind/<token>`` link in the plain-text part."""
    match = re.search(re.escape(PUBLIC_URL) + rf"(/{kind}/[A-Za-z0-9._~-]+)", text_body(message))
    assert match, f"no {kind} link in the mail"
    return match.group(1)


def unsubscribe_path(message: EmailMessage) -> str:
    header = message["List-Unsubscribe"]
    match = re.fullmatch(r"<" + re.escape(PUBLIC_URL) + r"(/unsubscribe/[A-Za-z0-9._~-]+)>", header)
    assert match, header
    return match.group(1)


def csrf_token(client, path: str, **headers: str) -> str:  # type: ignore[no-untyped-def]
    page = client.get(path, headers=headers).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, "no CSRF token on the form"
    return match.group(1)


def sign_up(client, slug: str, address: str, name: str | None = None, **headers: str):  # type: ignore[no-untyped-def]
    data = {"csrf_token": csrf_token(client, f"/{slug}/subscribe", **headers), "email": address, "consent": "y"}
    if name is not None:
        data["name"] = name
    return client.post(f"/{slug}/subscribe", data=data, headers=headers)


def subscribe_and_confirm(client, mailbox: Mailbox, slug: str, address: str, name: str | None = None) -> EmailMessage:  # type: ignore[no-untyped-def]
    """Full double opt-in; returns the welcome mail."""
    assert sign_up(client, slug, address, name).status_code == 303
    stored = address.lower()  # the service normalises addresses to lower case
    confirm = link_in(mailbox.last(stored), "confirm")
    assert client.post(confirm).status_code == 200
    return mailbox.last(stored)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpSink:
    """A real SMTP server on loopback that keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, list[str], bytes]] = []  # (MAIL FROM, RCPT TO, content)
        self.mail_options: list[list[str]] = []  # the MAIL FROM parameters of each message (SMTPUTF8, ...)
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self._lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            self.mail_options.append(list(envelope.mail_options))
        return "250 OK"

    def start(self) -> None:
        # As a current MTA does, it takes internationalised addresses (RFC 6531) when asked.
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        with self._lock:
            raw = [content for _, _, content in self.received]
        parsed = [email.message_from_bytes(r, policy=email.policy.default) for r in raw]
        return [m for m in parsed if to is None or m["To"] == to]  # type: ignore[misc]

    def wait_for(self, to: str, count: int, timeout: float = 20) -> list[EmailMessage]:
        """The messages to ``to`` once there are at least ``count``: a service answers before
        its mail goes out, so a client over HTTP sees the mail a moment after the answer."""
        deadline = time.monotonic() + timeout
        while len(found := self.messages(to)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} mails to {to} after {timeout} s"
            time.sleep(0.02)
        return found


def provider_env(apsis: FakeApsis | None = None, mailchimp: FakeMailchimp | None = None) -> dict[str, str]:
    """Settings that point the service's providers at the fakes."""
    env = {}
    if apsis is not None:
        env.update(APSIS_API_URL=apsis.url, APSIS_CLIENT_ID=apsis.client_id, APSIS_CLIENT_SECRET=apsis.client_secret)
        # The version id of the email attribute in the account's data model: a profile is
        # created only by the attribute call that carries it.
        env["MYSOFT_EMAIL_ATTRIBUTE"] = APSIS_EMAIL_ATTRIBUTE
    if mailchimp is not None:
        env.update(MAILCHIMP_API_KEY=mailchimp.api_key, MAILCHIMP_API_URL=mailchimp.url)
    return env


def queue_sync_jobs(notice: str, count: int, status: str, kind: str) -> list[str]:
    """Insert subscriptions and one sync job each, as consent changes would have
    (in bulk, inside an app context); answers the addresses."""
    now = utcnow()
    addresses = [f"reader{i}@example.com" for i in range(count)]
    for start in range(0, count, 10_000):
        subs, jobs = [], []
        for email_address in addresses[start : start + 10_000]:
            ref = uuid.uuid4().hex
            subs.append(
                {
                    "ref": ref,
                    "notice": notice,
                    "email": email_address,
                    "email_hash": email_hash(email_address),
                    "status": status,
                    "lang": "sv",
                    "source": "bulk",
                    "lawful_basis": "consent",
                    "notice_version": "0" * 64,
                    "created_at": now,
                    "confirmed_at": now,
                    "updated_at": now,
                }
            )
            jobs.append(
                {
                    "kind": kind,
                    "notice": notice,
                    "subscription_ref": ref,
                    "payload": {},
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
        db.session.execute(insert(Subscription), subs)
        db.session.execute(insert(OutboxJob), jobs)
        db.session.commit()
    return addresses


class Service:
    """gunicorn serving wsgi:app, plus the CLI run with the same settings."""

    def __init__(self, env: dict[str, str], port: int, log: Path, workers: int = 2) -> None:
        self.env, self.url, self.log = env, f"http://127.0.0.1:{port}", log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                # No control socket: it would live in $HOME, shared by every run on the machine.
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(workers),
                    "--no-control-socket",
                    "wsgi:app",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_until_healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"gunicorn exited:\n{self.log.read_text()}"
            try:
                with requests.get(self.url + "/healthz", timeout=2) as response:
                    if response.status_code == 200:
                        return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or no worker has booted to take the request
            time.sleep(0.2)
        pytest.fail(f"gunicorn did not answer /healthz within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def flask(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_flask(self.env, *args)

    def status_of(self, address: str) -> str | None:
        """The subscription's status per `subjects export`, None when nothing is held."""
        result = self.flask("subjects", "export", address)
        if result.returncode != 0:
            return None
        [subscription] = json.loads(result.stdout)["subscriptions"]
        return subscription["status"]


@contextmanager
def serving(env: dict[str, str], port: int, log: Path, workers: int = 2) -> Iterator[Service]:
    """gunicorn started and answering /healthz for the block, stopped however the block ends."""
    server = Service(env, port, log, workers)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


@contextmanager
def live_server(app: Flask, port: int) -> Iterator[str]:
    """``app`` over real HTTP on 127.0.0.1:``port``, served from a thread of this process.
    Lighter than gunicorn (``Service``) for a browser test of one page; yields the base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
