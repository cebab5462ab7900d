"""Progress of long commands (import, purge, chain check, backup) on stderr.

On a terminal: one bar redrawn in place, with the rate and the time left. Otherwise (a
log file, systemd's journal): a summary line every few seconds and one at the end, never
a line per batch. Each update is also a metric (``consent_task_done{task}``), so Prometheus
sees a timer's run going on.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import IO

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1  # at most ten redraws a second on a terminal
SUMMARY_SECONDS = 5.0  # a line every five seconds elsewhere


def _amount(count: float, unit: str) -> str:
    if unit == "bytes":
        return f"{count / 1_000_000:,.1f} MB"
    return f"{count:,.0f} {unit}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """``with Progress("import", total=size, unit="bytes") as p: p.advance(n)``.

    ``total`` None: no percentage and no time left, only the count and the rate.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "rows",
        stream: IO[str] | None = None,
        every: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.every = every if every is not None else (REDRAW_SECONDS if self.terminal else SUMMARY_SECONDS)
        self.shown_at = self.started
        self.closed = False

    def advance(self, count: int) -> None:
        self.set(self.done + count)

    def set(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.shown_at >= self.every:
            self.shown_at = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        """Where the work stands: done (of total, percent), the rate, the time left."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [self.label + ":", _amount(self.done, self.unit)]
        if self.total:
            share = min(self.done / self.total, 1.0)
            parts[1] += f" of {_amount(self.total, self.unit)} ({share:.0%})"
        parts.append(f"{_amount(rate, self.unit)}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{_duration((self.total - self.done) / rate)} left")
        return " ".join(parts)

    def _show(self, now: float) -> None:
        self._publish()
        if self.terminal:
            bar = ""
            if self.total:
                filled = int(BAR_WIDTH * min(self.done / self.total, 1.0))
                bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
            self.stream.write("\r" + bar + self.line(now) + "\033[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def _publish(self) -> None:
        try:
            from .metrics import record_progress

            record_progress(self.label, self.done, self.total)
        except Exception:  # the command's work matters more than its metric
            logging.getLogger(__name__).debug("progress not recorded as a metric", exc_info=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._publish()
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        summary = (
            f"{self.label}: {_amount(self.done, self.unit)} in {_duration(elapsed)} "
            f"({_amount(rate, self.unit)}/s)"
        )
        self.stream.write(("\r" + summary + "\033[K\n") if self.terminal else summary + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
