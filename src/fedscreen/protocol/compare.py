"""One rule for comparing recomputed figures with stated ones.

A verifier recomputes a release's provincial cells (``math.exp``, square roots and
a Cornish–Fisher step) on its own machine; another platform's libm may differ in
the last bits, so byte equality of floats would fail honest releases. Integers,
strings, booleans and None must be equal exactly (a count or a flag is never
approximately right, and an integer stated as a float must be that integer exactly:
at 2^62 the relative tolerance would move a count by billions); floats within a
relative ``REL_TOL`` (an absolute ``ABS_TOL`` near zero). Nesting deeper than
``MAX_DEPTH`` is never the same figures (no honest release nests that far, and the
comparison must not run out of stack).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

#: relative tolerance for recomputed floats
REL_TOL: Final = 1e-9
#: absolute tolerance for floats near zero
ABS_TOL: Final = 1e-9
#: deepest nesting of lists and mappings compared (a release's cells nest 4 deep)
MAX_DEPTH: Final = 32


def same_figures(a: object, b: object, *, _depth: int = 0) -> bool:
    """Whether two JSON-like values state the same figures (see the module docstring).

    Lists and tuples compare element by element, mappings key by key; a boolean
    only equals a boolean (``True`` is not ``1``); an integer equals a float only
    when exactly equal; NaN equals only NaN and an infinity only itself.
    """
    if _depth > MAX_DEPTH:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        if isinstance(a, int) or isinstance(b, int):
            return a == b  # Python compares an int and a float exactly
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y or math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, str | None) or isinstance(b, str | None):
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(
            same_figures(x, y, _depth=_depth + 1) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_figures(a[k], b[k], _depth=_depth + 1) for k in a)
    return False
