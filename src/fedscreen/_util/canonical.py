"""One canonical JSON: what every signature, digest and cache key is computed over."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 (not ``\\u`` escapes), no NaN.

    Raises ValueError for NaN or infinity, which JSON cannot carry.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
