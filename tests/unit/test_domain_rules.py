"""The domain rules as tables: each row a state before, an action, and what is held after.

The notices' promises are the expectations: Munkeby keeps an unsubscribed person as
unsubscribed until retention ends, Mysoft deletes them; a provider that reports an
opt-out needs no telling, one that holds a deleted person must forget them; an opt-out
is never lost, a sign-up older than an opt-out never undoes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from app import consent, retention
from app.addresses import email_hash
from app.extensions import db
from app.models import Subscription, Suppression, utcnow
from app.notices import get_notice

from .conftest import Held, held, hold, last_seq

ANNA = "anna@example.com"
BERIT = "berit@example.com"
NOW = datetime(2026, 6, 1, 12, 0)
DAY = timedelta(days=1)


def _notice(slug: str) -> Any:
    found = get_notice(slug)
    assert found is not None
    return found


def _suppress(slug: str, email: str) -> None:
    db.session.add(Suppression(notice=slug, email_hash=email_hash(email), reason="opt_out"))
    db.session.commit()


def _before(slug: str, state: str) -> None:
    """Put ANNA in ``state`` under the notice: a subscription, a suppression, or nothing."""
    if state == "subscribed":
        hold(slug, ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    elif state == "pending":
        hold(slug, ANNA, "pending")
    elif state == "unsubscribed":
        hold(slug, ANNA, "unsubscribed", confirmed_at=utcnow() - 2 * DAY, unsubscribed_at=utcnow() - DAY)
        _suppress(slug, ANNA)
    else:
        assert state == "unknown"


# -- the notice's opt-out rule ---------------------------------------------------------------------


def test_the_shipped_notices_promise_what_their_text_says(domain: Any) -> None:
    munkeby, mysoft = _notice("munkeby"), _notice("mysoft")
    assert (munkeby.opt_out_rule, munkeby.deletes_on_opt_out) == ("unsubscribe", False)
    assert (mysoft.opt_out_rule, mysoft.deletes_on_opt_out) == ("delete", True)


OPT_OUT = [
    # notice, before, answer, after
    ("munkeby", "subscribed", "opted_out", Held("unsubscribed", True, ("unsubscribe",), ("opted_out",))),
    ("munkeby", "pending", "opted_out", Held("unsubscribed", True, (), ("opted_out",))),
    ("munkeby", "unsubscribed", "already_opted_out", Held("unsubscribed", True, (), ())),
    ("munkeby", "unknown", "opted_out", Held(None, True, (), ("opted_out",))),
    ("mysoft", "subscribed", "opted_out", Held(None, True, ("delete",), ("opted_out", "personal_data_deleted"))),
    ("mysoft", "pending", "opted_out", Held(None, True, (), ("opted_out", "personal_data_deleted"))),
    ("mysoft", "unknown", "opted_out", Held(None, True, (), ("opted_out",))),
]


@pytest.mark.parametrize(("slug", "before", "answer", "after"), OPT_OUT)
def test_an_opt_out_follows_the_notices_rule(domain: Any, slug: str, before: str, answer: str, after: Held) -> None:
    _before(slug, before)
    since = last_seq()
    facts = consent.Facts(channel="api", actor="crm")
    assert consent.opt_out_address(_notice(slug), ANNA, facts) == answer
    assert held(slug, ANNA, since) == after


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_a_link_keeps_working_after_the_opt_out_and_records_it_once(domain: Any, slug: str) -> None:
    sub = hold(slug, ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    link = {"n": slug, "s": sub.ref, "a": sub.email_hash[:16]}
    facts = consent.Facts(channel="one-click")
    assert consent.unsubscribe(link, facts)
    first = held(slug, ANNA)
    assert consent.unsubscribe(link, facts)  # a mail client's retry, or the person again
    assert held(slug, ANNA) == first and first.suppressed
    assert first.status == (None if slug == "mysoft" else "unsubscribed")


def test_an_opt_out_leaves_the_other_controller_alone(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    hold("mysoft", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    consent.opt_out_address(_notice("mysoft"), ANNA, consent.Facts(channel="api"))
    assert held("munkeby", ANNA) == Held("subscribed", False, (), ())


# -- what a provider reports -----------------------------------------------------------------------

PROVIDER = {"munkeby": "mailchimp", "mysoft": "apsis"}
_deliveries = iter(range(1_000_000))


def report(slug: str, kind: str, **fields: Any) -> str:
    event = consent.ProviderEvent(
        provider=PROVIDER[slug],
        kind=kind,
        notice=_notice(slug),
        email=fields.pop("email", ANNA),
        identity=fields.pop("identity", f"delivery-{next(_deliveries)}"),
        channel="webhook",
        **fields,
    )
    return consent.apply_provider_event(event)


DELETED = Held(None, True, ("delete",), ("opted_out", "personal_data_deleted"))  # and the provider forgets them
NOTED = Held("subscribed", False, (), ("provider_contact_deleted",))  # staff's deletion there: consent stands here
EVENTS = [
    # notice, before, kind, outcome, after
    ("munkeby", "subscribed", "unsubscribe", "applied", Held("unsubscribed", True, (), ("opted_out",))),
    ("munkeby", "subscribed", "complaint", "applied", Held("unsubscribed", True, (), ("opted_out",))),
    ("munkeby", "subscribed", "bounce", "applied", Held("unsubscribed", True, (), ("opted_out",))),
    ("munkeby", "unknown", "unsubscribe", "unknown_address", Held(None, True, (), ("opted_out",))),
    ("munkeby", "unsubscribed", "unsubscribe", "no_change", Held("unsubscribed", True, (), ())),
    (
        "mysoft",
        "subscribed",
        "unsubscribe",
        "applied",
        Held(None, True, ("delete",), ("opted_out", "personal_data_deleted")),
    ),
    ("mysoft", "unknown", "unsubscribe", "unknown_address", Held(None, True, ("delete",), ("opted_out",))),
    ("mysoft", "pending", "unsubscribe", "applied", DELETED),
    ("munkeby", "unknown", "subscribe", "applied", Held("subscribed", False, ("subscribe",), ("provider_subscribed",))),
    ("munkeby", "subscribed", "subscribe", "no_change", Held("subscribed", False, (), ())),
    ("munkeby", "subscribed", "provider_delete", "applied", NOTED),
    ("munkeby", "unknown", "provider_delete", "unknown_address", Held(None, False, (), ())),
    ("munkeby", "unknown", "profile", "unknown_address", Held(None, False, (), ())),
]


@pytest.mark.parametrize(("slug", "before", "kind", "outcome", "after"), EVENTS)
def test_a_provider_event_takes_its_effect(
    domain: Any, slug: str, before: str, kind: str, outcome: str, after: Held
) -> None:
    _before(slug, before)
    since = last_seq()
    assert report(slug, kind) == outcome
    assert held(slug, ANNA, since) == after


def test_a_delivery_counts_once(domain: Any) -> None:
    _before("munkeby", "subscribed")
    assert report("munkeby", "unsubscribe", identity="one") == "applied"
    since = last_seq()
    assert report("munkeby", "unsubscribe", identity="one") == "duplicate"
    assert held("munkeby", ANNA, since).evidence == ()


def test_an_opt_out_from_before_a_newer_confirmation_is_stale(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow())
    since = last_seq()
    assert report("munkeby", "unsubscribe", occurred_at=utcnow() - timedelta(hours=1)) == "stale"
    assert held("munkeby", ANNA, since) == Held("subscribed", False, (), ())


def test_an_opt_out_arriving_late_is_still_honoured(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - 30 * DAY)
    assert report("munkeby", "unsubscribe", occurred_at=utcnow() - 20 * DAY) == "applied"
    assert held("munkeby", ANNA).status == "unsubscribed"


def test_a_sign_up_from_before_an_opt_out_does_not_undo_it(domain: Any) -> None:
    hold("munkeby", ANNA, "unsubscribed", unsubscribed_at=utcnow(), updated_at=utcnow())
    since = last_seq()
    assert report("munkeby", "subscribe", occurred_at=utcnow() - DAY) == "stale"
    assert held("munkeby", ANNA, since) == Held("unsubscribed", False, (), ())


def test_a_sign_up_older_than_a_deletion_does_not_bring_the_person_back(domain: Any) -> None:
    _suppress("mysoft", ANNA)  # what a delete-rule opt-out leaves
    assert report("mysoft", "subscribe", occurred_at=utcnow() - DAY) == "stale"
    assert held("mysoft", ANNA).status is None


def test_a_change_reported_without_a_time_leaves_ours_standing(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    assert report("munkeby", "profile", name="Anna Andersson") == "stale"
    assert report("munkeby", "address_change", new_email=BERIT) == "stale"
    assert held("munkeby", ANNA).status == "subscribed"


def test_a_name_change_is_kept_only_where_the_notice_collects_names(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    hold("mysoft", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    assert report("munkeby", "profile", name="Anna Andersson", occurred_at=utcnow()) == "applied"
    # Mysoft's form collects the address only.
    assert report("mysoft", "profile", name="Anna Andersson", occurred_at=utcnow()) == "no_change"
    names = dict(db.session.query(Subscription.notice, Subscription.name).all())
    assert names == {"munkeby": "Anna Andersson", "mysoft": None}


def test_an_address_change_moves_the_subscription(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    assert report("munkeby", "address_change", new_email=BERIT, occurred_at=utcnow()) == "applied"
    assert held("munkeby", ANNA).status is None
    assert held("munkeby", BERIT).status == "subscribed"


def test_an_address_change_onto_a_held_address_changes_nothing(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    hold("munkeby", BERIT, "unsubscribed", confirmed_at=utcnow() - 2 * DAY, unsubscribed_at=utcnow() - DAY)
    assert report("munkeby", "address_change", new_email=BERIT, occurred_at=utcnow()) == "conflict"
    assert (held("munkeby", ANNA).status, held("munkeby", BERIT).status) == ("subscribed", "unsubscribed")


def test_an_address_change_onto_an_opted_out_address_is_an_opt_out(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", confirmed_at=utcnow() - DAY)
    _suppress("munkeby", BERIT)
    since = last_seq()
    assert report("munkeby", "address_change", new_email=BERIT, occurred_at=utcnow()) == "applied"
    after = held("munkeby", BERIT, since)
    assert after.status == "unsubscribed" and after.evidence == ("rectified", "opted_out")


# -- retention ---------------------------------------------------------------------------------------

RETENTION = [
    # notice, state, age in days (of what the rule counts from), purged by
    ("munkeby", "pending", 31, "unconfirmed_days"),
    ("munkeby", "pending", 29, None),
    ("munkeby", "unsubscribed", 366, "unsubscribed_days"),
    ("munkeby", "unsubscribed", 364, None),
    ("munkeby", "prospect", 366, "prospect_without_dialog_days"),
    ("munkeby", "prospect", 364, None),
    ("munkeby", "prospect_in_dialog", 731, "prospect_with_dialog_days"),
    ("munkeby", "prospect_in_dialog", 729, None),
    ("munkeby", "customer", 3650, None),
    ("munkeby", "subscribed", 3650, None),
    ("mysoft", "pending", 31, "unconfirmed_days"),
    ("mysoft", "prospect", 3650, None),  # Mysoft's notice sets no period for prospects
]


@pytest.mark.parametrize(("slug", "state", "age", "purged_by"), RETENTION)
def test_retention_purges_what_the_notice_says_and_nothing_else(
    domain: Any, slug: str, state: str, age: int, purged_by: str | None
) -> None:
    then = NOW - age * DAY
    long_ago = NOW - 4000 * DAY
    if state == "pending":
        hold(slug, ANNA, "pending", created_at=then)
    elif state == "unsubscribed":
        hold(slug, ANNA, "unsubscribed", created_at=long_ago, confirmed_at=long_ago, unsubscribed_at=then)
    elif state == "prospect":
        hold(slug, ANNA, "subscribed", relationship="prospect", created_at=then)
    elif state == "prospect_in_dialog":
        hold(slug, ANNA, "subscribed", relationship="prospect", created_at=long_ago, last_contact_at=then)
    else:
        relationship = "customer" if state == "customer" else "subscriber"
        hold(slug, ANNA, "subscribed", relationship=relationship, created_at=then, confirmed_at=then)
    report_ = retention.purge(dry_run=True, now=NOW)
    assert [row["rule"] for row in report_.would_purge] == ([purged_by] if purged_by else [])
    retention.purge(now=NOW)
    assert (held(slug, ANNA).status is None) == (purged_by is not None)


def test_a_customer_is_reviewed_not_purged(domain: Any) -> None:
    hold("munkeby", ANNA, "subscribed", relationship="customer", created_at=NOW - 400 * DAY)
    hold("munkeby", BERIT, "subscribed", relationship="customer", created_at=NOW - 100 * DAY)
    assert retention.purge(dry_run=True, now=NOW).review_due == {"munkeby": 1}


@pytest.mark.parametrize(
    ("size", "seconds", "bigger"),
    [(200, 0.01, True), (200, 1.0, False), (retention.BATCH, 0.001, False)],
)
def test_the_purge_batch_grows_while_batches_are_quick(size: int, seconds: float, bigger: bool) -> None:
    following = retention.next_batch_size(size, seconds)
    assert (following > size) == bigger and 1 <= following <= retention.BATCH
