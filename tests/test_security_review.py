"""What a stranger can send, what a webhook signature covers, what the files on disk let other
users read, and what a cache may keep: the large import body only after login, signatures over
the bytes received, keys long enough and files private, and ``no-store`` on every answer that
holds personal data."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
import time_machine
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException
from werkzeug.routing import AnyConverter, IntegerConverter
from werkzeug.test import encode_multipart

from app import create_app
from app.config import ConfigError, load_settings
from app.extensions import db
from app.models import ConsentEvent, ContactImport, OutboxJob, Subscription, Suppression

from .support import PUBLIC_URL, Mailbox, Service, free_port, link_in, run_flask, sign_up, subscribe_and_confirm
from .test_api import make_token
from .test_dashboard import create_user, form_token, log_in

MB = 1024 * 1024


# --- 1. The import's 200 MB body is for a logged-in marketer or admin only ---------------------


class CountingStream(io.BytesIO):
    """A request body that counts how much of it the service read."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        count = super().readinto(buffer)
        self.read_bytes += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        data = super().readline(size)
        self.read_bytes += len(data)
        return data


def csv_upload(size: int, csrf: str = "not-a-token") -> tuple[str, bytes]:
    """A contact import form with a well-formed CSV file of about ``size`` bytes."""
    rows = b"".join(b"person%07d@example.com\n" % i for i in range(size // 26 + 1))  # 26 bytes a line
    data = {
        "csrf_token": csrf,
        "notice": "mysoft",
        "lawful_basis": "legitimate_interest",
        "source": "https://www.firma.se/kontakt",
        "source_date": "2026-11-01",
        "file": FileStorage(io.BytesIO(b"email\n" + rows), filename="kontakter.csv", content_type="text/csv"),
    }
    boundary, body = encode_multipart(data)
    return f"multipart/form-data; boundary={boundary}", body


def post_upload(client, body: bytes, content_type: str, chunked: bool) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """POST the body to the import; answers (status, bytes of the body the service read). Chunked:
    no length the service can go by, the stream ending where the server says (as gunicorn hands
    a chunked body over)."""
    stream = CountingStream(body)
    overrides = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"} if chunked else {}
    headers = {} if chunked else {"Content-Length": str(len(body))}
    answer = client.post(
        "/dashboard/import",
        input_stream=stream,
        content_type=content_type,
        headers=headers,
        environ_overrides=overrides,
    )
    return answer.status_code, stream.read_bytes


def stored_imports(app) -> tuple[int, list[Path]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.execute(select(func.count()).select_from(ContactImport)).scalar_one()
        db.session.remove()
    folder = Path(app.config["INSTANCE_PATH"]) / "imports"
    return rows, sorted(folder.glob("*")) if folder.exists() else []


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
@pytest.mark.parametrize("who", ["anonymous", "viewer", "marketer idle for 31 minutes"])
def test_a_stranger_or_viewer_cannot_send_the_import_more_than_one_megabyte(app, client, runner, who, chunked):
    role = who.split()[0]
    if role != "anonymous":
        create_user(runner, "vera@munkeby.se", role)
        assert log_in(client, "vera@munkeby.se").status_code == 302
    content_type, body = csv_upload(3 * MB)
    if who.endswith("minutes"):  # a once-valid session that has ended is a stranger's
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=31)):
            status, read = post_upload(client, body, content_type, chunked)
    else:
        status, read = post_upload(client, body, content_type, chunked)
    assert status == 413
    # A declared length is refused unread; a chunked body is cut off at the 1 MB limit.
    assert read == 0 if not chunked else read <= MB + 64 * 1024
    assert stored_imports(app) == (0, [])


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
def test_a_marketer_can_still_upload_a_large_import(app, client, runner, chunked):
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    token = form_token(client.get("/dashboard/import?notice=mysoft").get_data(as_text=True))
    content_type, body = csv_upload(3 * MB, csrf=token)
    status, read = post_upload(client, body, content_type, chunked)
    assert status == 302 and read == len(body)
    rows, files = stored_imports(app)
    assert rows == 1 and len(files) == 1 and files[0].stat().st_size > 3 * MB
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600  # readable by the service only
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700


@pytest.fixture
def gunicorn(app, app_env: dict[str, str], tmp_path: Path) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    # Depending on `app` migrates and empties the database gunicorn then serves.
    server = Service(app_env, free_port(), tmp_path / "gunicorn.log", workers=1)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def send_chunked(url: str, path: str, content_type: str, body: bytes, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """Send ``body`` with Transfer-Encoding: chunked over a socket, stopping once the server
    answers; returns the answer's head and how many body bytes were sent before it came."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        while sent < len(body):
            try:
                answer = sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                pass
            piece = body[sent : sent + chunk]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(20)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return answer.split(b"\r\n\r\n", 1)[0], sent


@pytest.mark.e2e
def test_a_strangers_chunked_upload_is_cut_off_at_one_megabyte_under_gunicorn(app, gunicorn):
    content_type, body = csv_upload(20 * MB)
    head, sent = send_chunked(gunicorn.url, "/dashboard/import", content_type, body)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert sent < 4 * MB  # the answer came long before the 20 MB were through
    assert stored_imports(app) == (0, [])


# --- 2. A webhook signature covers the bytes received; multipart is refused unparsed ----------

WEBHOOK_SECRET = "review-hook-" + "w" * 24  # both webhooks', so a walk with it passes the secret check
SIGNING = "mc-sign-" + "s" * 24
MAILCHIMP_HOOK = f"/webhooks/mailchimp/{WEBHOOK_SECRET}"
APSIS_HOOK = f"/webhooks/apsis/{WEBHOOK_SECRET}"


@pytest.fixture
def app_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**app_env, "MAILCHIMP_WEBHOOK_SECRET": WEBHOOK_SECRET, "APSIS_WEBHOOK_SECRET": WEBHOOK_SECRET}


def state(app) -> tuple:  # type: ignore[no-untyped-def]
    """Every row a delivery could change, as one comparable value."""
    with app.app_context():
        found = tuple(
            tuple(tuple(row) for row in db.session.execute(select(*model.__table__.c)).all())
            for model in (Subscription, Suppression, ConsentEvent, OutboxJob)
        )
        db.session.remove()
    return found


def unsubscribe_fields(email: str) -> list[tuple[str, str]]:
    """A Mailchimp unsubscribe delivery's fields, in the order Mailchimp sends them."""
    return [
        ("type", "unsubscribe"),
        ("fired_at", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 1))),
        ("data[list_id]", "munkeby0001"),
        ("data[email]", email),
        ("data[reason]", "manual"),
    ]


