"""The words the service's data may hold, each defined once.

The notice files, the database, the API's schema, the dashboard's forms and the CLI
all take these from here. Each is a ``StrEnum``: a member is its string, so it is
stored, compared and serialised as the plain word; ``values()`` gives the words in
order for messages and choices.
"""

from __future__ import annotations

from enum import StrEnum


class Language(StrEnum):
    """The languages of the pages, the mail and the notices."""

    SV = "sv"
    EN = "en"


class LawfulBasis(StrEnum):
    """GDPR Art. 6(1)(a) and 6(1)(f): the two bases the notices rely on."""

    CONSENT = "consent"
    LEGITIMATE_INTEREST = "legitimate_interest"


class OptOutRule(StrEnum):
    """What a notice promises on opt-out: stop mailing (keep a record), or delete."""

    UNSUBSCRIBE = "unsubscribe"
    DELETE = "delete"


class Status(StrEnum):
    """A subscription's state."""

    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class Relationship(StrEnum):
    """The person's relationship to the controller; it chooses the retention rule."""

    SUBSCRIBER = "subscriber"
    PROSPECT = "prospect"
    CUSTOMER = "customer"


class Role(StrEnum):
    """A dashboard user's role, from most to least: each may do what the ones after it may."""

    ADMIN = "admin"
    MARKETER = "marketer"
    VIEWER = "viewer"


class Scope(StrEnum):
    """What an API token may do."""

    READ = "read"
    SUBSCRIBE = "subscribe"
    OPT_OUT = "opt_out"
    CONTACT = "contact"


def values(words: type[StrEnum]) -> tuple[str, ...]:
    """The words of one vocabulary, as plain strings in their order."""
    return tuple(member.value for member in words)
