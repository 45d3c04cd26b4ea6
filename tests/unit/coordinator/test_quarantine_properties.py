"""Properties of the coordinator's rollback check, over random histories.

An honest node's answers, pushed with the size the coordinator knew at the time and
delivered in any order, never quarantine it; a node whose log went back to an
earlier state (and maybe grew again differently) is quarantined at its next answer.
Real signatures and a real coordinator home (shared by the examples; each example
keeps its checkpoints in a fresh in-memory book).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_quarantine import NODE, NOW_MS, NodeLog

from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.quarantine import CheckpointBook, screen_answer
from fedscreen.crypto.signing import SigningKey
from fedscreen.node.home import init_home
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here, update_manifest


@dataclass
class Shared:
    coordinator: Coordinator
    key: SigningKey


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("quarantine-properties")
    authority.init_authority(root / "auth", federation="test")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(root / "auth", root / "coord")
    config = init_home(root / NODE, node_id=NODE, name="长安区")
    issue_here(root / "auth", config.home)
    update_manifest(root / "coord", authority.manifest_text(root / "auth"))
    coordinator = Coordinator.open(root / "coord")
    try:
        yield Shared(coordinator, config.signing_key())
    finally:
        coordinator.close()


@dataclass(frozen=True)
class Pending:
    """An answer on its way: its envelope, proof, and the size its query was sent with."""

    envelope: bytes
    proof: list[bytes]
    sent: int


def _answer(log: NodeLog, book: CheckpointBook, grow: int, tag: str = "") -> Pending:
    """The node answers a query pushed now (sent the size the coordinator knows)."""
    sent = book.known_size(NODE)
    note = log.grow(grow, tag)
    return Pending(log.answer(note), log.proof(sent), sent)


def _deliver(shared: Shared, book: CheckpointBook, answer: Pending) -> str | None:
    return screen_answer(
        shared.coordinator, book, node_id=NODE, envelope=answer.envelope,
        proof=answer.proof, sent_size=answer.sent, now_ms=NOW_MS,
    )  # fmt: skip


# each round: how many answers are in flight together, how many entries each adds, and
# the order in which they arrive
ROUNDS = st.lists(
    st.lists(st.integers(1, 3), min_size=1, max_size=3).flatmap(
        lambda grows: st.tuples(st.just(grows), st.permutations(range(len(grows))))
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None, database=None)
@given(rounds=ROUNDS)
def test_an_honest_node_is_never_quarantined(
    shared: Shared, rounds: list[tuple[list[int], list[int]]]
) -> None:
    book = CheckpointBook(sqlite3.connect(":memory:"))
    log = NodeLog(sqlite3.connect(":memory:"), shared.key)
    for grows, order in rounds:
        in_flight = [_answer(log, book, g) for g in grows]
        for i in order:
            assert _deliver(shared, book, in_flight[i]) is None
        book.flush()
    assert book.quarantined(NODE) is None
    assert book.known_size(NODE) == log.size()


@settings(max_examples=40, deadline=None, database=None)
@given(
    before=st.integers(1, 6),
    after=st.integers(1, 6),
    kept=st.integers(0, 6),
    regrown=st.integers(0, 8),
)
def test_a_log_that_went_back_is_quarantined_at_its_next_answer(
    shared: Shared, before: int, after: int, kept: int, regrown: int
) -> None:
    book = CheckpointBook(sqlite3.connect(":memory:"))
    log = NodeLog(sqlite3.connect(":memory:"), shared.key)
    assert _deliver(shared, book, _answer(log, book, before)) is None
    backup_size = min(kept, log.size())
    assert _deliver(shared, book, _answer(log, book, after)) is None
    # the database put back to a copy of its first entries (the same bytes: signatures
    # are deterministic), then grown again by other entries, maybe past its old size
    restored = NodeLog(sqlite3.connect(":memory:"), shared.key)
    if backup_size:
        restored.grow(backup_size)
    answer = _answer(restored, book, regrown + 1, tag="after the restore")
    reason = _deliver(shared, book, answer)
    assert reason is not None
    assert reason.startswith("quarantined: its log ")
    assert book.quarantined(NODE) is not None
