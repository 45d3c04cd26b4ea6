"""A dishonest node's well-signed answer cannot shape the province's figures (findings A1, A3,
A6, A9, A10); a dishonest coordinator cannot choose the threshold or the coverage (A5).

Honest answers are made by the node's own code (``node.cells.release``: real OpenDP
noise over a plan compiled from the shipped catalogue), signed with real Ed25519 keys
as a node signs them; each attack changes one thing in them and is refused.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signedanswers import MANIFEST, NODES, YEAR, signed_answer, signed_query

from fedscreen.crypto.envelope import ANSWER_V1, sign_envelope
from fedscreen.errors import VerificationError
from fedscreen.node.cells import release
from fedscreen.protocol.answer import (
    PUBLIC_MECHANISM,
    VerifiedAnswer,
    answer_payload,
    shipped_catalogue,
    verify_answer,
)
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.protocol.compare import same_figures
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import check_release, release_body
from fedscreen.query import mechanisms
from fedscreen.query.compile import compile_query
from fedscreen.query.spec import Comparison, Measure, QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, sign_checkpoint

EPSILON = 0.3
THRESHOLD = shipped_catalogue().limits.publication_threshold
COUNT = QuerySpec("screenings", Measure("count"), ("sex",), None, (YEAR,))
MEASURES = {
    "count": Measure("count"),
    "sum": Measure("sum", "phq9_total"),
    "mean": Measure("mean", "gad7_total"),
    "rate": Measure("rate", condition=Comparison("phq9_total", ">=", (10,))),
    "quantile": Measure("quantile", "phq9_total", q=0.5),
}


def _query(spec: QuerySpec = COUNT) -> SignedQuery:
    return signed_query(spec, EPSILON)


def _honest(node: str, spec: QuerySpec = COUNT, rows: list[tuple[Any, ...]] | None = None) -> Any:
    """The body a node's engine signs for ``spec`` (real noise; ``rows``: SQL result rows)."""
    plan = compile_query(spec, shipped_catalogue())
    if rows is None:
        rows = [(*cell, *[40] * plan.aggregates) for cell in plan.cells]
    return {
        "version": 1,
        "node_id": node,
        "analyst": "alice",
        "query": spec.to_json(),
        "epsilon": 0.0 if plan.dataset.public else EPSILON,
        "threshold": THRESHOLD,
        **release(plan, rows, EPSILON, THRESHOLD),
    }


def _verify(
    body: dict[str, Any], query: SignedQuery, *, node: str = "130102", public: bool = False
) -> tuple[bytes, VerifiedAnswer]:
    envelope = signed_answer(node, body, query)
    verified = verify_answer(
        envelope, manifest=MANIFEST, node_id=node, expected_query=query, public=public
    )
    return envelope.to_json().encode(), verified


@pytest.mark.parametrize("kind", sorted(MEASURES))
def test_honest_answers_of_every_measure_verify_and_release(kind: str) -> None:
    spec = QuerySpec("screenings", MEASURES[kind], ("sex",), None, (YEAR,))
    query = _query(spec)
    answers = {n: _verify(_honest(n, spec), query, node=n) for n in NODES}
    body = release_body(
        coordinator_id="coord", query=query, answers=answers, missing=[],
        targeted=sorted(NODES), threshold=THRESHOLD, public=False,
    )  # fmt: skip
    check_release(body, query, [a for _, a in answers.values()], public=False)


def _refused(body: dict[str, Any], match: str, query: SignedQuery | None = None) -> None:
    with pytest.raises(VerificationError, match=match):
        _verify(body, query or _query())


# --- A3: the node's noise, intervals and cells ---------------------------------------


@pytest.mark.parametrize("scale", [0, 1.0, 1 / 0.3 / 2, 1 / 0.3 * 1.001, 1e15])
def test_a_count_answer_must_state_the_scale_its_epsilon_gives(scale: float) -> None:
    body = _honest("130102")
    body["scale"] = scale
    _refused(body, "another noise scale")


def test_a_lone_nodes_interval_cannot_be_narrowed_or_turned_round() -> None:
    zero = _honest("130102")
    for cell in zero["cells"]:
        cell["lower"] = cell["upper"] = cell["value"]
    _refused(zero, "another interval")
    upside = _honest("130102")
    upside["cells"][0].update(lower=1e6, upper=-1e6)
    _refused(upside, "another interval")


