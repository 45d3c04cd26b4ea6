"""Secure aggregation's protocol (protocol.secure) with real node engines, keys and noise.

Three real county homes answer a secure count through the node's own request path; the
coordinator's and the second aggregator's partials are made with their real keys; the
release is checked the way the analyst and the auditor check it.
"""

from __future__ import annotations

import base64
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securefed import (
    AGGREGATOR,
    ANALYST,
    COORDINATOR,
    YEAR,
    SecureHomes,
    exact_count,
    make_secure_homes,
)

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import Envelope, parse_json
from fedscreen.crypto.signing import SigningKey, seal_to
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.node import store
from fedscreen.node.requests import handle_query
from fedscreen.protocol import secure
from fedscreen.protocol.answer import SHARES_MECHANISM, VerifiedAnswer, verify_answer
from fedscreen.protocol.combine import discrete_laplace_variance
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.protocol.release import SecureOutcome, check_release, release_body
from fedscreen.query.sqlparse import parse_sql
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"
EPSILON = 0.5


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> SecureHomes:
    return make_secure_homes(tmp_path_factory.mktemp("secure"))


def _query(
    homes: SecureHomes, sql: str = SQL, epsilon: float = EPSILON
) -> tuple[SignedQuery, bytes]:
    identity = load_identity(homes.analyst)
    unsigned = SignedQuery(
        new_query_id(), ANALYST, 0, replace(parse_sql(sql), secure=True), epsilon, None, ()
    )
    signed, envelope = issue_query(unsigned, key=identity.signing_key())
    return signed, envelope.to_json().encode()


def _answers(homes: SecureHomes, query: SignedQuery, envelope: bytes) -> list[VerifiedAnswer]:
    manifest = load_identity(homes.coordinator).manifest()
    verified = []
    for node, config in homes.nodes.items():
        conn = store.connect(config.database)
        try:
            raw = handle_query(
                config, config.policy(), manifest, envelope, conn=conn, now_ms=query.issued_at_ms
            )
        finally:
            conn.close()
        verified.append(
            verify_answer(
                Envelope.from_json(raw),
                manifest=manifest,
                node_id=node,
                expected_query=query,
                public=False,
            )
        )
    return verified


def _key(home: Path) -> SigningKey:
    return load_identity(home).signing_key()


def _manifest(homes: SecureHomes) -> Manifest:
    return load_identity(homes.coordinator).manifest()


def _partials(
    homes: SecureHomes, query: SignedQuery, answers: list[VerifiedAnswer]
) -> list[tuple[str, secure.PartialBody]]:
    made = []
    for member, home in ((COORDINATOR, homes.coordinator), (AGGREGATOR, homes.aggregator)):
        key = _key(home)
        body = secure.aggregate(query, answers, me=member, key=key, academic_year=None, min_nodes=3)
        envelope = secure.sign_partial(
            body, key, query_id=query.query_id, query_sha256=query.digest
        )
        partial = secure.verify_partial(
            envelope, manifest=_manifest(homes), aggregator_id=member, expected_query=query
        )
        made.append((envelope.to_json(), partial))
    return made


