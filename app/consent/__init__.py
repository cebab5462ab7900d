"""The consent domain service: the one place notice rules are applied.

Routes, the CLI, webhooks and the API call these functions; none of them touch
subscriptions, evidence or suppressions directly. Each function is one unit of
work: the state change, its evidence and its outbox jobs commit together, and
mail goes out only after the commit.

- ``signup``: double opt-in (request, confirmation mail, confirmation);
- ``opt_out``: the notice's opt-out rule, from a link or by address;
- ``provider_events``: what Mailchimp and APSIS report, applied once per delivery;
- ``subjects``: the person's status, export and erasure, and staff's corrections;
- ``records``: what they all read and write.
"""

from ..addresses import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, InvalidInput, clean_name, email_hash, normalise_email
from ..notices import get_notice, notice_for_provider, notices
from .opt_out import opt_out_address, unsubscribe
from .provider_events import OPT_OUT_EVENTS, PROVIDER_EVENT_KINDS, ProviderEvent, apply_provider_event
from .records import HASH_RE, Facts, Target, tag_range, token_target
from .signup import CONFIRMATION_EVENTS, SIGNUP_JOB, confirm, request_subscription, resend_confirmation
from .subjects import (
    EARLIEST_CONTACT,
    PROVIDERS,
    RELATIONSHIPS,
    consent_status,
    erase_by_hash,
    erase_subject,
    erase_subscription,
    export_by_hash,
    export_subject,
    mark_reviewed,
    record_action,
    record_contact,
    rectify,
    retention_summary,
)

__all__ = [
    "CONFIRMATION_EVENTS",
    "EARLIEST_CONTACT",
    "HASH_RE",
    "MAX_EMAIL_LENGTH",
    "MAX_NAME_LENGTH",
    "OPT_OUT_EVENTS",
    "PROVIDERS",
    "PROVIDER_EVENT_KINDS",
    "RELATIONSHIPS",
    "SIGNUP_JOB",
    "Facts",
    "InvalidInput",
    "ProviderEvent",
    "Target",
    "apply_provider_event",
    "clean_name",
    "confirm",
    "consent_status",
    "email_hash",
    "erase_by_hash",
    "erase_subject",
    "erase_subscription",
    "export_by_hash",
    "export_subject",
    "get_notice",
    "mark_reviewed",
    "normalise_email",
    "notice_for_provider",
    "notices",
    "opt_out_address",
    "record_action",
    "record_contact",
    "rectify",
    "request_subscription",
    "resend_confirmation",
    "retention_summary",
    "tag_range",
    "token_target",
    "unsubscribe",
]