def test_combine_recomputes_a_lone_nodes_interval_from_its_scale() -> None:
    body = _honest("130102")
    value, half = body["cells"][0]["value"], mechanisms.half_width(body["scale"])
    body["cells"][0].update(lower=value, upper=value)  # what a node might state
    province = combine("count", [NodeCells("130102", body)], threshold=THRESHOLD, public=False)
    assert (province[0]["lower"], province[0]["upper"]) == (value - half, value + half)


def test_a_ratio_answer_must_state_the_scales_its_epsilon_gives() -> None:
    spec = QuerySpec("screenings", MEASURES["rate"], ("sex",), None, (YEAR,))
    body = _honest("130102", spec)
    body["cells"][0]["denominator"]["scale"] = 0
    _refused(body, "another noise scale", _query(spec))


def test_a_quantile_answer_must_pick_a_candidate_at_its_scale() -> None:
    spec = QuerySpec("screenings", MEASURES["quantile"], ("sex",), None, (YEAR,))
    query = _query(spec)
    off_list = _honest("130102", spec)
    off_list["cells"][0]["value"] = 1000
    _refused(off_list, "non-candidate", query)
    no_noise = _honest("130102", spec)
    no_noise["scale"] = 0
    _refused(no_noise, "another noise scale", query)


def test_a_node_cannot_state_a_cell_twice() -> None:
    body = _honest("130102")
    body["cells"].append(copy.deepcopy(body["cells"][0]))
    _refused(body, "a cell twice")


@pytest.mark.parametrize(
    "group",
    [["X"], ["M", "F"], [], [True], [["M"]], [{"x": 1}], [None]],
    ids=["unknown", "longer", "empty", "bool", "nested", "object", "null"],
)
def test_a_node_cannot_invent_a_group_or_change_its_shape(group: list[Any]) -> None:
    body = _honest("130102")
    body["cells"][0]["group"] = group
    with pytest.raises(VerificationError):
        _verify(body, _query())


def test_a_county_may_narrow_a_domain() -> None:
    body = _honest("130102")
    del body["cells"][1]  # no "F" cells here: allowed, the province combines those it has
    _verify(body, _query())


def test_a_group_nested_deep_is_refused_before_anything_recurses() -> None:
    """A1: 450 levels of nesting made every later check raise RecursionError."""
    group: Any = "M"
    for _ in range(450):
        group = [group]
    body = _honest("130102")
    body["cells"][0]["group"] = [group]
    _refused(body, "malformed answer")


def test_figures_nested_deeper_than_any_release_are_never_the_same() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert not same_figures(deep, deep)


# --- A6: public data is exact, whatever the answer says -------------------------------


def test_a_public_answer_may_not_state_a_noise_scale() -> None:
    spec = QuerySpec("schools", Measure("count"), (), None, (YEAR,))
    query = _query(spec)
    body = _honest("130102", spec, rows=[(3,)])
    assert body["mechanism"] == PUBLIC_MECHANISM
    _verify(body, query, public=True)
    body["scale"] = 1e15
    with pytest.raises(VerificationError, match="noise scale for public data"):
        _verify(body, query, public=True)


# --- A9: integers exactly ------------------------------------------------------------


def _release() -> tuple[dict[str, Any], list[Any]]:
    query = _query()
    answers = {n: _verify(_honest(n), query, node=n) for n in NODES}
    body = release_body(
        coordinator_id="coord", query=query, answers=answers, missing=[],
        targeted=sorted(NODES), threshold=THRESHOLD, public=False,
    )  # fmt: skip
    return body, [a for _, a in answers.values()]


@pytest.mark.parametrize("shift", [1e-7, 0.5])
def test_a_count_restated_as_a_nearby_float_is_refused(shift: float) -> None:
    body, answers = _release()
    body["province"][0]["value"] += shift
    with pytest.raises(VerificationError, match="not the combination"):
        check_release(body, _query(), answers, public=False)


