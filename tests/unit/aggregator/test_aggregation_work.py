"""One aggregation request, with real county answers: verified, summed, refused when it must be.

Four real node homes answer a secure count through their own request path; the
aggregator's partial must verify as the analyst verifies it, and with the coordinator's
partial give the exact total plus two noise draws. Everything the aggregator refuses is
logged and stores nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from aggregatorhelp import EPSILON, FOUR, node_answers, secure_query, work
from securefed import AGGREGATOR, COORDINATOR, SecureHomes, exact_count, make_secure_homes

from fedscreen._util.sqlite import connect
from fedscreen.aggregator.home import AggregatorHome
from fedscreen.aggregator.store import PartialStore
from fedscreen.aggregator.work import answer_request, min_nodes
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused
from fedscreen.protocol import secure
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.query import FRESHNESS_WINDOW_MS
from fedscreen.query.mechanisms import scale_for
from fedscreen.trust.identity import load_identity


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> SecureHomes:
    return make_secure_homes(tmp_path_factory.mktemp("agg"), students=150, nodes=FOUR)


@pytest.fixture
def agg(homes: SecureHomes) -> AggregatorHome:
    return AggregatorHome.open(homes.aggregator)


@pytest.fixture
def store(tmp_path: Path, agg: AggregatorHome) -> PartialStore:
    """A fresh database for each test, with the aggregator's real key."""
    opened = PartialStore(
        connect(tmp_path / "aggregator.db"), member_id=agg.member_id, key=agg.identity.signing_key()
    )
    yield opened
    opened.close()


def _now() -> int:
    return int(time.time() * 1000)


def test_the_catalogue_says_how_many_nodes_a_partial_needs(agg: AggregatorHome) -> None:
    assert min_nodes(agg.catalogue) == agg.catalogue.secure.min_nodes == 3


def test_a_partial_over_real_answers_verifies_and_sums_to_the_total(
    homes: SecureHomes, agg: AggregatorHome, store: PartialStore
) -> None:
    query, envelope = secure_query(homes)
    answers = node_answers(homes, query, envelope)[:3]
    raw = answer_request(work(query, envelope, answers), home=agg, store=store, now_ms=_now())
    manifest = load_identity(homes.aggregator).manifest()
    partial = secure.verify_partial(
        Envelope.from_json(raw), manifest=manifest, aggregator_id=AGGREGATOR, expected_query=query
    )
    verified = [
        verify_answer(
            Envelope.from_json(a), manifest=manifest, node_id=n, expected_query=query, public=False
        )
        for n, a in answers
    ]
    secure.check_nodes(partial, verified)
    assert partial.scale == pytest.approx(scale_for(epsilon=EPSILON, sensitivity=1))
    # the coordinator's partial over the same answers: together, the exact total + 2 draws
    coord_key = load_identity(homes.coordinator).signing_key()
    body = secure.aggregate(query, verified, me=COORDINATOR, key=coord_key, academic_year=None,
                            min_nodes=3)  # fmt: skip
    own = secure.verify_partial(
        secure.sign_partial(body, coord_key, query_id=query.query_id, query_sha256=query.digest),
        manifest=manifest, aggregator_id=COORDINATOR, expected_query=query,
    )  # fmt: skip
    cells = secure.combine_partials([own, partial], aggregator_ids=(COORDINATOR, AGGREGATOR),
                                    threshold=0)  # fmt: skip
    total = sum(c["value"] for c in cells)
    exact = sum(exact_count(homes.nodes[n]) for n, _ in answers)
    # two discrete-Laplace draws per cell at scale 2: 12 scales per cell is beyond 1e-5
    assert abs(total - exact) <= len(cells) * 24 * partial.scale
    status = store.status()
    assert (status.partials, status.given, status.refusals) == (1, 1, 0)


def test_the_same_request_again_gets_the_same_bytes_and_costs_nothing(
    homes: SecureHomes, agg: AggregatorHome, store: PartialStore
) -> None:
    query, envelope = secure_query(homes)
    request = work(query, envelope, node_answers(homes, query, envelope)[:3])
    first = answer_request(request, home=agg, store=store, now_ms=_now())
    size = store.status().log_size
    assert answer_request(request, home=agg, store=store, now_ms=_now()) == first
    assert store.status().log_size == size


def test_an_answer_summed_before_is_refused_and_logged(
    homes: SecureHomes, agg: AggregatorHome, store: PartialStore
) -> None:
    query, envelope = secure_query(homes)
    answers = node_answers(homes, query, envelope)
    answer_request(work(query, envelope, answers[:3]), home=agg, store=store, now_ms=_now())
    before = store.status()
    overlapping = answers[1:]  # two of the three summed already, and the fourth
    with pytest.raises(QueryRefused, match=f"node {answers[1][0]}'s answer was already summed"):
        answer_request(work(query, envelope, overlapping), home=agg, store=store, now_ms=_now())
    after = store.status()
    assert (after.partials, after.given) == (before.partials, before.given)
    assert after.refusals == before.refusals + 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("two nodes", "at least 3"),
        ("tampered answer", "signature"),
        ("another node's answer", "signature"),
        ("not secure", "not a secure query"),
        ("other query id", "query id"),
        ("stale", "stale"),
        ("deadline passed", "deadline passed"),
        ("listed twice", "listed twice"),
    ],
)
def test_what_the_aggregator_refuses_is_logged_and_stores_nothing(
    homes: SecureHomes, agg: AggregatorHome, store: PartialStore, change: str, reason: str
) -> None:
    query, envelope = secure_query(homes, secure=change != "not secure")
    every = node_answers(homes, query, envelope) if change != "not secure" else []
    answers = every[:3]
    now = _now()
    if change == "not secure":
        # a plain query's answers are not even asked for: the query alone is refused
        answers = [("130104", b"{}"), ("130105", b"{}"), ("130107", b"{}")]
    request = work(query, envelope, answers)
    if change == "two nodes":
        request = work(query, envelope, answers[:2])
    elif change == "tampered answer":
        node, raw = answers[0]
        text = raw.decode()
        at = text.index('"sig":"') + 10
        flipped = text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]
        request = work(query, envelope, [(node, flipped.encode()), *answers[1:]])
    elif change == "another node's answer":
        # the fourth county's id on the first county's signed answer
        request = work(query, envelope, [(every[3][0], answers[0][1]), *answers[1:]])
    elif change == "other query id":
        request = work(query, envelope, answers, query_id="ab" * 16)
    elif change == "stale":
        now += FRESHNESS_WINDOW_MS + 10 * 60 * 1000
    elif change == "deadline passed":
        request = replace(request, deadline_unix_ms=now - 1)
    elif change == "listed twice":
        request = work(query, envelope, [answers[0], *answers[:2]])
    with pytest.raises(QueryRefused, match=reason):
        answer_request(request, home=agg, store=store, now_ms=now)
    status = store.status()
    assert (status.partials, status.given, status.refusals) == (0, 0, 1)
    assert status.last_refusal is not None
    assert reason in status.last_refusal[1]
