"""Instrument definitions: published cut-offs, validity rules, and the definition format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.errors import InstrumentError
from fedscreen.screening.instruments import instruments, load_instrument, parse_items

PHQ9 = instruments()["phq9"]
GAD7 = instruments()["gad7"]
MHT = instruments()["mht"]
UPI = instruments()["upi"]


def _with_total(n_items: int, total: int, high: int) -> str:
    """An answer string of n_items digits in 0..high summing to total."""
    digits = []
    for _ in range(n_items):
        take = min(high, total)
        digits.append(take)
        total -= take
    assert total == 0
    return "".join(map(str, digits))


@pytest.mark.parametrize(
    ("total", "band", "positive"),
    [
        (0, "none", False),
        (4, "none", False),
        (5, "mild", False),
        (9, "mild", False),
        (10, "moderate", True),
        (14, "moderate", True),
        (15, "moderately_severe", True),
        (19, "moderately_severe", True),
        (20, "severe", True),
        (27, "severe", True),
    ],
)
def test_phq9_cutoffs(total: int, band: str, positive: bool) -> None:
    # put the weight on the first items so that item 9 stays 0 below 25
    score = PHQ9.score(_with_total(9, total, 3))
    assert (score.total, score.band, score.flags["positive"]) == (total, band, positive)


def test_phq9_item9_flags() -> None:
    assert PHQ9.score("000000001").flags == {"positive": False, "item9": True, "item9_2": False}
    assert PHQ9.score("000000002").flags["item9_2"] is True


@pytest.mark.parametrize(
    ("total", "band"), [(4, "none"), (5, "mild"), (10, "moderate"), (15, "severe"), (21, "severe")]
)
def test_gad7_cutoffs(total: int, band: str) -> None:
    assert GAD7.score(_with_total(7, total, 3)).band == band


def test_mht_lie_scale_invalidates() -> None:
    six_lies = "0" * 90 + "1" * 6 + "0" * 4
    seven_lies = "0" * 90 + "1" * 7 + "0" * 3
    assert MHT.score(six_lies).valid is True
    invalid = MHT.score(seven_lies)
    assert (invalid.valid, invalid.band, invalid.flags["positive"]) == (False, "invalid", None)


def test_mht_total_excludes_lie_items_and_flags_high_scales() -> None:
    answers = "1" * 65 + "0" * 25 + "1" * 3 + "0" * 7
    score = MHT.score(answers)
    assert (score.total, score.band, score.flags["positive"]) == (65, "obvious", True)
    one_high_scale = "1" * 12 + "0" * 78 + "0" * 10  # learning anxiety 12/15
    assert MHT.score(one_high_scale).flags == {"positive": False, "scale_high": True}
    assert MHT.score("1" * 11 + "0" * 89).flags["scale_high"] is False


def test_upi_classes() -> None:
    none = "0" * 64
    assert UPI.score(none).band == "III"
    lie_only = "".join("1" if i in (5, 20, 35, 50) else "0" for i in range(1, 65))
    assert UPI.score(lie_only).total == 0  # lie items are not scored
    item25 = "0" * 24 + "1" + "0" * 39
    assert (UPI.score(item25).band, UPI.score(item25).flags["item25"]) == ("I", True)
    item8 = "0" * 7 + "1" + "0" * 56
    assert UPI.score(item8).band == "II"
    one_aux, two_aux = "0" * 60 + "1000", "0" * 60 + "1100"
    assert (UPI.score(one_aux).band, UPI.score(two_aux).band) == ("II", "I")
    counselling = "0" * 63 + "1"
    assert UPI.score(counselling).band == "I"
    scored = [i for i in range(1, 61) if i not in (5, 20, 35, 50, 8, 16, 25, 26)]
    twenty = "".join("1" if i in scored[:20] else "0" for i in range(1, 65))
    twenty_five = "".join("1" if i in scored[:25] else "0" for i in range(1, 65))
    assert (UPI.score(twenty).band, UPI.score(twenty_five).band) == ("II", "I")
    assert UPI.max_total == 56


@given(st.lists(st.integers(0, 3), min_size=9, max_size=9))
def test_phq9_total_is_the_item_sum(items: list[int]) -> None:
    text = "".join(map(str, items))
    assert PHQ9.score(parse_items(text, PHQ9)).total == sum(items)
    assert parse_items(",".join(map(str, items)), PHQ9) == text


def test_parse_items_errors() -> None:
    with pytest.raises(ValueError, match="9 answers expected, got 10"):
        parse_items("0123012301", PHQ9)
    with pytest.raises(ValueError, match=r"'x' outside 0\.\.3"):
        parse_items("01230123x", PHQ9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "code = 'x'\nitems = 3\nmin = 0\nmax = 1\ntotal = '1-4'\n[[band]]\nlabel='a'",
            "bad item range",
        ),
        (
            "code = 'x'\nitems = 3\nmin = 0\nmax = 1\ntotal = '1-3'\n[[band]]\nlabel='a'\n"
            "any=[{score='total', ge=1}]",
            "last band must have no conditions",
        ),
        (
            "code = 'x'\nitems = 3\nmin = 0\nmax = 1\ntotal = '1-3'\n[[band]]\nlabel='a'\n"
            "[[flag]]\nname='f'\nany=[{score='item:9', ge=1}]",
            "unknown score 'item:9'",
        ),
        (
            "code = 'X; import os'\nitems = 3\nmin = 0\nmax = 1\ntotal = '1-3'",
            "lowercase identifier",
        ),
        ("code = 'x'\nitems = 3", "malformed instrument definition"),
        ("code = ", "x"),
    ],
)
def test_bad_definitions(text: str, message: str) -> None:
    with pytest.raises(InstrumentError, match=message if message != "x" else None):
        load_instrument(text, source="bad.toml")


def test_a_new_scale_is_a_file() -> None:
    text = """
code = "k6"
name = "Kessler-6"
items = 6
min = 0
max = 4
total = "1-6"
[[band]]
label = "high"
any = [{ score = "total", ge = 13 }]
[[band]]
label = "low"
[[flag]]
name = "positive"
any = [{ score = "total", ge = 13 }]
"""
    k6 = load_instrument(text)
    assert k6.score("444100").band == "high"
    assert k6.score("000000").flags == {"positive": False}
