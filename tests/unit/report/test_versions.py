"""report.versions: the release version each query of a report used, stated in the model
and read back for the HTML (hypothesis: any model reads or fails with ValueError)."""

from __future__ import annotations

from typing import Any

import pytest
from html_models import realistic_model
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.report.html import render_html
from fedscreen.report.versions import ReleaseUse, read_versions, release_versions

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip
NODES = st.lists(st.text(alphabet="0123456789", min_size=6, max_size=6), max_size=5, unique=True)


def _body(targeted: list[str], answered: int, version: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"targeted": targeted, "answered": targeted[:answered]}
    if version is not None:
        body["release_version"] = version
    return body


@settings(max_examples=200, deadline=None, database=None)
@given(
    entries=st.lists(
        st.tuples(NODES, st.integers(0, 5), st.none() | st.integers(2, 10**6)), max_size=6
    )
)
def test_stated_versions_read_back(entries: list[tuple[list[str], int, int | None]]) -> None:
    bodies = {f"q{n}": _body(t, a, v) for n, (t, a, v) in enumerate(entries)}
    stated = release_versions(bodies)
    assert read_versions({"release_versions": stated}) == tuple(
        ReleaseUse(f"q{n}", v or 1, min(a, len(t)), len(t)) for n, (t, a, v) in enumerate(entries)
    )


@settings(max_examples=300, deadline=None, database=None)
@given(stated=JSON)
def test_any_stated_value_reads_or_is_a_value_error(stated: object) -> None:
    refusal = ""
    try:
        uses = read_versions({"release_versions": stated})
    except ValueError as exc:
        refusal = str(exc)
    else:
        assert all(u.version >= 0 and u.answered >= 0 and u.targeted >= 0 for u in uses)
    assert not refusal or refusal.startswith("report model: release_versions")


def test_a_model_before_release_versions_states_none() -> None:
    assert read_versions({}) == ()
    assert read_versions({"release_versions": None}) == ()


@pytest.mark.parametrize(
    "entry",
    [{"version": True, "answered": 1, "targeted": 1}, {"version": 1, "answered": -1,
     "targeted": 1}, {"version": 1, "answered": 1}, {"version": "2", "answered": 1,
     "targeted": 1}, [1, 1, 1]],
)  # fmt: skip
def test_malformed_entries_are_refused(entry: object) -> None:
    with pytest.raises(ValueError, match=r"release_versions\.q0"):
        read_versions({"release_versions": {"q0": entry}})


def test_the_html_says_which_version_each_query_used() -> None:
    model = realistic_model()
    assert "Releases used" not in render_html(model)  # a report from before versions
    model["release_versions"] = {
        "q<1>": {"version": 2, "answered": 3, "targeted": 3},
        "q2": {"version": 1, "answered": 2, "targeted": 3},
    }
    html = render_html(model)
    assert (
        "Releases used: <code>q&lt;1&gt;</code> version 2 (3 of 3 nodes answered); "
        "<code>q2</code> version 1 (2 of 3 nodes answered). 1 of them a later version"
    ) in html
    model["release_versions"] = {"q2": {"version": 1, "answered": 2, "targeted": 3}}
    assert "Each is the first release of its query." in render_html(model)
    model["release_versions"] = {"q2": {"version": -1, "answered": 2, "targeted": 3}}
    with pytest.raises(ValueError, match=r"release_versions\.q2"):
        render_html(model)
