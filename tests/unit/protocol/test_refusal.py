"""Refusal reasons: a code from the fixed vocabulary and a bounded, printable detail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.protocol.refusal import CODES, MAX_DETAIL_CHARS, parse_reason, refusal_reason


@given(st.sampled_from(sorted(CODES)), st.text())
def test_every_reason_parses_back_with_a_bounded_printable_detail(code: str, detail: str) -> None:
    reason = refusal_reason(code, detail)
    parsed_code, parsed_detail = parse_reason(reason)
    assert parsed_code == code
    assert 0 < len(parsed_detail) <= MAX_DETAIL_CHARS
    assert parsed_detail.isprintable()


def test_the_wording_is_kept_and_a_repeated_code_dropped() -> None:
    assert refusal_reason("budget", "analyst alice has ε=0 left") == (
        "budget: analyst alice has ε=0 left"
    )
    assert refusal_reason("budget", "budget: analyst alice has ε=0 left") == (
        "budget: analyst alice has ε=0 left"
    )
    assert refusal_reason("stale", "line\nbreak\x1b[2J") == "stale: line break [2J"


def test_an_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown refusal code"):
        refusal_reason("because", "no")
    for text in ("because: no", "no code", "budget: " + "x" * 400):
        with pytest.raises(ValueError, match="fixed vocabulary"):
            parse_reason(text)
