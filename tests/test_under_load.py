"""The service under gunicorn with several workers: rate limits shared through Redis, and a
thousand one-click unsubscribes at once."""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, insert, select

from app import ledger
from app.addresses import email_hash
from app.extensions import db
from app.mail import unsubscribe_link
from app.models import ConsentEvent, OutboxJob, Subscription, utcnow

from .support import Service, free_port

pytestmark = pytest.mark.e2e
def serve(app_env: dict[str, str], tmp_path: Path, workers: int = 2, **extra: str) -> Service:
    port = free_port()
    env = {**app_env, "PUBLIC_URL": f"http://127.0.0.1:{port}", **extra}
    tmp_path.mkdir(parents=True, exist_ok=True)
    server = Service(env, port, tmp_path / "gunicorn.log", workers=workers)
    server.wait_until_healthy()
    return server


def test_two_workers_share_the_rate_limit_through_redis(app, app_env, tmp_path, redis_url):
    """Two gunicorn processes (as two workers or two hosts would be), asked in turn: the
    limit holds across both only because they count in one store."""
    limit = 6
    shared = {"RATELIMIT_STORAGE_URL": redis_url, "SUBSCRIBE_RATE_LIMIT": f"{limit} per hour"}
    servers = [serve(app_env, tmp_path / f"web{i}", workers=1, **shared) for i in range(2)]
    try:
        statuses = []
        for i in range(limit + 1):
            server = servers[i % 2]
            browser = requests.Session()
            page = browser.get(server.url + "/munkeby/subscribe").text
            token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
            answer = browser.post(
                server.url + "/munkeby/subscribe",
                data={"csrf_token": token, "email": f"r{i}@example.com", "consent": "y"},
                allow_redirects=False,
            )
            statuses.append(answer.status_code)
        assert statuses == [303] * limit + [429]
    finally:
        for server in servers:
            server.stop()


def subscribers(app, count: int) -> list[str]:
    """``count`` confirmed subscribers, half under each notice; answers their unsubscribe paths."""
    now = utcnow()
    with app.app_context():
        rows, paths = [], []
        for i in range(count):
            slug = ("munkeby", "mysoft")[i % 2]
            address = f"load{i}@example.com"
            version = app.extensions["notices"][slug].version
            rows.append(
                {
                    "ref": uuid.uuid4().hex,
                    "notice": slug,
                    "email": address,
                    "email_hash": email_hash(address),
                    "status": "subscribed",
                    "source": "test",
                    "notice_version": version,
                    "created_at": now,
                    "confirmed_at": now,
                    "updated_at": now,
                }
            )
            link = unsubscribe_link(slug, rows[-1]["ref"], rows[-1]["email_hash"])
            paths.append("/" + link.split("://", 1)[1].split("/", 1)[1])
        db.session.execute(insert(Subscription), rows)
        db.session.commit()
        db.session.remove()
    return paths


def test_a_thousand_simultaneous_one_clicks_on_a_hundred_people(app, app_env, tmp_path):
    paths = subscribers(app, 100)
    server = serve(app_env, tmp_path, workers=4)
    clicks = paths * 10
    random.Random(7).shuffle(clicks)

    def click(path: str) -> int:
        answer = requests.post(
            server.url + path,
            data={"List-Unsubscribe": "One-Click"},
            allow_redirects=False,
            timeout=60,
        )
        return answer.status_code

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = Counter(pool.map(click, clicks))
    finally:
        server.stop()
    assert statuses == {200: 1000}
    with app.app_context():
        per_person = db.session.execute(
            select(ConsentEvent.subscription_ref, func.count())
            .where(ConsentEvent.type == "opted_out")
            .group_by(ConsentEvent.subscription_ref)
        ).all()
        assert len(per_person) == 100 and all(n == 1 for _ref, n in per_person)
        jobs = db.session.execute(select(func.count()).select_from(OutboxJob)).scalar_one()
        assert jobs == 100  # one provider job each: an opt-out (Munkeby) or a delete (Mysoft)
        held = Counter(db.session.execute(select(Subscription.notice, Subscription.status)).all())
        assert held == {("munkeby", "unsubscribed"): 50}  # Mysoft's 50 are deleted
        assert ledger.verify(db.session).ok  # one chain, no fork
