"""The answer never waits for the mail server.

A sign-up answers once its unit of work has committed; the confirmation mail goes
out afterwards, from the web process. So a mail server that takes half a second
to accept a message slows no answer, and the time an answer takes does not tell a
stranger whether the address was new, pending or already subscribed (the last
sends nothing). Measured over real HTTP against a threaded server, as a client
outside would time it.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import insert
from werkzeug.serving import make_server

from app.addresses import email_hash
from app.extensions import db
from app.models import Subscription, utcnow

from .support import SmtpSink

SMTP_DELAY = 0.5
ROUNDS = 24  # four of each order of the three kinds


class SlowSmtpSink(SmtpSink):
    """An SMTP server that takes ``SMTP_DELAY`` seconds to accept each message."""

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        await asyncio.sleep(SMTP_DELAY)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_smtp() -> Iterator[SlowSmtpSink]:
    sink = SlowSmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def app_env(app_env: dict[str, str], slow_smtp: SlowSmtpSink) -> dict[str, str]:
    return {
        **app_env,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(slow_smtp.port),
        "SUBSCRIBE_RATE_LIMIT": "100000 per hour",
    }


@pytest.fixture
def served(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def subscribed(app, addresses: list[str]) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        version = app.extensions["notices"]["munkeby"].version
        now = utcnow()
        rows = [
            {
                "notice": "munkeby",
                "email": a,
                "email_hash": email_hash(a),
                "status": "subscribed",
                "source": "test",
                "notice_version": version,
                "confirmed_at": now,
            }
            for a in addresses
        ]
        db.session.execute(insert(Subscription), rows)
        db.session.commit()


@pytest.mark.e2e  # real HTTP against a threaded server, real SMTP: 24 timed rounds
def test_sign_up_answers_in_the_same_time_for_new_pending_and_subscribed_addresses(app, served, slow_smtp):
    form = requests.Session()
    page = form.get(f"{served}/munkeby/subscribe", timeout=10).text
    token = page.split('name="csrf_token" type="hidden" value="', 1)[1].split('"', 1)[0]

    def sign_up(address: str) -> float:
        data = {"csrf_token": token, "email": address, "name": "Anna", "consent": "y"}
        started = time.perf_counter()
        answer = form.post(f"{served}/munkeby/subscribe", data=data, allow_redirects=False, timeout=10)
        elapsed = time.perf_counter() - started
        assert answer.status_code == 303
        return elapsed

    pending = [f"pending{i}@firma.se" for i in range(ROUNDS)]
    for address in pending:
        sign_up(address)
    subscribed(app, [f"member{i}@firma.se" for i in range(ROUNDS)])
    sign_up("warm-up@firma.se")

    times: dict[str, list[float]] = {"new": [], "pending": [], "subscribed": []}
    orders = list(itertools.permutations(("new", "pending", "subscribed")))
    for i in range(ROUNDS):  # interleaved, so a slow moment of the machine hits all three alike
        addresses = {"new": f"new{i}@firma.se", "pending": pending[i], "subscribed": f"member{i}@firma.se"}
        # Each kind follows each other kind equally often. The mail a new or pending sign-up
        # sends after its answer may still be running when the next answer is timed (on a busy
        # machine it will be); in a fixed order it would always count against the same kind.
        for kind in orders[i % len(orders)]:
            times[kind].append(sign_up(addresses[kind]))
            time.sleep(0.02)  # let that work leave the CPU where it can

    medians = {kind: statistics.median(values) for kind, values in times.items()}
    # Kinds compared in pairs, answer against answer of the same round: a machine that slows
    # down for a while (other processes on its cores) slows a round's answers alike, so the
    # ratio keeps what tells two kinds apart and drops what the machine did meanwhile.
    ratios = {
        f"{a}/{b}": statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
        for a, b in itertools.combinations(times, 2)
    }
    shown = {kind: f"{m * 1000:.1f} ms" for kind, m in medians.items()}
    shown.update({pair: f"{ratio:.2f}" for pair, ratio in ratios.items()})
    print(f"sign-up answer medians with a {SMTP_DELAY * 1000:.0f} ms SMTP server:", shown)
    assert max(medians.values()) < SMTP_DELAY / 2, shown  # well under one mail server round
    assert all(1 / 1.2 <= ratio <= 1.2 for ratio in ratios.values()), shown

    # And the mail did go out: a first confirmation for each new and pending address
    # (and a second for each pending one), none for the subscribed.
    assert app.extensions["after_response"].wait_idle(timeout=120)
    sent = [rcpt for _, [rcpt], _ in slow_smtp.received]
    assert sorted(sent) == sorted(
        [*(f"new{i}@firma.se" for i in range(ROUNDS)), *(pending * 2), "warm-up@firma.se"]
    )