def test_a_secure_answer_holds_no_county_value(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    for answer in answers:
        body = answer.body
        assert body["mechanism"] == secure_mechanism()
        assert all(set(cell) == {"group"} for cell in body["cells"])
        assert set(body["shares"]) == {COORDINATOR, AGGREGATOR}
        assert answer.charged == EPSILON  # the ledger charges as for any query
        # the exact count appears nowhere in the signed body
        exact = exact_count(homes.nodes[answer.node_id])
        assert str(exact) not in "".join(
            str(v) for v in _scalars(body) if not isinstance(v, str) or len(v) < 40
        )


def secure_mechanism() -> str:
    return SHARES_MECHANISM


def _scalars(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in _scalars(v)]
    return [value]


def test_each_share_alone_is_no_value_and_both_sum_to_the_exact_count(
    homes: SecureHomes,
) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    for answer in answers:
        mine = secure.open_shares(answer, me=COORDINATOR, key=_key(homes.coordinator))
        theirs = secure.open_shares(answer, me=AGGREGATOR, key=_key(homes.aggregator))
        totals = [(a + b) % secure.MODULUS for a, b in zip(mine, theirs, strict=True)]
        conn = store.connect(homes.nodes[answer.node_id].database)
        try:
            rows = dict(
                conn.execute(
                    "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = ? GROUP BY sex",
                    (YEAR,),
                ).fetchall()
            )
        finally:
            conn.close()
        groups = [cell.group[0] for cell in answer.answer.cells]
        assert totals == [rows.get(g, 0) for g in groups]
        # a share is uniform: one near 2^64 is the rule, not a count
        assert any(s > 2**32 for s in mine + theirs)
        # neither aggregator opens the other's box
        with pytest.raises(VerificationError):
            secure.open_shares(answer, me=AGGREGATOR, key=_key(homes.coordinator))


def test_the_release_is_the_exact_total_plus_two_draws(homes: SecureHomes) -> None:
    """Over many partial pairs of the same answers, the released value's mean is the exact
    province total and its variance that of two discrete-Laplace draws at ε."""
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    exact = sum(exact_count(c) for c in homes.nodes.values())
    scale = 1 / EPSILON
    totals = []
    for _ in range(300):
        partials = _partials(homes, query, answers)
        cells = SecureOutcome((COORDINATOR, AGGREGATOR), tuple(partials)).cells(0)
        totals.append(sum(int(c["value"]) for c in cells))
    # sum over the cells of (exact cell + two draws): each cell's noise is independent
    cells_n = len(answers[0].answer.cells)
    variance = 2 * cells_n * discrete_laplace_variance(scale)
    mean = statistics.fmean(totals)
    assert abs(mean - exact) < 5 * math.sqrt(variance / len(totals))
    observed = statistics.pvariance(totals)
    assert 0.6 * variance < observed < 1.6 * variance


def test_a_release_verifies_and_every_tampering_is_caught(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    partials = tuple(_partials(homes, query, answers))
    manifest = _manifest(homes)
    body = _release(query, answers, SecureOutcome((COORDINATOR, AGGREGATOR), partials))
    check_release(body, query, answers, public=False, manifest=manifest)
    assert [c["nodes"] for c in body["province"]] == [3] * len(body["province"])

    # a changed figure
    forged = _copy(body)
    forged["province"][0]["value"] += 7
    with pytest.raises(VerificationError, match="combination of the partials"):
        check_release(forged, query, answers, public=False, manifest=manifest)
    # the aggregator's partial swapped for one over two nodes only
    fewer = secure.aggregate(
        query, answers[:2], me=AGGREGATOR, key=_key(homes.aggregator), academic_year=None,
        min_nodes=2,
    )  # fmt: skip
    other = secure.sign_partial(
        fewer, _key(homes.aggregator), query_id=query.query_id, query_sha256=query.digest
    )
    forged = _copy(body)
    forged["secure"]["partials"][1] = other.to_json()
    with pytest.raises(VerificationError, match="other node answers"):
        check_release(forged, query, answers, public=False, manifest=manifest)
    # the aggregator's partial signed by the coordinator in the aggregator's place
    theirs = secure.aggregate(
        query, answers, me=AGGREGATOR, key=_key(homes.aggregator), academic_year=None,
        min_nodes=3,
    )  # fmt: skip
    impostor = secure.sign_partial(
        theirs, _key(homes.coordinator), query_id=query.query_id, query_sha256=query.digest
    )
    forged = _copy(body)
    forged["secure"]["partials"][1] = impostor.to_json()
    with pytest.raises(VerificationError):
        check_release(forged, query, answers, public=False, manifest=manifest)
    # no manifest: a secure release cannot be checked
    with pytest.raises(VerificationError, match="manifest"):
        check_release(body, query, answers, public=False)
    # a failure that still states figures
    forged = _copy(body)
    forged["secure"]["failure"] = "made up"
    with pytest.raises(VerificationError, match="no figure"):
        check_release(forged, query, answers, public=False, manifest=manifest)


def test_a_partial_for_another_query_is_refused(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    key = _key(homes.aggregator)
    body = secure.aggregate(query, answers, me=AGGREGATOR, key=key, academic_year=None, min_nodes=3)
    other, _ = _query(homes)
    signed = secure.sign_partial(body, key, query_id=other.query_id, query_sha256=other.digest)
    with pytest.raises(VerificationError, match="another query"):
        secure.verify_partial(
            signed, manifest=_manifest(homes), aggregator_id=AGGREGATOR, expected_query=query
        )


def test_aggregate_refuses_too_few_nodes_and_mixed_epsilons(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    key = _key(homes.coordinator)
    with pytest.raises(QueryRefused, match="at least 3"):
        secure.aggregate(
            query, answers[:2], me=COORDINATOR, key=key, academic_year=None, min_nodes=3
        )
    with pytest.raises(QueryRefused, match="twice"):
        secure.aggregate(
            query, [*answers, answers[0]], me=COORDINATOR, key=key, academic_year=None,
            min_nodes=3,
        )  # fmt: skip


def test_a_node_without_a_second_aggregator_refuses_at_no_cost(tmp_path: Path) -> None:
    homes = make_secure_homes(tmp_path, students=50, nodes=("130104",))
    _, envelope = _query(homes)
    config = homes.nodes["130104"]
    manifest = load_identity(homes.coordinator).manifest()
    without = Manifest(
        manifest.federation, manifest.version, manifest.issued_at, manifest.authority_key,
        tuple(m for m in manifest.members if m.role != "aggregator"),
    )  # fmt: skip
    conn = store.connect(config.database)
    try:
        with pytest.raises(QueryRefused, match="aggregator"):
            handle_query(config, config.policy(), without, envelope, conn=conn, now_ms=0)
        spent = conn.execute("SELECT COUNT(*) FROM ledger_charge").fetchone()[0]
    finally:
        conn.close()
    assert spent == 0


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=2**62), max_size=50))
def test_split_shares_sum_to_the_values(values: list[int]) -> None:
    first, second = secure.split(values)
    assert [(a + b) % secure.MODULUS for a, b in zip(first, second, strict=True)] == values
    assert all(0 <= s < secure.MODULUS for s in first + second)


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_to_signed_reads_a_negative_total_back(total: int) -> None:
    assert secure.to_signed(total % secure.MODULUS) == total


def test_a_box_sealed_for_another_node_or_party_is_refused(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answer = _answers(homes, query, envelope)[0]
    key = _key(homes.coordinator)
    cells = len(answer.answer.cells)
    for plaintext, why in (
        ({"node_id": "130999", "recipient": COORDINATOR, "shares": [0] * cells}, "another"),
        ({"node_id": answer.node_id, "recipient": AGGREGATOR, "shares": [0] * cells}, "another"),
        ({"node_id": answer.node_id, "recipient": COORDINATOR, "shares": [0]}, "number of cells"),
        (
            {"node_id": answer.node_id, "recipient": COORDINATOR, "shares": [-1] * cells},
            "malformed",
        ),
        (
            {"node_id": answer.node_id, "recipient": COORDINATOR, "shares": [2**64] * cells},
            "malformed",
        ),
    ):
        box = base64.b64encode(seal_to(key.public_key, canonical_json(plaintext))).decode()
        shares = {**dict(answer.answer.shares or {}), COORDINATOR: box}
        forged = replace(answer, answer=replace(answer.answer, shares=shares))
        with pytest.raises(VerificationError, match=why):
            secure.open_shares(forged, me=COORDINATOR, key=key)


def _release(
    query: SignedQuery, answers: list[VerifiedAnswer], outcome: SecureOutcome
) -> dict[str, Any]:
    raw = {a.node_id: (b"{}", a) for a in answers}
    return release_body(
        coordinator_id=COORDINATOR, query=query, answers=raw, missing=[],
        targeted=sorted(raw), threshold=10, public=False, secure=outcome,
    )  # fmt: skip


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    result = parse_json(json.dumps(body))
    assert isinstance(result, dict)
    return result


def test_city_cells_are_released_only_over_enough_of_the_citys_nodes(
    homes: SecureHomes,
) -> None:
    """Grouped by city: the three nodes are all in 石家庄 (1301), so that city's cell is
    released and every other city's (exact zeros summed) is dropped by both aggregators."""
    sql = (
        f"SELECT city_code, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
        "GROUP BY city_code"
    )
    query, envelope = _query(homes, sql)
    answers = _answers(homes, query, envelope)
    assert len(answers[0].answer.cells) == 11  # every city's cell leaves each node, shared
    partials = _partials(homes, query, answers)
    cells = SecureOutcome((COORDINATOR, AGGREGATOR), tuple(partials)).cells(0)
    assert [c["group"] for c in cells] == [["1301"]]
    # the same answers as if the last came from 衡水 (1311): 石家庄 has two counties left
    moved = [*answers[:2], replace(answers[2], node_id="131102")]
    assert secure.released_cells(query.spec, moved, 3) == []
    assert [group for _, group, _ in secure.released_cells(query.spec, moved, 2)] == [["1301"]]
    assert secure.city_of("130104") == "1301"
    assert secure.city_of("hebei-university") is None


def test_a_cell_few_counties_list_is_not_released(homes: SecureHomes) -> None:
    """A county that narrowed a domain omits that cell: a cell listed by fewer answers than
    min_nodes is dropped, and each released cell says how many answers it combines."""
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)
    narrowed = [
        replace(a, answer=replace(a.answer, cells=a.answer.cells[1:])) if i else a
        for i, a in enumerate(answers)
    ]
    released = secure.released_cells(query.spec, narrowed, 3)
    first = answers[0].answer.cells[0].group
    assert [group for _, group, _ in released] == [
        list(c.group) for c in answers[0].answer.cells[1:]
    ]
    assert list(first) not in [group for _, group, _ in released]
    assert {n for _, _, n in released} == {3}
    assert secure.released_cells(query.spec, narrowed, 1)[0][2] == 1


def test_a_countys_own_minimum_leaves_it_out_of_smaller_sums(homes: SecureHomes) -> None:
    query, envelope = _query(homes)
    answers = _answers(homes, query, envelope)

    def wanting(*wishes: int) -> list[VerifiedAnswer]:
        return [
            replace(a, body={**a.body, "min_nodes": m})
            for a, m in zip(answers, wishes, strict=True)
        ]

    # three answers, one asking for four: without it two remain, fewer than the others' 3
    kept, left = secure.eligible(wanting(3, 3, 4), 3)
    assert kept == []
    assert len(left) == 3
    # the others ask for two: they are summed, the one asking for four is left out
    kept, left = secure.eligible(wanting(2, 2, 4), 2)
    assert [a.node_id for a in kept] == sorted(a.node_id for a in answers[:2])
    assert "at least 4" in left[answers[2].node_id]
    kept, left = secure.eligible(wanting(0, 3, 3), 3)
    assert (len(kept), left) == (3, {})
    with pytest.raises(VerificationError, match="min_nodes"):
        secure.eligible([replace(answers[0], body={**answers[0].body, "min_nodes": "9"})], 2)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.3, max_value=12.0))
