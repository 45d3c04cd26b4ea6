"""``parse_json``'s compact path (orjson, for text that is its own serialisation) agrees
with the strict stdlib parser on every input: the same value, or ValueError from both.

Values are compared by ``repr`` so that ``1`` and ``1.0``, ``0.0`` and ``-0.0``, and key
order all count.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto import envelope as envelope_module
from fedscreen.crypto.envelope import parse_json

_strict = envelope_module._parse_json_strict
_compact = envelope_module._parse_compact

#: JSON-ish values, including what JSON cannot carry (NaN, lone surrogates, huge ints)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.integers(min_value=-(2**64) - 2, max_value=-(2**63) + 2)
    | st.floats()
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def _verdict(parse: Any, data: str | bytes) -> str:
    try:
        return repr(parse(data))
    except ValueError:
        return "ValueError"


def _same(data: str | bytes) -> None:
    assert _verdict(parse_json, data) == _verdict(_strict, data)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        assert _verdict(parse_json, text) == _verdict(_strict, text)


def _serialisations(value: Any) -> list[bytes]:
    """The ways a writer might spell ``value``: orjson's, canonical, stdlib's defaults."""
    out = []
    for dump in (
        orjson.dumps,
        lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS),
        canonical_json,
        lambda v: json.dumps(v).encode("utf-8", "surrogatepass"),  # NaN, \\u escapes, spaces
        lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
    ):
        # (NaN, lone surrogates, ints past 64 bits: not every writer takes every value)
        with contextlib.suppress(TypeError, ValueError):
            out.append(dump(value))
    return out


@given(values)
def test_every_spelling_of_a_value_gets_the_strict_verdict(value: Any) -> None:
    for data in _serialisations(value):
        _same(data)


@given(values, st.integers(min_value=0, max_value=10_000), st.sampled_from([0, 1, 2]))
def test_edited_text_gets_the_strict_verdict(value: Any, at: int, edit: int) -> None:
    """One byte dropped, doubled or replaced by a quote: mostly not JSON any more."""
    for data in _serialisations(value):
        i = at % (len(data) + 1)
        _same([data[:i] + data[i + 1 :], data[:i] + data[i : i + 1] * 2, data[:i] + b'"'][edit])


@given(st.binary(max_size=200))
@example(b"NaN")
@example(b"[Infinity]")
@example(b"1e400")
@example(b'"\xed\xa0\x80"')  # an encoded surrogate: stdlib's surrogatepass takes it
@example(b"\xef\xbb\xbf{}")  # a UTF-8 byte order mark
@example(b'{"a":1,"a":1}')
@example(b'{"a":1,"b":{"c":2,"c":3}}')
@example(b"18446744073709551616")
@example(b"-0")
@example(b"1E2")
@example(b"1e-07")
@example(b"1e-7")
@example(b'"\\u00e9"')
def test_arbitrary_bytes_get_the_strict_verdict(data: bytes) -> None:
    _same(data)


@given(st.text(max_size=60))
def test_arbitrary_text_gets_the_strict_verdict(data: str) -> None:
    _same(data)
    _same(json.dumps(data))  # a JSON string, lone surrogates and all


@pytest.mark.parametrize("duplicate", [b'{"a":1,"a":2}', b'[{"k":null,"k":null}]'])
def test_a_repeated_name_is_refused(duplicate: bytes) -> None:
    with pytest.raises(ValueError, match="duplicate key"):
        parse_json(duplicate)
    with pytest.raises(ValueError, match="duplicate key"):
        parse_json(duplicate.decode())


@pytest.mark.parametrize("depth", [255, 256, 999, 5000])
def test_deep_nesting_takes_the_strict_path(depth: int) -> None:
    """orjson writes nothing 255 deep, so the strict parser decides deep text (and how deep
    the caller's stack already is never lets one path accept what the other refuses);
    very deep is a ValueError. If orjson ever writes deeper, the compact path needs its
    own bound: this test says so."""
    data = b"[" * depth + b"]" * depth
    assert _compact(data) is envelope_module._NOT_COMPACT
    if depth > 1000:
        with pytest.raises(ValueError, match="nested too deeply"):
            parse_json(data)


def test_moderate_nesting_takes_the_compact_path() -> None:
    data = b"[" * 254 + b"]" * 254
    assert _compact(data) == _strict(data)


def test_the_payloads_fedscreen_signs_take_the_compact_path() -> None:
    """canonical_json's output (what every log entry, answer and release is) is what
    orjson writes for the same value, floats included, so audits skip the slow parser."""
    entry = {
        "kind": "answer",
        "index": 12,
        "node_id": "130102",
        "at": "2026-11-29T00:00:00+00:00",
        "analyst": "analyst-1",
        "epsilon": 0.25,
        "cached": False,
        "budget_after": {
            "2024-2025": {
                "node_spent": 1.75,
                "analyst_spent": 0.5,
                "node_budget": 10.0,
                "analyst_budget": 2.0,
            }
        },
        "query": {"group_by": ["sex"], "where": None, "years": ["2024-2025"]},
        "note": '长安区 — ünïcode, "quotes", \\ and a\ttab',
        "cells": [[0.1, 3, 0.0001, 123456.789, 1e16, -0.0]],
    }
    data = canonical_json(entry)
    assert _compact(data) == entry
    assert _compact(data.decode()) == entry
    assert repr(parse_json(data)) == repr(_strict(data))


def test_only_unusual_floats_miss_the_compact_path() -> None:
    """Python writes 1e-07 where orjson writes 1e-7: such text is merely parsed slowly."""
    data = canonical_json({"epsilon": 1e-07})
    assert _compact(data) is envelope_module._NOT_COMPACT
    assert parse_json(data) == {"epsilon": 1e-07}


def test_not_text_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be str, bytes or bytearray"):
        parse_json(123)  # type: ignore[arg-type]
