"""rpc.serde: the Status RPC carries each node's checkpoint size and quarantine both ways."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.coordinator.quarantine import NodeLogState, Quarantined
from fedscreen.coordinator.sessions import NodeSeen
from fedscreen.rpc import serde

NODE_IDS = st.text(alphabet="0123456789", min_size=1, max_size=12)
REASONS = st.text(min_size=1, max_size=80)


@settings(max_examples=200, deadline=None, database=None)
@given(
    logs=st.dictionaries(
        NODE_IDS, st.tuples(st.integers(0, 2**40), st.none() | REASONS), max_size=6
    ),
    extra=st.sets(NODE_IDS, max_size=3),
)
def test_status_round_trips_log_states(
    logs: dict[str, tuple[int, str | None]], extra: set[str]
) -> None:
    states = {
        n: NodeLogState(n, size, None if why is None else Quarantined(n, why, 1))
        for n, (size, why) in logs.items()
    }
    node_ids = set(logs) | extra
    response = serde.status_response(
        node_ids, {n: NodeSeen() for n in node_ids}, connected=set(), now_ms=5,
        tolerance_ms=60_000, logs=states,
    )  # fmt: skip
    view = serde.status(response)
    assert [n.node_id for n in view.nodes] == sorted(node_ids)
    for node in view.nodes:
        size, why = logs.get(node.node_id, (0, None))
        assert node.checkpoint_size == size
        assert node.quarantined == (why is not None)
        assert node.quarantine_reason == (why or "")
