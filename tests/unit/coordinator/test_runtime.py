"""coordinator.runtime: what reaches log lines from nodes, and the coordinator checkpoint
each query carries (findings A7 and T3 of issue 11's attack round).

A real coordinator home (its SQLite log and key) for the checkpoints and proofs; the
text functions get arbitrary node strings (hypothesis).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.runtime import (
    REASON_NOT_UNDERSTOOD,
    coordinator_head,
    node_refusal,
)
from fedscreen.coordinator.sessions import NodeSession, Push, SessionRegistry, push_query
from fedscreen.protocol.refusal import CODES, MAX_DETAIL_CHARS, parse_reason
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import Checkpoint
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here, update_manifest


@given(st.text(max_size=400) | st.sampled_from(sorted(CODES)).map(lambda c: f"{c}: \x1b[31mx\n"))
def test_a_node_refusal_is_stated_in_the_fixed_vocabulary(reason: str) -> None:
    stated = node_refusal(reason)
    assert stated.isprintable()
    if stated != REASON_NOT_UNDERSTOOD:
        code, detail = parse_reason(stated.removeprefix("refused: "))
        assert code in CODES
        assert len(detail) <= MAX_DETAIL_CHARS


def test_refusals_outside_the_vocabulary_are_not_quoted() -> None:
    assert node_refusal("budget: not enough ε left") == "refused: budget: not enough ε left"
    assert node_refusal("stale: off\x1b[2J by 2 min\x07") == "refused: stale: off [2J by 2 min"
    assert node_refusal("\x1b[2Jpwned: CRITICAL all quarantined") == REASON_NOT_UNDERSTOOD
    assert node_refusal("budget: " + "x" * (MAX_DETAIL_CHARS + 1)) == REASON_NOT_UNDERSTOOD


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(tmp_path / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, tmp_path / "coord")
    update_manifest(tmp_path / "coord", authority.manifest_text(auth))
    opened = Coordinator.open(tmp_path / "coord")
    try:
        yield opened
    finally:
        opened.close()


def _checkpoint(note: str) -> Checkpoint:
    return Checkpoint.from_body(note[: note.index("\n\n") + 1])


def test_each_query_carries_the_checkpoint_and_a_proof_from_what_the_session_got(
    coordinator: Coordinator,
) -> None:
    """T3: the proof starts at the size the session last got (Welcome or query)."""
    query_id = "ab" * 16

    async def scenario() -> list[Push]:
        registry = SessionRegistry()
        session = NodeSession("130102", outbox_messages=8)
        welcome = coordinator_head(coordinator, {"130102": 0})
        session.coordinator_size = welcome.size  # as open_session does
        registry.open(session)
        pushed = []
        for n in range(2):
            for i in range(3 + n):
                coordinator.record({"kind": "test", "i": i})
            head = coordinator_head(coordinator, {"130102": session.coordinator_size})
            push_query(registry, f"{query_id}{n}", b"{}", ("130102",), deadline_unix_ms=1,
                       head=head)  # fmt: skip
            message = session.outbox.get_nowait()
            assert isinstance(message, Push)
            pushed.append(message)
        assert session.coordinator_size == _checkpoint(pushed[-1].coordinator_checkpoint).size
        return pushed

    welcome_size = _checkpoint(coordinator.checkpoint()).size
    pushed = asyncio.run(scenario())
    previous = welcome_size
    roots = {welcome_size: coordinator.log.root(welcome_size)}
    for message in pushed:
        new = _checkpoint(message.coordinator_checkpoint)
        assert new.size > previous
        merkle.verify_consistency(
            size1=previous, size2=new.size, root1=roots[previous], root2=new.root,
            proof=message.coordinator_proof,
        )  # fmt: skip
        roots[new.size] = new.root
        previous = new.size


def test_no_proof_from_nothing_or_from_the_same_size(coordinator: Coordinator) -> None:
    head = coordinator_head(coordinator, {"a": 0, "b": 10**6})
    size = _checkpoint(coordinator.checkpoint()).size
    assert head.size == size
    same = coordinator_head(coordinator, {"c": size})
    assert head.proofs == {"a": (), "b": ()}
    assert same.proofs == {"c": ()}
