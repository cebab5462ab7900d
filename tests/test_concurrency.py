"""Simultaneous clicks: one opt-out each, no fork in the chain, no 5xx."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from app import ledger
from app.extensions import db
from app.models import ConsentEvent

from .support import subscribe_and_confirm, unsubscribe_path


def test_simultaneous_one_clicks_record_one_opt_out_per_subscription(app, client, mailbox):
    paths = [
        unsubscribe_path(subscribe_and_confirm(client, mailbox, slug, f"c{i}@example.com"))
        for i, slug in enumerate(["munkeby", "mysoft", "munkeby", "mysoft"])
    ]

    def click(path: str) -> int:
        with app.test_client() as fresh:  # a mail client: no cookies, own connection
            return fresh.post(path, data={"List-Unsubscribe": "One-Click"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(click, paths * 10))
    assert statuses == [200] * 40
    with app.app_context():
        opt_outs = db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == "opted_out")
        ).scalar_one()
        assert opt_outs == 4
        assert ledger.verify(db.session).ok
