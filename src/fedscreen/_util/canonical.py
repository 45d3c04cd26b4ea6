"""One canonical JSON: what every signature, digest and cache key is computed over."""

from __future__ import annotations

import json
import math
from typing import Any, Final

import orjson

#: how deep :func:`_plain` looks before leaving a value to the standard library
_PLAIN_DEPTH: Final = 32
#: below this magnitude Python writes a float with an exponent (``repr``) and orjson not
_SMALLEST_PLAIN_FLOAT: Final = 1e-4
#: floats orjson must write as Python does for it to write any: orjson before 3.11.7
#: wrote ``1e16`` for ``1e+16`` (pyproject requires a later one; this checks the one here)
_FLOAT_PROBE: Final = [1e16, 1.5e300, 1e-4, 0.1, 123.0, -0.0, 1e22, 2.0**63]
#: the exact types orjson writes as ``json`` does whatever their value (floats apart)
_LEAVES: Final = frozenset({str, int, bool, type(None)})
_FLOATS_AS_REPR: Final = (
    orjson.dumps(_FLOAT_PROBE) == json.dumps(_FLOAT_PROBE, separators=(",", ":")).encode()
)


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 (not ``\\u`` escapes), no NaN.

    Raises ValueError for NaN or infinity, which JSON cannot carry.

    A value made only of dicts with string keys, lists, tuples, strings, integers,
    booleans, None and floats of magnitude 0 or at least 1e-4 (exactly those types)
    is written by orjson, which writes exactly these bytes for it (a log entry
    holding a node's answer: 7 µs → 1 µs with the check of the types; a release of
    100 nodes' cells, 1.4 ms → 0.7 ms, most of it the check; a value the check
    walks and then leaves costs up to half as much again as before). Anything
    else goes to the standard library: smaller floats, for which orjson writes
    another form of the same shortest digits (``0.00001`` for ``1e-05``), NaN and
    infinity, subclasses, other types, integers past 64 bits, deep nesting, lone
    surrogates. A property test holds the two to the same bytes.
    """
    if _plain(value, _PLAIN_DEPTH):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # a lone surrogate, an integer past 64 bits
            pass
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _plain(value: Any, depth: int) -> bool:
    """True if ``value`` holds only the exact types orjson writes as ``json`` does."""
    kind = value.__class__
    if kind in _LEAVES:
        return True
    if kind is float:
        return _plain_float(value)
    if depth <= 0:
        return False
    # leaves are checked inline, not by a call each: a release body is thousands of them
    # (the dict and list loops are written out twice: one shared helper cost 25% more)
    if kind is dict:
        for key, item in value.items():
            if key.__class__ is not str:
                return False
            item_kind = item.__class__
            if item_kind in _LEAVES:
                continue
            if not (_plain_float(item) if item_kind is float else _plain(item, depth - 1)):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            item_kind = item.__class__
            if item_kind in _LEAVES:
                continue
            if not (_plain_float(item) if item_kind is float else _plain(item, depth - 1)):
                return False
        return True
    return False


def _plain_float(number: float) -> bool:
    # repr's form is orjson's from 1e-4 on; NaN and infinity fail here
    return _FLOATS_AS_REPR and (number == 0.0 or _SMALLEST_PLAIN_FLOAT <= abs(number) < math.inf)
