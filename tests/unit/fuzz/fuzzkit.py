"""Shared strategies and the one property of issue 12: bad input is served or refused.

"Refused" means a :class:`fedscreen.errors.FedscreenError` (for the parsers below, a
``VerificationError`` or one of its subclasses); anything else — ``KeyError``,
``TypeError``, ``RecursionError``, ``OverflowError``, ``UnicodeEncodeError`` — is a
crash. Time is bounded by each test's hypothesis ``deadline``.

The CI budget is fixed here, once: ``FUZZ`` for parsers that are cheap per call,
``FUZZ_SLOW`` for those that verify signatures or touch files. ``scripts/fuzz.py``
runs the same targets far longer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fedscreen.errors import FedscreenError

T = TypeVar("T")

#: nested 10,000 deep: deeper than any recursion limit, so a recursive parser must refuse it
DEEP = 10_000

settings.register_profile(
    "fuzz-ci",
    max_examples=80,
    deadline=2000,  # ms per example: a parser that hangs on some input fails here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile(
    "fuzz-ci-slow",
    parent=settings.get_profile("fuzz-ci"),
    max_examples=40,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FUZZ = settings.get_profile("fuzz-ci")
FUZZ_SLOW = settings.get_profile("fuzz-ci-slow")


def served_or_refused(
    call: Callable[[], T], refusal: type[FedscreenError] = FedscreenError
) -> T | None:
    """Run ``call``; a result or a ``refusal`` error pass, any other exception fails."""
    try:
        return call()
    except refusal:
        return None


# ---------------------------------------------------------------- strategies

#: every code point, lone surrogates included (JSON can escape them: "\ud800")
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=40)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**53, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(2**53)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=5)
    ),
    max_leaves=20,
)


def dumps(value: Any) -> str:
    """JSON text as a sloppy writer makes it: NaN/Infinity literals, ``\\u`` escapes."""
    return json.dumps(value, allow_nan=True)


def deep(opening: str, closing: str, leaf: str = "0", depth: int = DEEP) -> str:
    return opening * depth + leaf + closing * depth


#: texts that have broken real JSON parsers
nasty_texts = st.sampled_from(
    [
        deep("[", "]"),
        deep('{"a":', "}"),
        deep('{"payload":', "}"),
        deep("[", "", leaf=""),  # unterminated
        '{"a": NaN, "b": Infinity, "c": -Infinity}',
        "NaN",
        "1" * 5000,  # past Python's int-string limit
        "1e99999",
        "-1e99999",
        '{"a": 1, "a": 2}',
        '"\\ud800"',
        '{"\\udc00": "\\ud800\\udc00\\ud800"}',
        '"' + "x" * 200_000 + '"',
        "[" + ",".join(["{}"] * 20_000) + "]",
        "",
        "\ufeff{}",
        "null",
        "[]",
        "{}",
    ]
)

#: UTF-8 that does not decode
invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xc0\x80", b'{"a":"\xed\xa0\x80"}', b"\x80abc", b'"\xf4\x90\x80\x80"']
)


def json_like_text() -> st.SearchStrategy[str]:
    return st.one_of(json_values.map(dumps), nasty_texts, any_text)


def json_like_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        json_like_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        invalid_utf8,
        st.binary(max_size=300),
    )


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A valid document with a few bytes flipped, cut, duplicated or spliced in."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "repeat"]))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif how == "insert":
            data[at:at] = draw(
                st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(SPLICES))
            )
        elif how == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 32))] * draw(st.integers(1, 50))
    return bytes(data)


SPLICES = [b"NaN", b"1e999", b'"\\ud800"', b"[[[[[[[[", b"]]]]", b"{", b"}", b",", b"\\", b'"']
