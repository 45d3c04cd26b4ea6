"""Query ids from peers: shown in logs and records only when they are query ids.

The coordinator's query ids reach a node's ledger, signed log and process log, and a
node's reach the coordinator's log: text of a dishonest peer's choosing (escapes,
newlines, a forged log line) never does.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fedscreen.protocol.query import INVALID_QUERY_ID, is_query_id, new_query_id, shown_query_id


@given(st.text(max_size=80))
def test_a_text_is_shown_only_if_it_is_a_query_id(text: str) -> None:
    shown = shown_query_id(text)
    assert shown in (text, INVALID_QUERY_ID)
    assert (shown == text) == bool(re.fullmatch(r"[0-9a-f]{32}", text)) == is_query_id(text)


def test_forged_log_lines_and_other_spellings_are_not_shown() -> None:
    assert shown_query_id(new_query_id()) != INVALID_QUERY_ID
    assert shown_query_id("0123456789abcdef" * 2) == "0123456789abcdef" * 2
    assert shown_query_id("0123456789ABCDEF" * 2) == INVALID_QUERY_ID
    forged = "x\n2026-12-06 CRITICAL coordinator: all nodes quarantined\x1b[2J\x07"
    assert shown_query_id(forged) == INVALID_QUERY_ID
    assert shown_query_id("0123456789abcdef" * 2 + "\n") == INVALID_QUERY_ID
