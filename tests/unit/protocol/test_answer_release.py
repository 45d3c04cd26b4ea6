"""Answers bound to their signed query, typed answer and release bodies, one year, one mechanism.

Real Ed25519 keys, a real signed manifest and real signed checkpoints; the answers
are signed as a node signs them (``answer_payload``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedanswers import ANALYST, MANIFEST, NODES, YEAR, signed_answer, signed_query

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import VerificationError
from fedscreen.protocol import budget
from fedscreen.protocol.answer import (
    PUBLIC_MECHANISM,
    VerifiedAnswer,
    dataset_public,
    to_micro,
    verify_answer,
)
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.protocol.query import SignedQuery, issue_query, verify_query
from fedscreen.protocol.release import check_release, parse_release, release_body
from fedscreen.query import mechanisms
from fedscreen.query.spec import Measure, QuerySpec

NO_YEAR = QuerySpec("screenings", Measure("count"), ("sex",), None, ())
#: the noise an honest node draws for a count at ε 0.3, and its 95% half width
SCALE = mechanisms.scale_for(epsilon=0.3, sensitivity=1)
HALF = mechanisms.half_width(SCALE)


def _query(spec: QuerySpec = NO_YEAR, epsilon: float = 0.3) -> SignedQuery:
    return signed_query(spec, epsilon)


def _body(node: str, spec: QuerySpec, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 1,
        "node_id": node,
        "analyst": "alice",
        "query": spec.to_json(),
        "epsilon": 0.3,
        "mechanism": "discrete_laplace",
        "scale": SCALE,
        "threshold": 10,
        "cells": [
            {"group": ["M"], "value": 120, "lower": 120 - HALF, "upper": 120 + HALF},
            {"group": ["F"], "value": 131, "lower": 131 - HALF, "upper": 131 + HALF},
        ],
    }
    body.update(changes)
    return body


def _verify(
    envelope: Envelope, query: SignedQuery, *, node: str = "130102", **kw: Any
) -> VerifiedAnswer:
    kw.setdefault("public", False)
    return verify_answer(envelope, manifest=MANIFEST, node_id=node, expected_query=query, **kw)


def test_the_digest_is_of_the_signed_payload_however_the_envelope_is_encoded() -> None:
    query = _query()
    envelope = issue_query(replace(query, digest=""), key=ANALYST)[1]
    doc = json.loads(envelope.to_json())
    # re-encoded on the way: other key order and spacing, the URL-safe base64 alphabet
    doc["payload"] = doc["payload"].replace("+", "-").replace("/", "_")
    text = json.dumps(dict(reversed(list(doc.items()))), indent=1)
    verified = verify_query(Envelope.from_json(text), manifest=MANIFEST, now_ms=0)
    assert verified.digest == query.digest
    assert len(query.digest) == 64


def test_an_answer_is_bound_to_its_query_id_digest_and_epsilon() -> None:
    query = _query()
    spec = replace(NO_YEAR, years=(YEAR,))
    answer = _verify(
        signed_answer("130102", _body("130102", spec), query), query, academic_year=YEAR
    )
    assert (answer.query_id, answer.query_sha256, answer.charged) == (
        query.query_id,
        query.digest,
        0.3,
    )
    assert answer.answer.cells[0].value == 120
    assert answer.answer.cells[0].lower == 120 - HALF
    envelope = signed_answer("130102", _body("130102", spec), query)
    with pytest.raises(VerificationError, match="another query id"):
        _verify(envelope, replace(query, query_id="cd" * 16))
    with pytest.raises(VerificationError, match="digest differs"):
        _verify(envelope, _query(epsilon=0.4))  # the same question at another ε, re-signed
    with pytest.raises(VerificationError, match="another ε"):
        _verify(envelope, replace(query, epsilon=0.4))
    with pytest.raises(VerificationError, match="answers no signed query"):
        _verify(signed_answer("130102", _body("130102", spec), None), query)
    with pytest.raises(VerificationError, match="charged another ε"):
        _verify(signed_answer("130102", _body("130102", spec), query, charged=0.2), query)
    # a stored answer given again charges nothing
    assert (
        _verify(signed_answer("130102", _body("130102", spec), query, charged=0), query).charged
        == 0
    )


def test_one_academic_year_for_a_query_without_years() -> None:
    query = _query()
    spec = replace(NO_YEAR, years=(YEAR,))
    envelope = signed_answer("130102", _body("130102", spec), query)
    with pytest.raises(VerificationError, match="another academic year"):
        _verify(envelope, query, academic_year="2023-2024")
    two = replace(NO_YEAR, years=("2023-2024", YEAR))
    with pytest.raises(VerificationError, match="another academic year"):
        _verify(signed_answer("130102", _body("130102", two), query), query)
    named = _query(spec)  # a query that names its year is answered for exactly that year
    with pytest.raises(VerificationError, match="different question"):
        _verify(signed_answer("130102", _body("130102", two), named), named)


def test_the_mechanism_comes_from_the_catalogue_not_the_answer() -> None:
    assert dataset_public(QuerySpec("schools", Measure("count"), (), None, ()))
    assert not dataset_public(NO_YEAR)
    with pytest.raises(VerificationError, match="not in the catalogue"):
        dataset_public(QuerySpec("secrets", Measure("count"), (), None, ()))
    query, spec = _query(), replace(NO_YEAR, years=(YEAR,))
    exact = _body("130102", spec, mechanism=PUBLIC_MECHANISM, epsilon=0.0)
    del exact["scale"]
    # a node claiming its screenings are public (exact, no noise, no suppression) is refused
    with pytest.raises(VerificationError, match="mechanism for noisy data"):
        _verify(signed_answer("130102", exact, query, charged=0), query)
    no_scale = _body("130102", spec)
    del no_scale["scale"]
    with pytest.raises(VerificationError, match="needs its scale"):
        _verify(signed_answer("130102", no_scale, query), query)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.pop("mechanism"),
        lambda b: b.update(cells="none"),
        lambda b: b["cells"][0].update(value=1.5),
        lambda b: b["cells"][0].update(value=True),
        lambda b: b["cells"][0].pop("lower"),
        lambda b: b["cells"][1].update(group="M"),
        lambda b: b.update(epsilon=-1),
        lambda b: b.update(scale=1e300),
        lambda b: b.update(query={"dataset": "screenings"}),
    ],
)
def test_a_well_signed_malformed_answer_is_a_verification_error(change: Any) -> None:
    query, spec = _query(), replace(NO_YEAR, years=(YEAR,))
    body = _body("130102", spec)
    change(body)
    with pytest.raises(VerificationError, match="malformed answer from 130102"):
        _verify(signed_answer("130102", body, query, charged=0.3), query)  # the charge honest


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_answers_count_micro_epsilon_as_the_ledger_does(epsilon: float) -> None:
    assert to_micro(epsilon) == budget.to_micro(epsilon)


def _release(query: SignedQuery) -> tuple[dict[str, Any], list[VerifiedAnswer]]:
    spec = replace(query.spec, years=query.spec.years or (YEAR,))
    verified = {}
    for n in NODES:
        envelope = signed_answer(n, _body(n, spec), query)
        verified[n] = (envelope.to_json().encode(), _verify(envelope, query, node=n))
    body = release_body(
        coordinator_id="coordinator", query=query, answers=verified, missing=[],
        targeted=list(NODES), threshold=10, public=False,
        academic_year=None if query.spec.years else YEAR,
    )  # fmt: skip
    return json.loads(canonical_json(body)), [a for _, a in verified.values()]


def test_a_release_is_checked_with_figures_to_a_relative_tolerance() -> None:
    query = _query()
    body, answers = _release(query)
    assert body["academic_year"] == YEAR
    assert body["query_sha256"] == query.digest
    check_release(body, query, answers, public=False)
    nudged = copy.deepcopy(body)
    nudged["province"][0]["lower"] = math.nextafter(nudged["province"][0]["lower"], 0)
    check_release(nudged, query, answers, public=False)  # another libm's last bit
    off = copy.deepcopy(body)
    off["province"][0]["lower"] -= 1e-3
    with pytest.raises(VerificationError, match="not the combination"):
        check_release(off, query, answers, public=False)
    # combined as public data (exact sums, no intervals) the answers give other figures
    with pytest.raises(VerificationError, match="not the combination"):
        check_release(body, query, answers, public=True)


def test_a_release_must_state_the_one_year_its_answers_are_for() -> None:
    query = _query()
    body, answers = _release(query)
    for year, match in ((None, "does not say which"), ("2023-2024", "another academic year")):
        changed = {**body, "academic_year": year}
        with pytest.raises(VerificationError, match=match):
            check_release(changed, query, answers, public=False)
    named = _query(replace(NO_YEAR, years=(YEAR,)))
    body, answers = _release(named)
    with pytest.raises(VerificationError, match="pins a year"):
        check_release({**body, "academic_year": YEAR}, named, answers, public=False)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.pop("answers"),
        lambda b: b.update(answers=[{"node_id": "130102"}]),
        lambda b: b.update(answers=b["answers"] + b["answers"][:1]),
        lambda b: b.update(per_node=[]),
        lambda b: b.update(threshold="10"),
        lambda b: b.update(academic_year=2024),
        lambda b: b.update(targeted="130102"),
        lambda b: b.update(query=None),
    ],
)
def test_a_malformed_release_is_a_verification_error(change: Any) -> None:
    query = _query()
    body, answers = _release(query)
    change(body)
    with pytest.raises(VerificationError, match="malformed release"):
        parse_release(body)
    with pytest.raises(VerificationError):
        check_release(body, query, answers, public=False)


def test_combine_without_a_catalogue_needs_answers_that_agree() -> None:
    noisy = NodeCells(
        "a", {"scale": 3.0, "cells": [{"group": [], "value": 5, "lower": 0, "upper": 9}]}
    )
    exact = NodeCells("b", {"cells": [{"group": [], "value": 5}]})
    assert combine("count", [exact, exact], threshold=10)[0]["lower"] == 10
    with pytest.raises(ValueError, match="do not agree on the mechanism"):
        combine("count", [noisy, exact], threshold=10)
