"""The two ways work fails, shared by mail, the providers and the outbox.

Every failure the service raises about work it could not finish belongs to one of
two families, and the outbox decides by the family alone:

- ``RetryLater``: the same work may succeed later (a server down, a timeout, a
  429); the job goes back to the queue, after ``retry_after`` seconds when the
  other side said so, else after the backoff.
- ``Permanent``: retrying cannot help (a refused recipient, an address the
  provider has forgotten); the job becomes a dead letter that staff can retry or
  discard.

``WaitForConfiguration`` is a third, quieter case: the job cannot run until an
operator configures something (credentials), so it stays pending without using up
attempts.

The text of these failures is written by this service (codes and fixed phrases
where they are raised), so it may be stored as a job's reason once any address in
it is masked. Any other exception is stored by its class name only: its text may
quote a provider's answer, and that may name the person.
"""

from __future__ import annotations


class Failure(Exception):
    """Work that did not succeed, in the service's own words."""


class RetryLater(Failure):
    """Try again later; ``retry_after`` (seconds) overrides the backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Permanent(Failure):
    """Retrying cannot help; the job becomes a dead letter with this reason."""


class WaitForConfiguration(Failure):
    """The job cannot run until an operator configures something (credentials).

    It stays pending, visibly, and does not use up attempts: a notice whose
    provider is not configured must not turn its opt-outs into dead letters.
    """
