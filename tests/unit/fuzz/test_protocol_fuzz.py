"""Issue 12: well-signed but malformed protocol messages are refused, never crash.

A signature only says who wrote the bytes, not that they are well formed: a member
whose key is in the manifest (or a bug in its software) can sign anything. Here real
keys of a real manifest sign arbitrary JSON and near-valid payloads with one field
replaced, deleted or added; each verify function must then return or raise
``VerificationError`` (``QueryRefused`` as well for a query: a node refuses it) —
never ``KeyError``, ``TypeError``, ``OverflowError`` or ``RecursionError``. What a
verify function returns must be usable: a verified budget statement answers
``remaining`` without crashing.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from fuzzkit import DEEP, FUZZ, deep, json_values, served_or_refused
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import (
    ANSWER_V1,
    BUDGET_V1,
    QUERY_V1,
    RELEASE_V1,
    Envelope,
    sign_envelope,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol.answer import VerifiedAnswer, answer_payload, verify_answer
from fedscreen.protocol.budget import verify_statement
from fedscreen.protocol.query import SignedQuery, query_digest, verify_query
from fedscreen.protocol.release import check_release, release_body
from fedscreen.query.spec import Comparison, Measure, QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, sign_checkpoint
from fedscreen.trust.manifest import Manifest, Member

AUTHORITY = SigningKey(bytes([1] * 32))
ANALYST = SigningKey(bytes([2] * 32))
NODE = SigningKey(bytes([3] * 32))
COORDINATOR = SigningKey(bytes([4] * 32))
NOW_MS = 1_767_225_600_000
MANIFEST = Manifest(
    federation="fuzz",
    version=1,
    issued_at="2026-01-01T00:00:00Z",
    authority_key=AUTHORITY.public_key,
    members=(
        Member("alice", "analyst", "Alice", ANALYST.public_key, "00" * 32),
        Member("130102", "node", "长安区", NODE.public_key, "11" * 32),
        Member("coordinator", "coordinator", "省平台", COORDINATOR.public_key, "22" * 32),
    ),
)
SPEC = QuerySpec(
    dataset="screenings",
    measure=Measure("count"),
    group_by=("sex",),
    where=Comparison("phq9_total", ">=", (10,)),
    years=("2024-2025",),
)
UNSIGNED = SignedQuery("ab" * 16, "alice", NOW_MS, SPEC, 0.3, None, ("130102",))
#: the query as ``_sign`` signs it, with the digest of those payload bytes
QUERY = replace(
    UNSIGNED, digest=query_digest(json.dumps(UNSIGNED.to_json(), ensure_ascii=False).encode())
)
NOTE = sign_checkpoint(Checkpoint(member_origin("node", "130102"), 5, bytes(32)), key=NODE)
ANSWER_BODY: dict[str, Any] = {
    "version": 1,
    "node_id": "130102",
    "analyst": "alice",
    "query": SPEC.to_json(),
    "epsilon": 0.3,
    "threshold": 20,
    "mechanism": "discrete_laplace",
    "scale": 1 / 0.3,  # the scale of a count at ε 0.3 (verify_answer recomputes it)
    "cells": [
        {"group": ["M"], "value": 120, "lower": 110.0, "upper": 130.0},
        {"group": ["F"], "value": 131, "lower": 121.0, "upper": 141.0},
    ],
}
ANSWER = json.loads(
    answer_payload(ANSWER_BODY, 2, NOTE, 0.3, query_id=QUERY.query_id, query_sha256=QUERY.digest)
)
STATEMENT: dict[str, Any] = {
    "version": 1,
    "node_id": "130102",
    "issued_at_ms": NOW_MS,
    "policy_digest": "sha256:" + "0" * 64,
    "limits": {
        "epsilon_per_node_per_year": 6.0,
        "max_epsilon_per_query": 0.5,
        "approval_above_epsilon": 0.3,
        "analyst_share": 0.4,
        "analyst_shares": {"alice": 0.6},
        "publication_threshold": 20,
        "max_groups": 200,
    },
    "spent": {"2024-2025": {"node_micro": 300000, "analysts": {"alice": 300000}}},
    "unit": "micro-epsilon",
}


def _sign(payload_type: str, value: Any, key: SigningKey) -> Envelope:
    payload = json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return sign_envelope(payload_type=payload_type, payload=payload, key=key)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


#: values that broke real verifiers: huge and non-finite numbers, wrong types, deep nesting
hostile = st.one_of(
    json_values,
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            10**400,
            -(10**400),
            2**64,
            1e308,
            -1,
            True,
            "",
            "1e999",
            [],
            {},
            json.loads(deep("[", "]", depth=400)),
        ]
    ),
)


@st.composite
def perturbed(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """``valid`` with one value replaced, one key deleted or one key added."""
    doc = copy.deepcopy(valid)
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["replace", "delete", "add"]))
    if not path:
        return draw(hostile) if how == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if how == "replace":
        parent[path[-1]] = draw(hostile)
    elif how == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(hostile)
    else:
        parent.append(draw(hostile))
    return doc


def payloads(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(perturbed(valid), perturbed(valid), hostile)


@FUZZ
@given(payloads(QUERY.to_json()))
@example({**QUERY.to_json(), "issued_at_ms": float("inf")})
@example({**QUERY.to_json(), "epsilon": float("nan")})
def test_signed_malformed_query_is_refused(payload: Any) -> None:
    envelope = _sign(QUERY_V1, payload, ANALYST)
    served_or_refused(
        lambda: verify_query(envelope, manifest=MANIFEST, now_ms=NOW_MS),
        (VerificationError, QueryRefused),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("depth", [100, 300, 400, 450, 480, 700, DEEP])
def test_a_deeply_nested_condition_is_refused_or_served(depth: int) -> None:
    """Nesting that JSON may parse but a recursive reader of conditions may not."""
    leaf = '{"column":"sex","op":"=","values":["M"]}'
    where = deep('{"op":"not","args":[', "]}", leaf, depth)
    payload = json.dumps({**QUERY.to_json(), "spec": {**SPEC.to_json(), "where": "WHERE"}})
    payload = payload.replace('"WHERE"', where)
    envelope = sign_envelope(payload_type=QUERY_V1, payload=payload.encode(), key=ANALYST)
    with contextlib.suppress(VerificationError, QueryRefused):
        verify_query(envelope, manifest=MANIFEST, now_ms=NOW_MS)


def test_a_query_with_a_non_finite_epsilon_is_refused() -> None:
    for bad in (float("nan"), float("inf"), -0.5, "1e999"):
        envelope = _sign(QUERY_V1, {**QUERY.to_json(), "epsilon": bad}, ANALYST)
        try:
            verify_query(envelope, manifest=MANIFEST, now_ms=NOW_MS)
        except (VerificationError, QueryRefused):
            continue
        raise AssertionError(f"epsilon {bad!r} was accepted")


def test_the_valid_query_verifies() -> None:
    envelope = _sign(QUERY_V1, QUERY.to_json(), ANALYST)
    assert verify_query(envelope, manifest=MANIFEST, now_ms=NOW_MS) == QUERY


@FUZZ
@given(payloads(ANSWER))
@example({**ANSWER, "charged": 10**400})
@example({**ANSWER, "log_index": float("inf")})
@example({**ANSWER, "answer": {**ANSWER_BODY, "query": {"measure": {"kind": "count"}}}})
def test_signed_malformed_answer_is_refused(payload: Any) -> None:
    envelope = _sign(ANSWER_V1, payload, NODE)
    served_or_refused(
        lambda: verify_answer(
            envelope, manifest=MANIFEST, node_id="130102", expected_query=QUERY, public=False
        ),
        VerificationError,
    )


def test_the_valid_answer_verifies() -> None:
    envelope = _sign(ANSWER_V1, ANSWER, NODE)
    verified = verify_answer(
        envelope, manifest=MANIFEST, node_id="130102", expected_query=QUERY, public=False
    )
    assert verified.log_index == 2


@FUZZ
@given(payloads(STATEMENT))
@example({**STATEMENT, "limits": {**STATEMENT["limits"], "analyst_share": 10**400}})
@example({**STATEMENT, "limits": {**STATEMENT["limits"], "epsilon_per_node_per_year": 1e308}})
def test_signed_malformed_budget_statement_is_refused(payload: Any) -> None:
    envelope = _sign(BUDGET_V1, payload, NODE).to_json().encode()

    def verify_and_use() -> None:
        statement = verify_statement(envelope, manifest=MANIFEST, node_id="130102")
        # what a verified statement offers must work on it: analysts plan with these
        for year in (*statement.years, "2030-2031"):
            statement.remaining(year, "alice")
            statement.remaining(year, "someone-else")
            statement.spent(year)

    served_or_refused(verify_and_use, VerificationError)


def test_the_valid_statement_verifies() -> None:
    envelope = _sign(BUDGET_V1, STATEMENT, NODE).to_json().encode()
    statement = verify_statement(envelope, manifest=MANIFEST, node_id="130102")
    assert statement.remaining_micro("2024-2025", "alice") == 3_300_000


def _release() -> tuple[dict[str, Any], list[VerifiedAnswer]]:
    envelope = _sign(ANSWER_V1, ANSWER, NODE)
    verified = verify_answer(
        envelope, manifest=MANIFEST, node_id="130102", expected_query=QUERY, public=False
    )
    raw = envelope.to_json().encode()
    body = release_body(
        coordinator_id="coordinator",
        query=QUERY,
        answers={"130102": (raw, verified)},
        missing=[],
        targeted=["130102"],
        threshold=10,  # the shipped catalogue's publication threshold
        public=False,
    )
    return json.loads(canonical_json(body)), [verified]


RELEASE, NODES = _release()


@FUZZ
@given(payloads(RELEASE))
@example({**RELEASE, "threshold": float("inf")})
@example({**RELEASE, "answers": [{}]})
@example({**RELEASE, "answers": [{**RELEASE["answers"][0], "epsilon": 10**400}]})  # found
def test_signed_malformed_release_is_refused(body: Any) -> None:
    # a coordinator signs it; what matters is that the checks on its content never crash
    envelope = _sign(RELEASE_V1, body, COORDINATOR)
    assert envelope.payload_type == RELEASE_V1
    served_or_refused(lambda: check_release(body, QUERY, NODES, public=False), VerificationError)


@FUZZ
@given(perturbed(ANSWER_BODY))
def test_release_over_malformed_answer_cells_is_refused(answer_body: Any) -> None:
    """A well-signed answer whose body is malformed: refused when verified or combined."""
    envelope = _sign(ANSWER_V1, {**ANSWER, "answer": answer_body}, NODE)

    def verify_and_check() -> None:
        verified = verify_answer(
            envelope, manifest=MANIFEST, node_id="130102", expected_query=QUERY, public=False
        )
        check_release(RELEASE, QUERY, [verified], public=False)

    served_or_refused(verify_and_check, VerificationError)


@pytest.mark.parametrize("epsilon", [10**400, -1, float("nan"), True, "0.3"])
def test_a_release_stating_an_impossible_epsilon_is_malformed(epsilon: object) -> None:
    """Found by the fuzzer: a huge integer ε crashed the parser (float() overflows)."""
    body = {**RELEASE, "answers": [{**RELEASE["answers"][0], "epsilon": epsilon}]}
    with pytest.raises(VerificationError, match="malformed release"):
        check_release(body, QUERY, NODES, public=False)


def test_the_valid_release_checks() -> None:
    check_release(RELEASE, QUERY, NODES, public=False)


def _answers() -> dict[str, bytes]:
    return {"130102": _sign(ANSWER_V1, ANSWER, NODE).to_json().encode()}


@FUZZ
@given(payloads(RELEASE))
@example({**RELEASE, "answers": "not a list"})
@example([RELEASE])
def test_the_analyst_refuses_a_well_signed_malformed_release(body: Any) -> None:
    """``fedscreen query`` and ``report run`` verify what the coordinator signed."""
    from fedscreen.analyst.query import verify_release

    raw = _sign(RELEASE_V1, body, COORDINATOR).to_json().encode()
    served_or_refused(
        lambda: verify_release(raw, manifest=MANIFEST, query=QUERY, answers=_answers()),
        VerificationError,
    )


def test_the_analyst_verifies_the_valid_release() -> None:
    from fedscreen.analyst.query import verify_release

    raw = _sign(RELEASE_V1, RELEASE, COORDINATOR).to_json().encode()
    verified = verify_release(raw, manifest=MANIFEST, query=QUERY, answers=_answers())
    assert verified.body["query_id"] == QUERY.query_id
