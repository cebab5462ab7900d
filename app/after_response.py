"""Work a web process does once it has answered: subscriber mail, and chaining evidence.

A request that mails commits its job with its state change, and the answer
goes out without waiting for the mail server: a slow SMTP server must not slow
a sign-up, and the time an answer takes must not tell a stranger whether an
address was already subscribed (that one sends nothing). The jobs a request
committed are handed, when the request ends, to one sender thread per process,
which claims and runs each like the outbox worker does. If the process dies
first, the job is still in the outbox and ``outbox run`` sends it; the claim
makes sure only one of them does.

The same thread chains the evidence a request wrote (``ledger.sequence_pending``):
a request commits its events pending and never waits for the chain's head. Many
requests' calls for it while one is queued make one run.

Outside a request (CLI commands, the worker itself) there is no answer to
protect, and the job runs at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable

from flask import Flask, current_app, g, has_request_context

log = logging.getLogger(__name__)

DRAIN_AT_EXIT_SECONDS = 10.0


class Sender:
    """One daemon thread per process (started on first use, and again after a fork)."""

    def __init__(self, app: Flask, run: Callable[[int], None]) -> None:
        self.app = app
        self.run = run
        self._jobs: queue.SimpleQueue[int | Callable[[], object]] = queue.SimpleQueue()
        self._busy = 0
        self._sequencing_queued = False
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, job_id: int) -> None:
        with self._idle:
            self._ensure_thread()
            self._busy += 1
        self._jobs.put(job_id)

    def submit_sequencing(self, sequence: Callable[[], object]) -> None:
        """Chain pending evidence on this thread; a run already queued (not yet started) covers this call."""
        with self._idle:
            self._ensure_thread()
            if self._sequencing_queued:
                return
            self._sequencing_queued = True
            self._busy += 1
        self._jobs.put(sequence)

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._start()

    def _start(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._busy = 0
        self._sequencing_queued = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._work, name="after-response-sender", daemon=True)
        self._thread.start()
        atexit.register(self.drain, DRAIN_AT_EXIT_SECONDS)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            try:
                if isinstance(job, int):
                    with self.app.app_context():
                        self.run(job)
                else:
                    with self._idle:
                        self._sequencing_queued = False  # evidence committed from now on needs another run
                    with self.app.app_context():
                        job()
            except Exception:  # the outbox keeps the job, the ledger the evidence; the worker picks both up
                if isinstance(job, int):
                    log.exception("sending outbox job %s after the response failed; the worker will retry", job)
                else:
                    log.exception("chaining evidence after the response failed; the worker will chain it")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every job handed over so far has run; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def drain(self, timeout: float) -> None:
        """At process exit: let the jobs already handed over finish, for at most ``timeout``."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
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


def schedule(job_id: int, run_now: Callable[[int], None]) -> None:
    """Run a committed job after this request's answer; at once when there is no request."""
    if has_request_context() and "after_response" in current_app.extensions:
        g.setdefault("after_response_jobs", []).append(job_id)
    else:
        run_now(job_id)


def schedule_sequencing(sequence: Callable[[], object]) -> None:
    """Chain the evidence this request committed after its answer; at once when there is no request."""
    if has_request_context() and "after_response" in current_app.extensions:
        g.after_response_sequencing = sequence
    else:
        sequence()
