"""Subscription references: unguessable, and made in creation order so their indexes grow at one end."""

from __future__ import annotations

import re

import time_machine

from app.consent.records import REF_RE
from app.models import new_ref, new_refs


def test_a_reference_is_32_hex_digits_and_those_made_later_sort_after() -> None:
    with time_machine.travel("2026-12-03 08:00:00Z", tick=False):
        early = new_refs(5_000)
    with time_machine.travel("2026-12-03 08:00:01Z", tick=False):
        late = [new_ref() for _ in range(100)]
    assert all(REF_RE.match(ref) for ref in early + late)
    assert max(early) < min(late)  # a later second sorts after
    assert len(set(early + late)) == len(early) + len(late)
    # Within one second the rest is random: 96 bits, spread over every digit.
    tails = [ref[8:] for ref in early]
    assert {len(tail) for tail in tails} == {24}
    for position in range(24):
        assert len({tail[position] for tail in tails}) == 16, position
    assert not re.fullmatch(r"0+", early[0][8:])
