"""What a stranger can send: the contact import's large body only after login, as a marketer or admin."""

from __future__ import annotations

import io
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.extensions import db
from app.models import ContactImport

from .support import Service, free_port
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
@pytest.mark.parametrize("who", ["anonymous", "viewer"])
def test_a_stranger_or_viewer_cannot_send_the_import_more_than_one_megabyte(app, client, runner, who, chunked):
    if who == "viewer":
        create_user(runner, "vera@munkeby.se", "viewer")
        assert log_in(client, "vera@munkeby.se").status_code == 302
    content_type, body = csv_upload(3 * MB)
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
