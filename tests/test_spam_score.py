"""What a spam filter sees: every mail kind, scored by SpamAssassin's local rules.

Debian's ``spamassassin`` with ``-L`` (local tests only: no DNS blocklists, no
network) reads the bytes the SMTP server received. Each mail must score under 2.0
and trip no rule about how its headers or MIME parts are formed. Rules about the
delivery path (no Received header yet, no relays) are the sender's side of the
wire and say nothing about the mail itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from .support import SmtpSink
from .test_mail_wire import app_env, every_mail_kind  # noqa: F401  (the same service settings)

SPAMASSASSIN = shutil.which("spamassassin")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        SPAMASSASSIN is None,
        reason="spamassassin is not installed (Debian package spamassassin); spam scores not checked",
    ),
]
MAX_SCORE = 2.0
# Rules that flag a badly formed message: its headers, its date, its MIME structure.
MALFORMED = re.compile(
    r"^(MISSING_|INVALID_|MALFORMED|HEADER_|MIME_|BAD_ENC|FROM_EXCESS|SUBJ_ILLEGAL|MSGID_|DATE_IN_|"
    r"TO_NO_BRKTS|FORGED_|CTE_|MPART_ALT_DIFF|HTML_MIME_NO_HTML|TVD_|__MIME_QP_LONG|FROM_ADDR_WS)"
)


def score(raw: bytes) -> tuple[float, list[str]]:
    run = subprocess.run(
        [SPAMASSASSIN or "spamassassin", "-L", "-t"], input=raw, capture_output=True, timeout=180, check=True
    )
    header = run.stdout.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    status = r"X-Spam-Status: \w+, score=(-?[\d.]+) required=[\d.]+\s+tests=([^\n]*(?:\n[ \t][^\n]*)*)"
    match = re.search(status, header)
    assert match, header
    tests = re.split(r"[,\s]+", match.group(2).split("autolearn=")[0].strip())
    return float(match.group(1)), [t for t in tests if t and t != "none"]


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_every_mail_kind_scores_low_and_trips_no_rule_about_malformed_headers(
    app, client, runner, smtp: SmtpSink, slug: str
):
    mails = every_mail_kind(app, client, runner, smtp, slug)
    with ThreadPoolExecutor(max_workers=2) as pool:
        scored = dict(zip(mails, pool.map(score, mails.values()), strict=True))
    print(f"SpamAssassin -L, {slug}:", {kind: (points, tests) for kind, (points, tests) in scored.items()})
    for kind, (points, tests) in scored.items():
        assert points < MAX_SCORE, (kind, points, tests)
        assert not [t for t in tests if MALFORMED.match(t)], (kind, tests)
