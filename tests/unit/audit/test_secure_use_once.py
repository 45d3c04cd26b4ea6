"""The auditor's use-once rule (``audit.secure.UseOnce``): an answer body summed into one
partial body only; the same body again (a resubmitted query id) is no violation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.audit.secure import UseOnce

#: (which partial body, the answer digests it sums), in log order
ADDS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        st.frozensets(st.sampled_from("abcdef"), min_size=1, max_size=3),
    ),
    max_size=12,
)


@given(ADDS)
def test_an_answer_summed_into_a_second_body_is_refused_and_only_then(
    adds: list[tuple[int, frozenset[str]]],
) -> None:
    rule = UseOnce()
    owner: dict[str, int] = {}  # answer digest -> the body it was summed into
    for index, (body_id, digests) in enumerate(adds):
        body = {"noise": body_id}
        nodes = {f"node-{d}": d for d in digests}
        if any(owner.get(d, body_id) != body_id for d in digests):
            with pytest.raises(ValueError, match="use-once rule"):
                rule.add(index, body, nodes)
            return
        rule.add(index, body, nodes)
        owner.update(dict.fromkeys(digests, body_id))
    used = {hashlib.sha256(canonical_json({"noise": b})).hexdigest() for b in owner.values()}
    assert rule.bodies == used


def test_the_violation_names_the_node_and_the_first_entry() -> None:
    rule = UseOnce()
    rule.add(4, {"noise": 1}, {"130104": "ab" * 32, "130105": "cd" * 32})
    rule.add(9, {"noise": 1}, {"130104": "ab" * 32, "130105": "cd" * 32})  # signed again
    with pytest.raises(ValueError, match=r"'?130105'?'s answer \(sha256 cdcdcdcdcdcd…\).*entry 4"):
        rule.add(11, {"noise": 2}, {"130105": "cd" * 32, "130107": "ef" * 32})