def multipart(fields: list[tuple[str, str]]) -> tuple[str, bytes]:
    boundary, body = encode_multipart(dict(fields))
    return f"multipart/form-data; boundary={boundary}", body


@pytest.mark.parametrize("route", ["mailchimp", "apsis"])
def test_a_multipart_delivery_is_refused_before_anything_parses_it(app, client, mailbox, route):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    before = state(app)
    if route == "mailchimp":
        path, fields = MAILCHIMP_HOOK, unsubscribe_fields("anna@example.com")
    else:
        path, fields = APSIS_HOOK, [("type", "unsubscribe"), ("email", "bo@example.com")]
    content_type, body = multipart(fields)
    answer = client.post(path, data=body, content_type=content_type)
    assert answer.status_code == 415 and "multipart" in answer.json["detail"]
    # Had the input guard parsed the form first, a NUL in a field would be its 400.
    content_type, body = multipart([*fields, ("note", "a\x00b")])
    assert client.post(path, data=body, content_type=content_type).status_code == 415
    assert state(app) == before  # still subscribed: no event, no job, no suppression
    # The same fields as a urlencoded form are applied: the refusal is about the encoding only.
    answer = client.post(path, data=urlencode(fields), content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 200 and answer.json == {"status": "applied"}


def signature(body: bytes) -> str:
    stamp = int(time.time())
    digest = hmac.new(SIGNING.encode(), str(stamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def post_signed(client, body: bytes, content_type: str, header: str):  # type: ignore[no-untyped-def]
    return client.post(MAILCHIMP_HOOK, data=body, content_type=content_type, headers={"X-Mailchimp-Signature": header})


class TestSignedMailchimpDeliveries:
    @pytest.fixture
    def app_env(self, app_env: dict[str, str]) -> dict[str, str]:
        return {**app_env, "MAILCHIMP_WEBHOOK_SIGNING_SECRET": SIGNING}

    @pytest.mark.parametrize("signed_over", ["the multipart bytes", "an empty body"])
    def test_a_signed_multipart_delivery_is_refused_and_changes_nothing(self, app, client, mailbox, signed_over):
        subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
        before = state(app)
        content_type, body = multipart(unsubscribe_fields("anna@example.com"))
        # Over the bytes sent, or over what a form parser that has read them all leaves behind.
        header = signature(body if signed_over == "the multipart bytes" else b"")
        answer = post_signed(client, body, content_type, header)
        assert answer.status_code == 415 and "multipart" in answer.json["detail"]
        assert state(app) == before  # Anna is still subscribed

    @pytest.mark.parametrize(
        "reencode",
        [
            lambda fields: urlencode(list(reversed(fields))),
            lambda fields: urlencode(fields).replace("%5B", "%5b").replace("%5D", "%5d"),
            lambda fields: urlencode(fields).replace("%40", "@"),
            lambda fields: urlencode(fields).replace("+", "%20"),
        ],
        ids=["field order", "lower-case hex", "unencoded @", "space as %20"],
    )
    def test_a_body_whose_bytes_differ_from_the_signed_ones_is_refused(self, app, client, mailbox, reencode):
        subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
        fields = unsubscribe_fields("anna@example.com")
        signed_body = urlencode(fields).encode()
        header = signature(signed_body)
        other = reencode(fields).encode()
        assert other != signed_body  # the same form, other bytes
        before = state(app)
        answer = post_signed(client, other, "application/x-www-form-urlencoded", header)
        assert answer.status_code == 401 and answer.json["detail"] == "signature does not match"
        assert state(app) == before
        # The bytes that were signed, with the same header, are applied.
        answer = post_signed(client, signed_body, "application/x-www-form-urlencoded", header)
        assert answer.status_code == 200 and answer.json == {"status": "applied"}


# --- 3. Keys long enough outside development; files readable by the service only -------------

PRODUCTION = {"APP_ENV": "production", "PUBLIC_URL": "https://news.example.org"}


@pytest.mark.parametrize("name", ["SECRET_KEY", "SUPPRESSION_PEPPER"])
def test_production_refuses_a_key_shorter_than_32_bytes(tmp_path, name):
    env = {**PRODUCTION, "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k" * 32, "SUPPRESSION_PEPPER": "p" * 32}
    load_settings(env)  # 32 bytes are enough
    env[name] = "x" * 31
    with pytest.raises(ConfigError, match=rf"{name} must be at least 32 bytes in production \(it is 31\)"):
        load_settings(env)
    env[name] = "å" * 15  # 15 characters, 30 bytes
    with pytest.raises(ConfigError, match=name):
        load_settings(env)
    # Development and tests keep working with whatever key a developer set.
    load_settings({**env, "APP_ENV": "development"})


def test_a_short_key_stops_the_service_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(PRODUCTION, INSTANCE_PATH=str(tmp_path), SECRET_KEY="changeme", SUPPRESSION_PEPPER="p" * 40)
    result = run_flask(env, "outbox", "status")
    assert result.returncode != 0
    assert "SECRET_KEY must be at least 32 bytes in production (it is 8)" in result.stderr


def test_a_short_fallback_key_is_accepted_with_a_warning(tmp_path, caplog):
    """Refusing it would break every link it signed; the operator is told to drop it later."""
    env = {**PRODUCTION, "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k" * 40, "SUPPRESSION_PEPPER": "p" * 40}
    with caplog.at_level(logging.WARNING, logger="app.config"):
        settings = load_settings({**env, "SECRET_KEY_FALLBACKS": "o" * 40 + ",old-short-key"})
    assert settings["SECRET_KEY_FALLBACKS"] == ["o" * 40, "old-short-key"]
    assert [r.getMessage() for r in caplog.records] == [
        "SECRET_KEY_FALLBACKS entry 2 is shorter than 32 bytes: drop it once the links it signed have had their time"
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask, under which a file made without a mode is readable by all."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_database_keys_and_mail_are_readable_by_the_service_only(tmp_path, loose_umask):
    instance = tmp_path / "fresh" / "instance"  # not there yet: the service makes it
    env = {"APP_ENV": "testing", "INSTANCE_PATH": str(instance), "PUBLIC_URL": PUBLIC_URL, "PATH": os.environ["PATH"]}
    app = create_app(env=env)  # the embedded default: SQLite in the instance folder, mail to instance/mail
    try:
        client = app.test_client()
        assert sign_up(client, "munkeby", "anna@example.com", "Anna").status_code == 303
        database = instance / "consent.sqlite3"
        assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{database}"
        [confirmation] = Mailbox(instance / "mail").messages()
        assert confirmation["To"] == "anna@example.com" and link_in(confirmation, "confirm")
        named = {
            "instance": instance,
            "database": database,
            "database -wal": Path(f"{database}-wal"),  # open while the pool holds a connection
            "database -shm": Path(f"{database}-shm"),
            "secret_key": instance / "secret_key",
            "suppression_pepper": instance / "suppression_pepper",
            "ledger checkpoint": instance / "ledger-checkpoint.json",
            "mail folder": instance / "mail",
        }
        assert all(path.exists() for path in named.values()), [n for n, p in named.items() if not p.exists()]
        # Whatever else the service wrote there too (a lock file, each mail): nothing for anyone else.
        found = {str(path.relative_to(tmp_path)): mode(path) for path in [instance, *instance.rglob("*")]}
        expected = {name: 0o700 if (tmp_path / name).is_dir() else 0o600 for name in found}
        assert found == expected
    finally:
        app.extensions["after_response"].wait_idle(timeout=60)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# --- 4. No cache keeps an answer that holds personal data --------------------------------------

NO_STORE_PREFIXES = ("/dashboard", "/api/v1", "/manage/", "/unsubscribe/", "/confirm/", "/webhooks/")
PUBLIC_DOCUMENT = "/api/v1/openapi.json"


def example_paths(rule) -> list[str]:  # type: ignore[no-untyped-def]
    """The rule's URLs with made-up values: a number for a number, each choice of a choice,
    the webhook secret for a secret, and "x" for anything else."""
    choices: dict[str, list[object]] = {}
    for name, converter in rule._converters.items():
        if name == "secret":
            choices[name] = [WEBHOOK_SECRET]
        elif isinstance(converter, IntegerConverter):
            choices[name] = [1]
        elif isinstance(converter, AnyConverter):
            choices[name] = sorted(converter.items)
        else:
            choices[name] = ["x"]
    return [
        rule.build(dict(zip(choices, values, strict=True)), append_unknown=False)[1]
        for values in itertools.product(*choices.values())
    ]


def routed_to(app, path: str, rule) -> bool:  # type: ignore[no-untyped-def]
    adapter = app.url_map.bind("localhost")
    for method in rule.methods or ():
        try:
            if adapter.match(path, method=method, return_rule=True)[0] is rule:
                return True
        except HTTPException:
            continue
    return False


def test_every_answer_holding_personal_data_says_no_store(app, client, runner, mailbox):
    """Every route under those prefixes, with every method it takes, as a stranger, as staff and
    as the CRM, with made-up and with real links: a route added later is walked too."""
    anonymous, staff, crm = client, app.test_client(), make_token(runner, "read", "subscribe", "opt_out", "contact")
    create_user(runner, "boss@munkeby.se", "admin")
    assert log_in(staff, "boss@munkeby.se").status_code == 302
    sign_up(anonymous, "munkeby", "waiting@example.com", "Wera")
    welcome = subscribe_and_confirm(anonymous, mailbox, "mysoft", "reader@example.com")
    assert anonymous.post(f"{link_in(welcome, 'manage')}/request", data={"kind": "export"}).status_code == 303
    real = {
        url[len(PUBLIC_URL) :]
        for message in mailbox.messages()
        for url in re.findall(r"https?://[^\s<>\"')]+", message.get_body(("plain",)).get_content())
    }
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith(NO_STORE_PREFIXES) and r.rule != PUBLIC_DOCUMENT]
    assert {r.rule.split("/")[1] for r in rules} == {"dashboard", "api", "manage", "unsubscribe", "confirm", "webhooks"}
    answered = []
    for rule in rules:
        for path in [*example_paths(rule), *sorted(p for p in real if routed_to(app, p, rule))]:
            for method in sorted(rule.methods or ()):
                for who, browser, headers in (("stranger", anonymous, {}), ("staff", staff, {}), ("crm", client, crm)):
                    answer = browser.open(path, method=method, headers=headers)
                    answered.append(answer.status_code)
                    where = (method, path, who, answer.status_code)
                    assert answer.headers.get("Cache-Control") == "no-store", where
    assert {status // 100 for status in answered} == {2, 3, 4}  # pages, redirects and refusals alike
    assert sum(routed_to(app, p, r) for p in real for r in rules) >= 4  # confirm, unsubscribe, manage, data
    for path in ("/dashboard/no-such-page", "/api/v1/no-such-thing", "/webhooks/no-such-provider/x", "/manage/"):
        assert anonymous.get(path).headers.get("Cache-Control") == "no-store", path
    # The API's public description is the same for everyone: a cache may keep it.
    assert anonymous.get(PUBLIC_DOCUMENT).headers.get("Cache-Control") != "no-store"
