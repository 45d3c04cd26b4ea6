"""An answer's cells parse to the same AnswerCell, or fail with the same error, as they did
before ``_cell`` built count cells without the frozen dataclass's ``__init__``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedscreen.protocol.answer import MAX_VALUE, AnswerCell, Part, _cell, _checked_cell


def _reference(cell: object, kind: str, width: int, *, noisy: bool) -> AnswerCell:
    """The definition: ``_cell`` as it was, through AnswerCell's own ``__init__``."""
    if not isinstance(cell, dict) or not isinstance(cell.get("group"), list):
        raise ValueError("each cell must be an object with a group list")
    group = tuple(cell["group"])
    if len(group) != width or not all(type(v) in {str, int, float} for v in group):
        raise ValueError(f"each cell's group must be a list of {width} values")

    def number(value: object, what: str, types: tuple[type, ...]) -> Any:
        if type(value) not in types:
            kind = "an integer" if types == (int,) else "a number"
            raise ValueError(f"a cell's {what} must be {kind}")
        if not -MAX_VALUE <= value <= MAX_VALUE:  # type: ignore[operator]
            raise ValueError(f"a cell's {what} is out of range")
        return value if types == (int,) else float(value)  # type: ignore[arg-type]

    count = number(cell.get("value"), "value", (int,))
    if not noisy:
        return AnswerCell(group, count)
    finite = (float, int)
    lower, upper = (
        number(cell.get("lower"), "lower", finite),
        number(cell.get("upper"), "upper", finite),
    )
    return AnswerCell(group, count, lower, upper)


def _outcome(parse: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    try:
        return "ok", repr(parse(*args, **kwargs))
    except (ValueError, TypeError, KeyError) as exc:
        return type(exc).__name__, str(exc)


_scalars = (
    st.integers()
    | st.integers(min_value=MAX_VALUE - 2, max_value=MAX_VALUE + 2)
    | st.floats()
    | st.text(max_size=3)
    | st.booleans()
    | st.none()
)
_groups = st.lists(st.integers(-3, 3) | st.floats() | st.text(max_size=2), max_size=3) | st.lists(
    _scalars | st.lists(st.integers(), max_size=1), max_size=3
)
_counts = st.integers(-MAX_VALUE - 1, MAX_VALUE + 1) | _scalars
_bounds = st.floats(-MAX_VALUE, MAX_VALUE) | _counts
#: cells mostly of the right shape, each field sometimes wrong or missing
_cells: st.SearchStrategy[object] = st.fixed_dictionaries(
    {}, optional={"group": _groups | _scalars, "value": _counts, "lower": _bounds, "upper": _bounds}
) | st.sampled_from([None, [], "cell", 3])


@given(
    cell=_cells,
    kind=st.sampled_from(["count", "sum"]),
    width=st.integers(0, 3),
    noisy=st.booleans(),
)
@example(
    cell={"group": ["a", 1], "value": 7, "lower": -1.0, "upper": 15},
    kind="count",
    width=2,
    noisy=True,
)
@example(
    cell={"group": ["a"], "value": True, "lower": 0.0, "upper": 1.0},
    kind="sum",
    width=1,
    noisy=True,
)
@example(
    cell={"group": [1.0], "value": 7, "lower": float("nan"), "upper": 1.0},
    kind="sum",
    width=1,
    noisy=True,
)
@example(cell={"group": [False], "value": 7}, kind="count", width=1, noisy=False)
@example(cell={"group": ["a", [1]], "value": 7}, kind="count", width=2, noisy=False)
@example(cell={"group": [], "value": 7}, kind="count", width=0, noisy=False)
@example(cell={"group": ["a", None], "value": 7}, kind="sum", width=2, noisy=False)
@settings(max_examples=1000)  # each example is microseconds
def test_count_cells_parse_as_before(cell: object, kind: str, width: int, noisy: bool) -> None:
    assert _outcome(_cell, cell, kind, width, noisy=noisy) == _outcome(
        _reference, cell, kind, width, noisy=noisy
    )


@given(
    group=st.lists(st.integers() | st.floats() | st.text(max_size=3), max_size=3).map(tuple),
    value=st.integers(),
    bounds=st.tuples(st.floats(), st.floats()) | st.just((None, None)),
)
def test_a_checked_cell_is_the_dataclass_s_own(
    group: tuple[Any, ...], value: int, bounds: tuple[float | None, float | None]
) -> None:
    made, built = _checked_cell(group, value, *bounds), AnswerCell(group, value, *bounds)
    assert type(made) is AnswerCell
    assert vars(made) == vars(built)
    assert list(vars(made)) == [f.name for f in dataclasses.fields(AnswerCell)]
    assert repr(made) == repr(built)
    if all(b == b for b in bounds) and all(v == v for v in group):  # NaN is unequal to itself
        assert made == built
        assert hash(made) == hash(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.value = 1  # type: ignore[misc]
    assert dataclasses.replace(made, numerator=Part(1, 2.0)).numerator == Part(1, 2.0)
