"""Opting out under the notice's rule (unsubscribe, or delete): the one place it is applied."""

from __future__ import annotations

import logging
from typing import Any

from .. import ledger, outbox, provider_sync
from ..addresses import email_hash, normalise_email
from ..database import UnitOfWork, unit_of_work
from ..ledger import Evidence
from ..models import utcnow
from ..notices import Notice
from .records import (
    Facts,
    Held,
    delete_personal_data,
    find_subscription,
    keep_suppressed,
    subscription_row,
    suppress,
    token_target,
    wipe_after_commit,
    write_columns,
)

log = logging.getLogger(__name__)

def apply_opt_out(
    uow: UnitOfWork,
    notice: Notice,
    sub: Held,
    facts: Facts,
    reason: str,
    provider_knows: bool = False,
    extra_facts: dict[str, Any] | None = None,
) -> list[Evidence]:
    """The notice's opt-out rule, applied in one place.

    ``provider_knows``: the opt-out came from the provider itself, so under the
    rule ``unsubscribe`` there is nothing to tell it (a delete is still sent).
    ``extra_facts`` join the opt-out's own (where a provider's report came from).
    """
    opted_out = Evidence.under(
        "opted_out",
        notice,
        sub.ref,
        facts.channel,
        facts={"rule": notice.opt_out_rule, "previous_status": sub.status, "reason": reason, **(extra_facts or {})},
        # Under the delete rule the details would be deleted at once; record none.
        details=None if notice.deletes_on_opt_out else facts.details(),
    )
    if notice.deletes_on_opt_out:
        deleted = delete_personal_data(uow, sub, reason=reason)
        wipe_after_commit(uow)
        return [opted_out, deleted]
    keep_suppressed(uow, notice.slug, sub.email_hash, reason)
    outbox.cancel_pending(uow, sub.ref, ("mail",))
    write_columns(uow, sub, status="unsubscribed", unsubscribed_at=utcnow(), confirm_nonce=None)
    if sub.confirmed_at is not None and not provider_knows:
        provider_sync.enqueue_sync(uow, sub, opt_out=True)
    return [opted_out]

def unsubscribe(payload: dict[str, Any], facts: Facts) -> bool:
    """Opt out under the notice's rule. Works after deletion; repeats are harmless.

    Returns False when the token names no known notice (a bad link).
    """
    target = token_target(payload)
    if target is None:
        return False
    notice = target.notice
    with unit_of_work(orm=False) as uow:
        sub = subscription_row(uow, target)
        if sub is None or sub.status == "unsubscribed":
            # Already gone or already out: make sure the address stays suppressed. A link by
            # ref whose subscription is gone names no address; its deletion kept the entry.
            ehash = sub.email_hash if sub is not None else target.email_hash
            if ehash is not None and suppress(uow, notice.slug, ehash, "opt_out"):
                anonymous = {"rule": notice.opt_out_rule, "previous_status": None, "reason": "opt_out"}
                ledger.append(uow, [Evidence.under("opted_out", notice, None, facts.channel, anonymous)])
            return True
        ledger.append(uow, apply_opt_out(uow, notice, sub, facts, reason="opt_out"))
    return True

def opt_out_address(notice: Notice, email_raw: str, facts: Facts) -> str:
    """An opt-out reported by address (a request by phone, say), under the notice's rule.

    Answers "opted_out", or "already_opted_out" when nothing was left to do.
    An address we do not hold is suppressed, so it is never added later.
    """
    email = normalise_email(email_raw)
    ehash = email_hash(email)
    with unit_of_work() as uow:
        sub = find_subscription(uow, notice.slug, ehash)
        if sub is None or sub.status == "unsubscribed":
            if not suppress(uow, notice.slug, ehash, "opt_out"):
                return "already_opted_out"
            anonymous = {
                "rule": notice.opt_out_rule,
                "previous_status": None,
                "reason": "opt_out",
                "actor": facts.actor,
            }
            ledger.append(
                uow, [Evidence.under("opted_out", notice, sub.ref if sub else None, facts.channel, anonymous)]
            )
            return "opted_out"
        ledger.append(uow, apply_opt_out(uow, notice, sub, facts, reason="opt_out", extra_facts={"actor": facts.actor}))
    return "opted_out"
