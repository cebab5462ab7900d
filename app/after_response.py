"""Work a web process does once it has answered: subscriber mail, and chaining evidence.

A request that mails commits its job with its state change, and the answer
goes out without waiting for the mail server: a slow SMTP server must not slow
a sign-up, and the time an answer takes must not tell a stranger whether an
address was already subscribed (that one sends nothing). The jobs a request
committed are handed, when the request ends, to one sender thread per process,
which claims and runs each like the outbox worker does. If the process dies
first, the job is still in the outbox and ``outbox run`` sends it; the claim
makes sure only one of them does.

A second thread chains the evidence requests wrote (``ledger.sequence_pending``):
a request commits its events pending and never waits for the chain's head. Runs
start at most every ``SEQUENCE_GAP_SECONDS``, so under load one run chains what
many requests wrote (a run costs about as much as chaining ten events; bench/README.md),
and a run waiting for its turn covers every request that asks meanwhile.

Outside a request (CLI commands, the worker itself) there is no answer to
protect, and the job runs at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

from flask import Flask, current_app, g, has_request_context

log = logging.getLogger(__name__)

DRAIN_AT_EXIT_SECONDS = 10.0
SEQUENCE_GAP_SECONDS = 0.1  # between the starts of two chaining runs of one process


class Sender:
    """Two daemon threads per process, one for mail and one for the chain (started on first
    use, and again after a fork)."""

    def __init__(self, app: Flask, run: Callable[[int], None]) -> None:
        self.app = app
        self.run = run
        self._jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._busy = 0
        self._sequencing_queued = False
        self._sequence: Callable[[], object] | None = None
        self._last_sequenced = 0.0
        self._hurry = 0  # callers of wait_idle: a run waiting for its gap starts at once
        self._idle = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._pid = 0

    def submit(self, job_id: int) -> None:
        with self._idle:
            self._ensure_thread()
            self._busy += 1
        self._jobs.put(job_id)

    def submit_sequencing(self, sequence: Callable[[], object]) -> None:
        """Chain pending evidence on the chaining thread; a run not yet started covers this call."""
        with self._idle:
            self._ensure_thread()
            self._sequence = sequence
            if self._sequencing_queued:
                return
            self._sequencing_queued = True
            self._busy += 1
            self._idle.notify_all()

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid() or not all(thread.is_alive() for thread in self._threads):
            self._start()

    def _start(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._busy = 0
        self._sequencing_queued = False
        self._hurry = 0
        self._pid = os.getpid()
        self._threads = [
            threading.Thread(target=self._work, name="after-response-sender", daemon=True),
            threading.Thread(target=self._chain, name="after-response-chain", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        atexit.register(self.drain, DRAIN_AT_EXIT_SECONDS)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job_id = jobs.get()
            try:
                with self.app.app_context():
                    self.run(job_id)
            except Exception:  # the outbox keeps the job; the worker retries it
                log.exception("sending outbox job %s after the response failed; the worker will retry", job_id)
            finally:
                self._done()

    def _chain(self) -> None:
        while True:
            with self._idle:
                self._idle.wait_for(lambda: self._sequencing_queued)
                # Let more requests' evidence gather, unless someone waits for the work to be done.
                due = self._last_sequenced + SEQUENCE_GAP_SECONDS
                self._idle.wait_for(partial(self._may_chain, due), max(0.0, due - time.monotonic()))
                self._sequencing_queued = False  # evidence committed from now on needs another run
                sequence = self._sequence
                self._last_sequenced = time.monotonic()
            try:
                if sequence is not None:
                    with self.app.app_context():
                        sequence()
            except Exception:  # the evidence is committed; the worker or the next run chains it
                log.exception("chaining evidence after the response failed; the worker will chain it")
            finally:
                self._done()

    def _may_chain(self, due: float) -> bool:
        return self._hurry > 0 or time.monotonic() >= due

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every job handed over so far has run, a chaining run waiting for its gap
        started at once; False on timeout."""
        with self._idle:
            self._hurry += 1
            self._idle.notify_all()
            try:
                return self._idle.wait_for(lambda: self._busy == 0, timeout)
            finally:
                self._hurry -= 1

    def drain(self, timeout: float) -> None:
        """At process exit: let the jobs already handed over finish, for at most ``timeout``."""
        if self._threads and self._pid == os.getpid() and all(thread.is_alive() for thread in self._threads):
            if not self.wait_idle(timeout):
                log.warning("process exiting with mail still unsent; the outbox worker will send it")


def init_app(app: Flask, run: Callable[[int], None]) -> None:
    sender = Sender(app, run)
    app.extensions["after_response"] = sender

    @app.teardown_request
    def hand_over(_exc: BaseException | None) -> None:
        for job_id in g.pop("after_response_jobs", ()):
            sender.submit(job_id)
        sequence = g.pop("after_response_sequencing", None)
        if sequence is not None:
            sender.submit_sequencing(sequence)


def later() -> bool:
    """Whether work handed to ``schedule`` now waits for a request's answer (else it runs at once)."""
    return has_request_context() and "after_response" in current_app.extensions


def schedule(job_id: int, run_now: Callable[[int], None]) -> None:
    """Run a committed job after this request's answer; at once when there is no request."""
    if later():
        g.setdefault("after_response_jobs", []).append(job_id)
    else:
        run_now(job_id)


def schedule_sequencing(sequence: Callable[[], object]) -> None:
    """Chain the evidence this request committed after its answer; at once when there is no request."""
    if has_request_context() and "after_response" in current_app.extensions:
        g.after_response_sequencing = sequence
    else:
        sequence()
