"""``fedscreen query`` output: text from other members is shown printable and bounded, and a
release it cannot show is a clear error, never a traceback (findings A4, A7(d))."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.cli.output import MAX_CELL_CHARS, printable
from fedscreen.cli.query import MAX_DISPLAY_CHARS, print_release, write_csv
from fedscreen.errors import VerificationError

ESCAPES = "\x1b[2J\x1b[31mFAKE 99.9%\x1b[0m\n\r\x07"


def _release(**changes: Any) -> dict[str, Any]:
    """A release body as ``release_body`` builds it (two nodes, one missing)."""
    cell = {"group": ["M"], "value": 120, "lower": 110.0, "upper": 130.0, "display": "120"}
    body: dict[str, Any] = {
        "query_id": "ab" * 16,
        "analyst": "alice",
        "coordinator": "coord",
        "query": {
            "dataset": "screenings",
            "measure": {"kind": "count"},
            "group_by": ["sex"],
            "years": ["2024-2025"],
        },
        "academic_year": None,
        "threshold": 10,
        "targeted": ["130102", "130104"],
        "answered": ["130102"],
        "missing": ["130104"],
        "missing_reasons": {"130104": "not connected"},
        "coverage": 0.5,
        "population": None,
        "answers": [{"node_id": "130102", "epsilon": 0.3, "log_index": 2}],
        "per_node": {"130102": [dict(cell)]},
        "province": [{**cell, "nodes": 1}],
    }
    body.update(changes)
    return body


def test_a_release_prints_its_tables() -> None:
    out = io.StringIO()
    print_release(_release(), out=out)
    text = out.getvalue()
    assert "Province (combined)" in text
    assert "[110, 130]" in text
    assert "not connected" in text


def test_a_nodes_display_text_is_shown_printable_and_short() -> None:
    body = _release()
    body["per_node"]["130102"][0]["display"] = ESCAPES + "A" * 100_000
    out = io.StringIO()
    print_release(body, out=out)
    assert "\x1b" not in out.getvalue()
    assert "\x07" not in out.getvalue()
    assert len(out.getvalue()) < 5_000
    csv_out = io.StringIO()
    write_csv(body, out=csv_out)
    assert "\x1b" not in csv_out.getvalue()
    assert len(csv_out.getvalue()) < 1_000


def test_a_missing_reason_is_shown_on_one_printable_line() -> None:
    body = _release(missing_reasons={"130104": ESCAPES + "X" * 1_000_000})
    out = io.StringIO()
    print_release(body, out=out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("130104  ?"))
    assert len(row) <= len("130104  ") + MAX_CELL_CHARS
    assert "\x1b" not in out.getvalue()


@pytest.mark.parametrize(
    "change",
    [
        {"coverage": "all"},
        {"coverage": None},
        {"population": {"share": "x", "eligible_targeted": []}},
        {"population": "x"},
        {"province": [{"group": [], "value": 1}]},
        {"province": [{"group": ["M", "F"], "value": 1}]},
        {"per_node": {}},
        {"answers": [{}]},
    ],
)
def test_a_release_that_cannot_be_shown_is_a_clear_error_and_prints_nothing(
    change: dict[str, Any],
) -> None:
    out = io.StringIO()
    with pytest.raises(VerificationError, match="cannot be shown"):
        print_release(_release(**change), out=out)
    assert out.getvalue() == ""


@given(st.text(max_size=600))
def test_printable_text_is_one_bounded_line(text: str) -> None:
    shown = printable(text, limit=MAX_DISPLAY_CHARS)
    assert len(shown) <= MAX_DISPLAY_CHARS
    assert shown.isprintable()
    assert shown == text or len(text) > MAX_DISPLAY_CHARS or not text.isprintable()