def test_a_huge_count_cannot_be_shifted_within_the_float_tolerance() -> None:
    query = _query()
    answers = {}
    for node in NODES:
        body = _honest(node)
        half, big = mechanisms.half_width(body["scale"]), 2**61
        body["cells"] = [{"group": ["M"], "value": big, "lower": big - half, "upper": big + half}]
        answers[node] = _verify(body, query, node=node)
    release = release_body(
        coordinator_id="coord", query=query, answers=answers, missing=[],
        targeted=sorted(NODES), threshold=THRESHOLD, public=False,
    )  # fmt: skip
    verified = [a for _, a in answers.values()]
    check_release(release, query, verified, public=False)
    release["province"][0]["value"] = float(2**62) + 4e9  # ~1e-9 relative
    with pytest.raises(VerificationError, match="not the combination"):
        check_release(release, query, verified, public=False)


@given(st.integers(min_value=-(2**62), max_value=2**62), st.floats(allow_nan=False))
@settings(max_examples=200)
def test_an_integer_equals_a_float_only_when_exactly_equal(whole: int, stated: float) -> None:
    assert same_figures(whole, stated) == (whole == stated)
    assert same_figures([{"v": whole}], [{"v": stated}]) == (whole == stated)


# --- A5: the coordinator's threshold, catalogue and coverage -------------------------


@pytest.mark.parametrize("threshold", [0, THRESHOLD - 1, THRESHOLD + 1])
def test_a_release_must_use_the_catalogues_threshold(threshold: int) -> None:
    query = _query()
    answers = {n: _verify(_honest(n), query, node=n) for n in NODES}
    body = release_body(
        coordinator_id="coord", query=query, answers=answers, missing=[],
        targeted=sorted(NODES), threshold=threshold, public=False,
    )  # fmt: skip
    with pytest.raises(VerificationError, match="publication threshold"):
        check_release(body, query, [a for _, a in answers.values()], public=False)


def test_a_release_under_another_catalogue_is_refused() -> None:
    body, answers = _release()
    body["catalogue_digest"] = "00" * 32
    with pytest.raises(VerificationError, match="another catalogue"):
        check_release(body, _query(), answers, public=False)


def test_a_release_must_state_the_coverage_its_nodes_give() -> None:
    query = _query()
    raw, answer = _verify(_honest("130102"), query)
    body = release_body(
        coordinator_id="coord", query=query, answers={"130102": (raw, answer)},
        missing=["130104"], targeted=sorted(NODES), threshold=THRESHOLD, public=False,
    )  # fmt: skip
    check_release(body, query, [answer], public=False)
    for coverage in (1.0, "all", None):
        with pytest.raises(VerificationError, match="coverage"):
            check_release({**body, "coverage": coverage}, query, [answer], public=False)


@pytest.mark.parametrize(
    "population",
    [
        "x",
        [1],
        {"share": "x", "eligible_answered": []},
        {"eligible_answered": 1},
        {"eligible_answered": 10, "eligible_targeted": 10, "share": 0.5, "unknown": []},
        {"eligible_answered": 20, "eligible_targeted": 10, "share": 2.0, "unknown": []},
        {"eligible_answered": 5, "eligible_targeted": 10, "share": 0.5, "unknown": [1]},
    ],
)
def test_a_release_with_a_malformed_population_is_refused(population: Any) -> None:
    body, answers = _release()
    fine = {"eligible_answered": 5, "eligible_targeted": 10, "share": 0.5, "unknown": []}
    check_release({**body, "population": fine}, _query(), answers, public=False)
    with pytest.raises(VerificationError, match="malformed release"):
        check_release({**body, "population": population}, _query(), answers, public=False)


# --- A10: one meaning for signed bytes -----------------------------------------------


def test_a_signed_answer_with_a_duplicate_key_is_refused() -> None:
    query = _query()
    note = sign_checkpoint(
        Checkpoint(member_origin("node", "130102"), 5, bytes(32)), key=NODES["130102"]
    )
    good = answer_payload(
        _honest("130102"), 2, note, EPSILON, query_id=query.query_id, query_sha256=query.digest
    )
    assert json.loads(good)["query_id"] == query.query_id
    duplicated = b'{"query_id":"' + b"cd" * 16 + b'",' + good[1:]
    envelope = sign_envelope(payload_type=ANSWER_V1, payload=duplicated, key=NODES["130102"])
    with pytest.raises(VerificationError, match="duplicate key"):
        verify_answer(
            envelope, manifest=MANIFEST, node_id="130102", expected_query=query, public=False
        )
