"""Dashboard imports: hostile files refused cleanly, bases limited per notice, retention facts kept."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.extensions import db
from app.models import ContactImport, Subscription

from .test_dashboard import create_user, form_token, log_in
from .test_import import MALFORMED


@pytest.fixture
def marketer(app, client, runner):  # type: ignore[no-untyped-def]
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    return client


def upload(client, body: bytes, notice: str = "mysoft", **fields: str):  # type: ignore[no-untyped-def]
    token = form_token(client.get(f"/dashboard/import?notice={notice}").get_data(as_text=True))
    data = {
        "csrf_token": token,
        "notice": notice,
        "lawful_basis": "legitimate_interest",
        "source": "https://www.firma.se/kontakt",
        "source_date": "2026-11-01",
        "file": FileStorage(io.BytesIO(body), filename="kontakter.csv", content_type="text/csv"),
        **fields,
    }
    boundary, encoded = encode_multipart(data)
    return client.post("/dashboard/import", data=encoded, content_type=f"multipart/form-data; boundary={boundary}")


def left_behind(app) -> tuple[int, list[Path]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        records = db.session.execute(select(func.count()).select_from(ContactImport)).scalar_one()
    folder = Path(app.config["INSTANCE_PATH"]) / "imports"
    return records, sorted(folder.glob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    "case",
    [
        "a header field over 64 KiB",
        "a field over 64 KiB after a whole batch",
        "Windows-1252 after a whole batch",
        "UTF-16 (NUL bytes)",
    ],
)
def test_a_malformed_upload_is_refused_with_a_clear_page_and_leaves_nothing_behind(app, marketer, case):
    content, where = MALFORMED[case]
    answer = upload(marketer, content)
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert where in page and ("UTF-8" in page or "not valid CSV" in page)
    assert left_behind(app) == (0, [])


def offered_bases(page: str) -> list[str]:
    return re.findall(r'name="lawful_basis" value="([a-z_]+)"', page)


def test_the_form_offers_only_the_bases_the_notice_allows_and_the_server_holds_to_them(app, marketer):
    assert offered_bases(marketer.get("/dashboard/import?notice=munkeby").get_data(as_text=True)) == ["consent"]
    mysoft = marketer.get("/dashboard/import?notice=mysoft").get_data(as_text=True)
    assert offered_bases(mysoft) == ["legitimate_interest", "consent"]
    assert marketer.get("/dashboard/import?notice=nobody").status_code == 404

    body = b"E-post\nada@firma.se\n"
    refused = upload(marketer, body, notice="munkeby")  # legitimate interest, forged into the form
    assert refused.status_code == 400
    assert "allows imports only on consent, not on legitimate_interest" in refused.get_data(as_text=True)
    assert left_behind(app) == (0, [])
    accepted = upload(marketer, body, notice="mysoft", lawful_basis="consent", proof="web form, export 12")
    assert accepted.status_code == 302


def test_a_consent_import_makes_subscribers_and_keeps_the_date_the_crm_added_them(app, marketer, runner):
    csv_text = (
        "E-post;Namn;Tillagd;Typ\n"
        "anna@firma.se;Anna Berg;2025-03-01;\n"
        "kalle@firma.se;Kalle Ek;;prospekt\n"
        "later@firma.se;Later;2999-01-01;\n"
    )
    answer = upload(
        marketer, csv_text.encode(), notice="munkeby", lawful_basis="consent", proof="fair sheets, binder 7"
    )
    assert answer.status_code == 302
    status_url = answer.headers["Location"]
    page = marketer.get(status_url).get_data(as_text=True)
    assert 'id="added_column"' in page
    mapping = {"email_column": "E-post", "name_column": "Namn", "added_column": "Tillagd", "relationship_column": "Typ"}
    marketer.post(status_url, data={"csrf_token": form_token(page), **mapping, "mode": "import"})
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    done = marketer.get(status_url).get_data(as_text=True)
    assert 'data-figure="added">2<' in done and 'data-figure="skipped_invalid">1<' in done  # a future date

    with app.app_context():
        held = {sub.email: sub for sub in db.session.execute(select(Subscription)).scalars()}
    assert set(held) == {"anna@firma.se", "kalle@firma.se"}
    assert held["anna@firma.se"].relationship == "subscriber"
    assert held["anna@firma.se"].created_at == datetime(2025, 3, 1)
    assert held["kalle@firma.se"].relationship == "prospect"
    exported = json.loads(runner.invoke(args=["subjects", "export", "anna@firma.se"]).stdout)
    assert exported["subscriptions"][0]["retention"]["summary"] == "kept while you subscribe"
