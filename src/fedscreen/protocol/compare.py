"""One rule for comparing recomputed figures with stated ones.

A verifier recomputes a release's provincial cells (``math.exp``, square roots and
a Cornish–Fisher step) on its own machine; another platform's libm may differ in
the last bits, so byte equality of floats would fail honest releases. Integers,
strings, booleans and None must be equal exactly (a count or a flag is never
approximately right); floats within a relative ``REL_TOL`` (an absolute
``ABS_TOL`` near zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

#: relative tolerance for recomputed floats
REL_TOL: Final = 1e-9
#: absolute tolerance for floats near zero
ABS_TOL: Final = 1e-9


def same_figures(a: object, b: object) -> bool:
    """Whether two JSON-like values state the same figures (see the module docstring).

    Lists and tuples compare element by element, mappings key by key; a boolean
    only equals a boolean (``True`` is not ``1``); an integer and a float compare
    as floats; NaN equals only NaN and an infinity only itself.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y or math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, str | None) or isinstance(b, str | None):
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_figures(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_figures(a[k], b[k]) for k in a)
    return False
