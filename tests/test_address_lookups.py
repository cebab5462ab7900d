"""Every lookup of an address reaches its rows through an index of the address, on SQLite too.

SQLite keeps no statistics (the service never runs ``ANALYZE``), so it picks an index
from the shape of a condition alone, and an equality on the notice looks as good to it
as the address's own key: a lookup written as "this notice and this address range" then
walks every subscription of the notice, a million rows on a large list. Here the service
runs its paths that find a person by address (an old link after the person was deleted
and signed up again, the data-rights page of such a link, a provider deletion checked
against a newer sign-up, an import), every statement it sends with the address hash in
the condition is explained as it was sent, and none may walk the table or a notice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .fakes.mailchimp import FakeMailchimp
from .support import link_in, plans_with, provider_env, statements_sent, subscribe_and_confirm, unsubscribe_path

ADDRESS_LOOKUP = re.compile(r"\bFROM subscriptions\b.*\bWHERE\b.*\bemail_hash\b", re.DOTALL | re.IGNORECASE)


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    """SQLite only: PostgreSQL plans from statistics, and its plans are checked by the benchmarks."""
    return sqlite_database_url


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp)}


@pytest.fixture
def sent(app) -> Iterator[list[tuple[str, object]]]:  # type: ignore[no-untyped-def]
    """The address lookups the service sends while the test runs: (statement, parameters)."""
    with statements_sent(app, ADDRESS_LOOKUP) as seen:
        yield seen


def walks(app, lookups: list[tuple[str, object]]) -> list[str]:  # type: ignore[no-untyped-def]
    """The lookups whose plan reads subscriptions by a whole scan or by a notice's index."""
    return plans_with(app, lookups, r"SCAN subscriptions\b|\bix_subscriptions_notice")


def test_an_old_link_after_delete_and_sign_up_again_finds_the_person_by_the_address_key(app, client, mailbox, sent):
    first = subscribe_and_confirm(client, mailbox, "mysoft", "again@example.com")
    old_link, old_manage = unsubscribe_path(first), link_in(first, "manage")
    assert client.post(old_link, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # Mysoft deletes
    subscribe_and_confirm(client, mailbox, "mysoft", "again@example.com")
    page = client.get(old_manage + "?lang=en")
    assert page.status_code == 200 and "again@example.com" in page.get_data(as_text=True)
    assert client.post(old_link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(sent) >= 2  # the link's reads by the address's tag, at least
    assert walks(app, sent) == []


def test_a_provider_deletion_and_an_import_look_addresses_up_by_their_key(app, client, mailbox, runner, sent, tmp_path):
    for address in ("anna@example.com", "bo@example.com", "cai@example.com"):
        subscribe_and_confirm(client, mailbox, "munkeby", address)
        assert runner.invoke(args=["subjects", "erase", address]).exit_code == 0
    # The deletions go to Mailchimp in one batch, checked first for newer sign-ups of those addresses.
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\nper@firma.se\nanna@example.com\n")
    imported = runner.invoke(
        args=["contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
              "--source", "https://www.firma.se/kontakt"]
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    statements = " ".join(statement for statement, _ in sent)
    assert "IN (SELECT value FROM json_each" in statements  # the import's checks were among them
    assert walks(app, sent) == []
