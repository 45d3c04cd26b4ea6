"""``canonical_json`` writes the same bytes, or raises the same error, whether orjson or
the standard library writes the value: its fast path can change no signature or digest."""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen._util import canonical
from fedscreen._util.canonical import canonical_json


def _stdlib(value: Any) -> bytes:
    """The definition: what canonical_json wrote before it had a fast path."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _outcome(write: Any, value: Any) -> tuple[str, bytes]:
    try:
        return "ok", write(value)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        return "error", type(exc).__name__.encode()


#: every code point but surrogates, and lone surrogates, control characters and the
#: characters JSON writers disagree on (U+2028, U+2029, DEL) on purpose
_texts = st.text() | st.text(alphabet=st.sampled_from('\x00\x1f\x7f\u2028\u2029"\\/\ud800é𝄞'))
_keys = _texts | st.integers(min_value=-5, max_value=5) | st.booleans() | st.none()

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.integers(min_value=-(2**64) - 2, max_value=-(2**63) + 2)
    | st.floats()
    | _texts,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=16,
)


@given(values)
@example({"b": 1, "a": [True, None, "x"]})
@example({"é": 1, "e": 2, "𝄞": 3, "\uffff": 4})  # key order by code point, not UTF-16
@example({"envelope": '{"payload":"eyJ9","sig":"\\u0000"}'})
@example([2**64, -(2**63)])
@example({"x": float("nan")})
@example([1e-4, 9.999999999999999e-05, -2.5e-05, 1e16, 9999999999999998.0, -0.0, 5e-324])
@example({"inf": float("inf")})
@example([1e16, 1.2e30, 2.0**63])  # all plain: orjson before 3.11.7 wrote 1e16 here
@example({"x": 1.2e30, "y": -1.5e300})
@example("\ud800")
def test_same_bytes_or_same_error(value: Any) -> None:
    assert _outcome(canonical_json, value) == _outcome(_stdlib, value)


def test_the_orjson_here_writes_floats_as_python_does() -> None:
    # else every float would go to the standard library (correct, only slower)
    assert canonical._FLOATS_AS_REPR


def test_the_fast_path_is_taken_for_plain_values() -> None:
    # the speed is the point: a log entry of strings and integers goes to orjson
    assert canonical._plain({"kind": "answer", "index": 3, "ok": True, "n": None}, 32)
    assert canonical._plain([("a", 1), ["b", [2]]], 32)
    assert canonical._plain({"epsilon": 0.5, "scale": 199.88, "zero": -0.0, "big": 1e300}, 32)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return {"deep": value}


class _Colour(enum.IntEnum):
    RED = 1


class _Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {"scale": 1e-05},  # a float orjson writes as 0.00001
        {"n": _Colour.RED},  # an int subclass
        {_Text("k"): "v"},  # a str subclass as a key
        OrderedDict(a=1),  # a dict subclass
        {1: "int key"},
        _nested(40),
    ],
)
def test_anything_else_goes_to_the_standard_library(value: Any) -> None:
    assert not canonical._plain(value, canonical._PLAIN_DEPTH)
    assert canonical_json(value) == _stdlib(value)


def test_deep_nesting_fails_as_before() -> None:
    value = _nested(100_000)
    assert _outcome(canonical_json, value) == ("error", b"RecursionError")
