"""Progress of long commands: a bar on a terminal, a few summary lines in a log."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.progress import Progress

from .support import REPO, run_flask


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_bar_is_redrawn_in_place_with_the_rate_and_the_time_left(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    screen = Terminal()
    with Progress("import", total=10_000_000, unit="bytes", stream=screen) as bar:
        for _ in range(4):
            clock[0] += 1.0
            bar.advance(1_000_000)
    drawn = screen.getvalue()
    assert drawn.count("\n") == 1  # only the closing summary ends a line
    redraws = drawn.split("\r")[1:-1]
    assert len(redraws) == 4
    assert redraws[-1].startswith("[############..................] import: 4.0 MB of 10.0 MB (40%)")
    assert "1.0 MB/s" in redraws[-1] and "6s left" in redraws[-1]
    assert drawn.rstrip().endswith("import: 4.0 MB in 4s (1.0 MB/s)\x1b[K")


def test_in_a_log_a_summary_line_comes_every_few_seconds_not_one_per_batch(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    with Progress("purge", total=20_000, unit="rows", stream=log) as bar:
        for _ in range(160):  # 160 batches of 125 rows over 20 s
            clock[0] += 0.125
            bar.advance(125)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 4 <= len(lines) <= 6, lines  # one every 5 s, and the final one
    assert lines[0].startswith("purge: 5,000 rows of 20,000 rows (25%) 1,000 rows/s 15s left")
    assert lines[-1] == "purge: 20,000 rows in 20s (1,000 rows/s)"


def test_an_unknown_total_shows_the_count_and_the_rate_only(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = Progress("backup", total=None, unit="pages", stream=log)
    clock[0] = 6.0
    bar.advance(600)
    assert log.getvalue() == "backup: 600 pages 100 pages/s\n"


def _contacts(path: Path, count: int) -> Path:
    path.write_text("email,name\n" + "".join(f"person{i}@example.net,P {i}\n" for i in range(count)))
    return path


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_real_import_logs_its_summary_not_a_line_per_batch(app, app_env, tmp_path):
    csv = _contacts(tmp_path / "contacts.csv", 3000)
    result = run_flask(app_env, "contacts", "import", str(csv), "--notice", "mysoft", "--source", "fair 2026")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("import:")]
    assert len(lines) <= 3 and lines[-1].startswith("import: 0.1 MB in "), result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_a_real_terminal_the_chain_check_draws_a_bar(app, app_env, tmp_path):
    csv = _contacts(tmp_path / "contacts.csv", 2000)
    assert run_flask(app_env, "contacts", "import", str(csv), "--notice", "mysoft", "--source", "x").returncode == 0
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "ledger", "verify"],
        cwd=REPO, env=app_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    assert process.returncode == 0, seen
    assert b"\rverify: 2,000 events in " in seen and b"\x1b[K" in seen
