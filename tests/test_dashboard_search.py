"""The subscriber search: every address with the prefix, in address order, page by page."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import delete, insert

from app.addresses import email_hash
from app.extensions import db
from app.models import Subscription, utcnow

from .test_dashboard import marketer  # noqa: F401 - the logged-in client fixture

NEXT = re.compile(r'rel="next" href="[^"]*after=(\d+)')
LISTED = re.compile(r'href="/dashboard/subscribers/[0-9a-f]{32}[^"]*">([^<]+)<')


def hold(*addresses: str, notice: str = "munkeby") -> None:
    now = utcnow()
    rows = [
        {
            "ref": uuid.uuid4().hex,
            "notice": notice,
            "email": address,
            "email_hash": email_hash(address),
            "status": "subscribed",
            "source": "test",
            "notice_version": "0" * 64,
            "created_at": now,
            "updated_at": now,
        }
        for address in addresses
    ]
    db.session.execute(insert(Subscription), rows)
    db.session.commit()


def search_pages(client, query: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    pages, after = [], ""
    while True:
        page = client.get(f"/dashboard/subscribers?{query}{after}").get_data(as_text=True)
        pages.append(LISTED.findall(page))
        found = NEXT.search(page)
        if found is None:
            return pages
        after = f"&after={found.group(1)}"


def test_a_search_pages_through_every_match_in_address_order(app, marketer):  # noqa: F811
    # Punctuation and digits around the prefix: a locale collation would order "anna.berg"
    # among "annaberg..." and lose some of them from a prefix range.
    matching = [f"anna{i:03d}@firma.se" for i in range(60)] + ["anna.berg@firma.se", "anna_k@firma.se", "anna@ab.se"]
    with app.app_context():
        hold(*reversed(matching), "annb@firma.se", "ann@firma.se", "bo.anna@firma.se")
        hold("anna.mysoft@firma.se", notice="mysoft")
    pages = search_pages(marketer, "q=anna&notice=munkeby")
    assert [len(page) for page in pages] == [50, 13]
    assert [address for page in pages for address in page] == sorted(matching)

    # Capitals and spaces in the box are how the address is stored: lower case, trimmed.
    assert search_pages(marketer, "q=+ANNA.B")[0] == ["anna.berg@firma.se"]
    assert sorted(search_pages(marketer, "q=anna.")[0]) == ["anna.berg@firma.se", "anna.mysoft@firma.se"]


def test_a_search_whose_last_row_went_away_starts_over(app, marketer):  # noqa: F811
    with app.app_context():
        hold(*[f"eva{i:03d}@firma.se" for i in range(55)])
    first = marketer.get("/dashboard/subscribers?q=eva").get_data(as_text=True)
    after = NEXT.search(first).group(1)
    with app.app_context():
        db.session.execute(delete(Subscription).where(Subscription.id == int(after)))
        db.session.commit()
    again = marketer.get(f"/dashboard/subscribers?q=eva&after={after}")
    assert again.status_code == 200
    assert LISTED.findall(again.get_data(as_text=True))[0] == "eva000@firma.se"
