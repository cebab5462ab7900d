"""A notice's transfers outside the EU/EEA, as the sentence a person reads.

The notice page, the manage page, the export and the Art. 14 mail all say a transfer
through ``labels.transfer`` and a notice stating ``transfers = []`` through
``labels.no_transfer``; a notice without the key is not spoken for.
"""

from __future__ import annotations

from typing import Any

from flask_babel import force_locale

from app import labels
from app.notices import Transfer, get_notice


def test_munkebys_transfer_reads_as_one_sentence_with_its_fallback(domain: Any) -> None:
    found = get_notice("munkeby")
    assert found is not None
    (mailchimp,) = found.transfers
    with force_locale("en"):
        assert labels.transfer(mailchimp) == (
            "Intuit Inc. (Mailchimp) processes the data in the United States, under the EU-US Data Privacy "
            "Framework (the Commission's adequacy decision of 10 July 2023); if that falls away, under the "
            "standard contractual clauses."
        )


def test_a_transfer_without_a_fallback_names_one_safeguard(domain: Any) -> None:
    with force_locale("en"):
        sentence = labels.transfer(Transfer("Acme Ltd", "GB", "adequacy", None))
        assert sentence == (
            "Acme Ltd processes the data in the United Kingdom, under an adequacy decision of the European Commission."
        )
        # A country without a word of its own is named by the locale's list of territories.
        assert "in Japan, under binding corporate rules." in labels.transfer(Transfer("Acme KK", "JP", "bcr"))


def test_a_notice_stating_no_transfers_says_so(domain: Any) -> None:
    found = get_notice("mysoft")
    assert found is not None and found.transfers == () and found.transfers_stated
    with force_locale("en"):
        assert labels.no_transfer() == "The data is not transferred outside the EU/EEA."
