"""Logs an operator can ship and search, that hold no address, token or secret.

``LOG_FORMAT=json`` gives one JSON object a line with the request's id, route template,
status and duration; the request id comes from the proxy when it is a plain token. The
suite-wide audit (tests/log_audit.py) is itself shown to fail a run that logs an address.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.logs import JsonFormatter, RequestContext, gunicorn_logconfig

from .support import REPO, SmtpSink, free_port, serving, subscribe_and_confirm, unsubscribe_path

ADDRESS = "logged.person@example.org"


@pytest.fixture
def json_lines(app) -> Iterator[io.StringIO]:  # type: ignore[no-untyped-def]
    """What the service's JSON handler writes during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_request_ends_in_one_json_line_with_its_route_template_never_its_token(app, client, mailbox, json_lines):
    message = subscribe_and_confirm(client, mailbox, "munkeby", ADDRESS)
    path = unsubscribe_path(message)
    token = path.rsplit("/", 1)[1]
    response = client.get(path, headers={"X-Request-ID": "abc123def456"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc123def456"
    finished = [r for r in _records(json_lines) if r["message"].startswith("request finished")]
    last = finished[-1]
    assert last["route"] == "/unsubscribe/<token>" and last["method"] == "GET" and last["status"] == 200
    assert last["request_id"] == "abc123def456" and last["duration_ms"] >= 0
    assert {"time", "level", "logger"} <= last.keys() and last["time"].endswith("+00:00")
    text = json_lines.getvalue()
    assert token not in text and ADDRESS not in text


@pytest.mark.parametrize("given", ["semi;colon", "x" * 500, "bad id with spaces", ""])
def test_a_hostile_or_missing_request_id_is_replaced_by_a_new_one(app, client, given):
    response = client.get("/", headers={"X-Request-ID": given} if given else {})
    request_id = response.headers["X-Request-ID"]
    assert request_id != given and len(request_id) == 32 and request_id.isalnum()


def test_an_exception_is_logged_by_its_class_and_frames_never_its_message(json_lines):
    log = logging.getLogger("app.test")
    try:
        raise ValueError(f"the provider refused {ADDRESS}")
    except ValueError:
        log.exception("a job failed")
    [record] = _records(json_lines)
    assert record["exc_type"] == "ValueError" and record["exc_frames"]
    assert ADDRESS not in json_lines.getvalue()


def test_a_mail_written_to_the_folder_is_logged_by_its_file_not_its_links(app, client, mailbox, caplog):
    caplog.set_level(logging.INFO, logger="app.mail")
    message = subscribe_and_confirm(client, mailbox, "munkeby", ADDRESS)
    token = unsubscribe_path(message).rsplit("/", 1)[1]
    assert "mail written to" in caplog.text and ".eml" in caplog.text
    assert token not in caplog.text and ADDRESS not in caplog.text


def test_under_gunicorn_every_line_on_stderr_is_json(app, app_env: dict[str, str], tmp_path: Path):
    smtp = SmtpSink()
    smtp.start()
    port = free_port()
    logconfig = tmp_path / "logconfig.json"
    logconfig.write_text(json.dumps(gunicorn_logconfig("json")))
    env = {**app_env, "LOG_FORMAT": "json", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
           "PUBLIC_URL": f"http://127.0.0.1:{port}", "GUNICORN_CMD_ARGS": f"--log-config-json {logconfig}"}
    log = tmp_path / "gunicorn-json.log"
    try:
        with serving(env, port, log) as server:
            page = requests.get(server.url + "/munkeby/subscribe", timeout=10)
            assert page.status_code == 200
            assert requests.get(server.url + "/unsubscribe/not-a-real-token", timeout=10).status_code in (400, 404)
    finally:
        smtp.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    routes = {r.get("route") for r in records}
    assert "/<slug>/subscribe" in routes and "/unsubscribe/<token>" in routes
    assert any(r["logger"].startswith("gunicorn") for r in records)  # gunicorn's own lines, in the same format
    assert "not-a-real-token" not in log.read_text()


LEAKS = {
    "e-mail address": ADDRESS,
    "link path": "/unsubscribe/munkeby~" + "A" * 22 + "~" + "B" * 27,
    "link token": "mysoft~" + "C" * 22 + "~" + "D" * 27,
    "API token": "cst_" + "E" * 43,
}


@pytest.mark.parametrize("pattern", sorted(LEAKS))
def test_the_log_audit_fails_a_run_whose_logs_hold_personal_data_or_a_token(pattern: str, tmp_path: Path):
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            import logging

            def test_leaks():
                logging.getLogger("app.leaky").warning("handled %s", "{LEAKS[pattern]}")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.log_audit",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert f"test_leaks: {pattern} (" in result.stdout
    assert LEAKS[pattern] not in result.stdout  # the report itself leaks nothing
