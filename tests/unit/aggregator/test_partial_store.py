"""The aggregator store's use-once rule, on real SQLite files, signed with a real key.

Each answer body is summed into one partial only: the same set again gets the same
partial (byte for byte for the same query id, the same noise under a new one); a set
overlapping an earlier one is refused, logged, and stores nothing.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen._util.sqlite import connect
from fedscreen.aggregator.store import PartialStore, bounded_reason
from fedscreen.crypto.envelope import parse_json
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol.secure import sign_partial
from fedscreen.tlog.checkpoint import member_origin

KEY = SigningKey.generate()
ME = "stats-bureau"


def _store(directory: Path) -> PartialStore:
    return PartialStore(connect(directory / "aggregator.db"), member_id=ME, key=KEY)


class Maker:
    """Counts how often the store asked for a new partial body (a new noise draw)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"aggregator": ME, "draw": self.calls}


def _signer(query_id: str) -> Any:
    def sign(body: Mapping[str, Any]) -> bytes:
        envelope = sign_partial(body, KEY, query_id=query_id, query_sha256="00" * 32)
        return envelope.to_json().encode()

    return sign


def _give(
    store: PartialStore, query_id: str, key: str, nodes: dict[str, str], make: Maker
) -> bytes:
    return store.give(query_id=query_id, key=key, nodes=nodes, make=make, sign=_signer(query_id))


def _entries(store: PartialStore) -> list[dict[str, Any]]:
    export = store.export()
    assert export.origin == member_origin("aggregator", ME)
    return [parse_json(_payload(e)) for e in export.entries]


def _payload(envelope: bytes) -> bytes:
    """The signed payload of a DSSE envelope (already verified, or not the point here)."""
    return base64.b64decode(parse_json(envelope)["payload"])


NODES = {"130104": "a" * 64, "130105": "b" * 64, "130107": "c" * 64}


def test_the_same_answers_get_the_same_partial_byte_for_byte(tmp_path: Path) -> None:
    store, make = _store(tmp_path), Maker()
    first = _give(store, "q1", "k1", NODES, make)
    again = _give(store, "q1", "k1", NODES, make)
    assert again == first
    assert make.calls == 1  # one noise draw
    status = store.status()
    assert (status.partials, status.given, status.refusals) == (1, 1, 0)
    assert [e["kind"] for e in _entries(store)] == ["partial"]  # asking again logs nothing


def test_a_resubmitted_question_gets_the_stored_noise_under_its_new_id(tmp_path: Path) -> None:
    store, make = _store(tmp_path), Maker()
    first = _give(store, "q1", "k1", NODES, make)
    second = _give(store, "q2", "k1", NODES, make)
    assert make.calls == 1
    one, two = (parse_json(_payload(x)) for x in (first, second))
    assert one["partial"] == two["partial"]  # the same body: the same noise
    assert (one["query_id"], two["query_id"]) == ("q1", "q2")
    entries = _entries(store)
    assert [(e["kind"], e["query_id"]) for e in entries] == [("partial", "q1"), ("partial", "q2")]
    assert entries[1]["partial"] == second.decode()


def test_an_overlapping_set_is_refused_logged_and_stores_nothing(tmp_path: Path) -> None:
    store, make = _store(tmp_path), Maker()
    _give(store, "q1", "k1", NODES, make)
    before = store.status()
    overlapping = {"130105": "b" * 64, "130107": "c" * 64, "130108": "d" * 64}
    with pytest.raises(QueryRefused, match="node 130105's answer was already summed"):
        _give(store, "q2", "k2", overlapping, make)
    assert make.calls == 1  # no second draw
    after = store.status()
    assert (after.partials, after.given) == (before.partials, before.given)
    assert after.refusals == 1
    assert after.log_size == before.log_size + 1
    assert after.last_refusal is not None
    assert after.last_refusal[0] == "q2"
    last = _entries(store)[-1]
    assert last["kind"] == "refusal"
    assert last["query_id"] == "q2"
    assert "130105" in last["reason"]
    # 130108's answer was not summed either: with two fresh ones it still makes a partial
    fresh = {"130108": "d" * 64, "130109": "e" * 64, "130110": "f" * 64}
    _give(store, "q3", "k3", fresh, make)
    assert make.calls == 2


def test_a_refused_aggregation_is_logged_and_stores_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def refused() -> dict[str, Any]:
        raise VerificationError("the share from 130104 does not open")

    with pytest.raises(QueryRefused, match="does not open"):
        store.give(query_id="q1", key="k1", nodes=NODES, make=refused, sign=_signer("q1"))
    status = store.status()
    assert (status.partials, status.given, status.refusals, status.log_size) == (0, 0, 1, 1)
    # the answers are not spent: they still make a partial
    _give(store, "q1", "k1", NODES, Maker())
    assert store.status().partials == 1


def test_a_failing_aggregation_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        store.give(query_id="q1", key="k1", nodes=NODES, make=broken, sign=_signer("q1"))
    status = store.status()
    assert (status.partials, status.given, status.refusals, status.log_size) == (0, 0, 0, 0)


def test_refusal_reasons_are_one_bounded_printable_line(tmp_path: Path) -> None:
    store = _store(tmp_path)
    shown = store.refuse("q\n1", "bad\x00 thing\n" + "x" * 1000)
    assert shown.isprintable()
    assert len(shown) <= 300
    assert bounded_reason("") == "no reason given"
    entry = _entries(store)[-1]
    assert entry["reason"] == shown
    assert entry["query_id"].isprintable()


SETS = st.lists(
    st.frozensets(st.sampled_from("ABCDEFG"), min_size=1, max_size=4), min_size=1, max_size=8
)


@settings(max_examples=40, deadline=None)
@given(SETS)
def test_each_answer_is_summed_into_one_partial_at_most(sets: list[frozenset[str]]) -> None:
    """Whatever sets are asked for, in whatever order: a set gets a partial iff it equals
    one given before or shares no answer with any; nothing is ever summed twice."""
    with tempfile.TemporaryDirectory() as tmp:
        store, make = _store(Path(tmp)), Maker()
        summed: dict[frozenset[str], bytes] = {}
        for n, answers in enumerate(sets):
            nodes = {a: a * 64 for a in answers}
            key = "".join(sorted(answers))
            used = set().union(*summed) if summed else set()
            if answers in summed:
                assert _give(store, f"q{n}", key, nodes, make) is not None
            elif answers & used:
                with pytest.raises(QueryRefused):
                    _give(store, f"q{n}", key, nodes, make)
            else:
                summed[answers] = _give(store, f"q{n}", key, nodes, make)
        assert make.calls == len(summed) == store.status().partials
        store.close()
