"""Outbox failures as the dashboard words them: one sentence per failure family and the fixed
facts the service writes (a setting's name, an HTTP status), never the stored text itself."""

from __future__ import annotations

import pytest
from flask import Flask
from flask_babel import Babel

from app.dashboard.words import sync_problem


@pytest.fixture
def english():  # type: ignore[no-untyped-def]
    app = Flask(__name__)
    Babel(app, locale_selector=lambda: "en")
    with app.test_request_context():
        yield


@pytest.mark.parametrize(
    ("stored", "kind", "provider", "dead", "said"),
    [
        ("WaitForConfiguration: mailchimp not configured: set MAILCHIMP_API_KEY", "sync_optout", "mailchimp", False,
         "Mailchimp is not set up: add MAILCHIMP_API_KEY"),
        ("WaitForConfiguration: apsis not configured: set APSIS_CLIENT_ID and APSIS_CLIENT_SECRET", "sync_consent",
         "apsis", False, "APSIS is not set up: add APSIS_CLIENT_ID and APSIS_CLIENT_SECRET"),
        ("ProviderRetry: APSIS 401 on token Unauthorized", "sync_consent", "apsis", True,
         "APSIS refused the credentials: check APSIS_CLIENT_ID and APSIS_CLIENT_SECRET"),
        ("ProviderRetry: Mailchimp 401 API Key Invalid", "sync_consent", "mailchimp", False,
         "Mailchimp refused the credentials: check MAILCHIMP_API_KEY"),
        ("ProviderRetry: Mailchimp 503 Service Unavailable", "sync_optout", "mailchimp", False,
         "Mailchimp did not answer; retrying"),
        ("ProviderRetry: Mailchimp 503 Service Unavailable", "sync_optout", "mailchimp", True,
         "Mailchimp did not answer, even after repeated tries; retry when it is back"),
        ("ProviderRetry: APSIS 429 on POST /v2/audience", "sync_optout", "apsis", False,
         "APSIS asked us to slow down; retrying"),
        ("ProviderPermanent: Mailchimp 400 Forgotten Email Not Subscribed: the address was permanently deleted",
         "sync_consent", "mailchimp", True,
         "Mailchimp will not take this address back: it was deleted there for good, and only Mailchimp's own"
         " sign-up form can add it again"),
        ("ProviderPermanent: APSIS 422 on PATCH /audience Unprocessable", "sync_consent", "apsis", True,
         "APSIS refused the change; retrying will not help until it is fixed there"),
        ("TransientMailError: SMTP unavailable: ConnectionRefusedError", "mail", None, False,
         "The mail server did not answer; retrying"),
        ("TransientMailError: SMTP 535", "mail", None, False,
         "The mail server refused the login: check SMTP_USER and SMTP_PASSWORD"),
        ("PermanentMailError: recipient refused (550)", "mail", None, True,
         "The mail server refused the recipient's address"),
        ("KeyError", "sync_consent", "apsis", True,
         "The job stopped on an unexpected error; the worker's log has the details"),
        ("refused", "sync_consent", "mailchimp", True,
         "The job stopped on an unexpected error; the worker's log has the details"),
    ],
)
def test_each_stored_failure_reads_as_a_sentence(english, stored, kind, provider, dead, said):  # type: ignore[no-untyped-def]
    assert sync_problem(stored, kind=kind, provider_kind=provider, dead=dead) == said


def test_a_providers_words_never_reach_the_sentence(english):  # type: ignore[no-untyped-def]
    stored = "ProviderPermanent: Mailchimp 400 Invalid Resource: anna@example.com looks fake or invalid"
    said = sync_problem(stored, kind="sync_consent", provider_kind="mailchimp", dead=True)
    assert "anna" not in said and "Invalid Resource" not in said and "ProviderPermanent" not in said