def test_the_two_draw_interval_is_the_exact_95_percent_one(scale: float) -> None:
    """Against the distribution of N1 + N2 summed term by term: h covers at least 95%,
    h - 1 does not."""
    q = math.exp(-1 / scale)
    c = (1 - q) / (1 + q)
    reach = int(40 * scale) + 40  # beyond it the mass is below e^-40
    one = {k: c * q ** abs(k) for k in range(-reach, reach + 1)}
    two: dict[int, float] = {}
    for a, pa in one.items():
        for b in range(-reach, reach + 1):
            if abs(a + b) <= reach:
                two[a + b] = two.get(a + b, 0.0) + pa * one[b]
    half = secure.two_draw_half_width(scale)

    def covered(h: int) -> float:
        return sum(p for k, p in two.items() if abs(k) <= h)

    assert covered(half) >= 0.95 - 1e-9
    assert half == 0 or covered(half - 1) < 0.95 + 1e-9


def test_a_tampered_share_box_is_refused_by_every_verifier(homes: SecureHomes) -> None:
    """A box swapped for another (re-sealed to the same aggregator, so it would open)
    changes the node-signed payload: the answer no longer verifies."""
    query, envelope = _query(homes)
    config = homes.nodes["130104"]
    conn = store.connect(config.database)
    try:
        raw = handle_query(
            config, config.policy(), _manifest(homes), envelope, conn=conn,
            now_ms=query.issued_at_ms,
        )  # fmt: skip
    finally:
        conn.close()
    signed = json.loads(raw)
    payload = json.loads(base64.b64decode(signed["payload"]))
    cells = len(payload["answer"]["cells"])
    plain = {"node_id": "130104", "recipient": AGGREGATOR, "shares": [7] * cells}
    box = seal_to(_key(homes.aggregator).public_key, canonical_json(plain))
    payload["answer"]["shares"][AGGREGATOR] = base64.b64encode(box).decode()
    signed["payload"] = base64.b64encode(canonical_json(payload)).decode()
    with pytest.raises(VerificationError):
        verify_answer(
            Envelope.from_json(json.dumps(signed)),
            manifest=_manifest(homes),
            node_id="130104",
            expected_query=query,
            public=False,
        )
