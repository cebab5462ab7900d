"""Mail providers behind one small interface.

The outbox handler (``app/provider_sync.py``) tells a provider the *current*
state of a subscription: subscribed, unsubscribed, or gone (delete). Pushing
state rather than replaying events makes every job idempotent and makes their
order not matter: a retried "subscribe" that runs after an opt-out finds the
subscription unsubscribed and says so.

Adapters raise ``ProviderNotConfigured`` (jobs wait, visibly), ``ProviderRetry``
(transient: backoff, honouring Retry-After) or ``ProviderPermanent`` (dead letter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..failures import Permanent, RetryLater, WaitForConfiguration
from ..notices import Notice


class ProviderNotConfigured(WaitForConfiguration):
    """Credentials for this provider are not set; jobs stay pending until they are."""


class ProviderRetry(RetryLater):
    """The provider may accept the same call later (timeout, 429, 5xx)."""


class ProviderPermanent(Permanent):
    """The provider refused in a way retrying cannot change."""


@dataclass(frozen=True)
class Member:
    """What a provider needs to know about a subscribed person."""

    email: str
    name: str | None
    ip_signup: str | None
    timestamp_signup: str | None
    ip_opt: str | None
    timestamp_opt: str | None
    unsubscribe_url: str
    language: str
    manage_url: str = ""


class Provider(Protocol):
    def subscribe(self, notice: Notice, member: Member) -> str:
        """Make the member subscribed; returns "subscribed", or "pending" when the
        provider insists on its own confirmation (Mailchimp's compliance state)."""

    def unsubscribe(self, notice: Notice, email: str) -> None: ...

    def delete(self, notice: Notice, email: str) -> None:
        """Delete the person at the provider; already gone counts as done."""

    def apply_many(self, notice: Notice, operations: list[Operation]) -> list[Outcome]:
        """Carry out many operations, batched where the provider allows."""


def provider_for(notice: Notice, config: Mapping[str, object]) -> Provider:
    kind = notice.provider["kind"]
    if kind == "mailchimp":
        from .mailchimp import MailchimpProvider

        return MailchimpProvider.from_config(config)
    if kind == "apsis":
        from .apsis import ApsisProvider

        return ApsisProvider.from_config(config)
    raise ProviderPermanent(f"unknown provider kind {kind!r}")


@dataclass(frozen=True)
class Operation:
    """One change to carry out at the provider, for one outbox job."""

    action: str  # "subscribe" | "unsubscribe" | "delete"
    email: str
    member: Member | None = None


# What became of one operation: None (done), "pending" (the provider asks for
# its own confirmation), or the exception that says why it failed.
Outcome = None | str | Exception

CONCURRENT_CALLS = 10  # Mailchimp allows 10 simultaneous connections per account


def apply_each(provider: Provider, notice: Notice, operations: list[Operation]) -> list[Outcome]:
    """Carry out operations one call each, on up to CONCURRENT_CALLS connections."""
    from concurrent.futures import ThreadPoolExecutor

    def run(op: Operation) -> Outcome:
        try:
            if op.action == "subscribe" and op.member is not None:
                return None if provider.subscribe(notice, op.member) == "subscribed" else "pending"
            if op.action == "unsubscribe":
                provider.unsubscribe(notice, op.email)
            elif op.action == "delete":
                provider.delete(notice, op.email)
            return None
        except (ProviderRetry, ProviderPermanent) as exc:
            return exc
        except Exception as exc:  # one member's surprise never fails the others in the claim
            return ProviderRetry(f"unexpected {type(exc).__name__} from the provider client")

    if len(operations) <= 1:
        return [run(op) for op in operations]
    with ThreadPoolExecutor(max_workers=min(CONCURRENT_CALLS, len(operations))) as pool:
        return list(pool.map(run, operations))
