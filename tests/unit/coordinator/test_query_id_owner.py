"""A query id stays its first signed query's (issue 16, review finding F4).

Real homes (authority, coordinator, two analysts, a county node answering online and
one marked offline), real signatures and SQLite. Another analyst signing its own query
under a victim's id (ids are public in releases and logs) would take over the victim's
release (``own_release``: Fetch) and its offline queue row; ``Coordinator.accept`` must
refuse it before anything is logged, and still take the victim's own resubmission.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from countyhomes import county_homes
from localnode import answer_locally

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.analystrpc import own_release
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.offline import queue_offline
from fedscreen.errors import QueryRefused
from fedscreen.node.home import NodeConfig
from fedscreen.protocol.query import SignedQuery, issue_query
from fedscreen.trust.identity import load_identity

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
ONLINE, OFFLINE = "130104", "130105"


@dataclass
class Fed:
    auth: Path
    coordinator: Path
    victim: Path
    mallory: Path
    nodes: dict[str, NodeConfig]


@pytest.fixture
def fed(tmp_path: Path) -> Fed:
    homes = county_homes(
        tmp_path, {ONLINE: 89, OFFLINE: 89}, analysts=("analyst-1", "mallory"), offline=(OFFLINE,)
    )
    victim, mallory = homes.analysts["analyst-1"], homes.analysts["mallory"]
    return Fed(homes.auth, homes.coordinator, victim, mallory, homes.nodes)


def _now() -> int:
    return int(time.time() * 1000)


def _under(home: Path, query_id: str, *, epsilon: float) -> tuple[SignedQuery, bytes]:
    """The analyst in ``home`` signs its own query under ``query_id``."""
    query, _ = make_query(home, SQL, epsilon=epsilon, accuracy=None)
    signed, envelope = issue_query(
        dataclasses.replace(query, query_id=query_id), key=load_identity(home).signing_key()
    )
    return signed, envelope.to_json().encode("utf-8")


def _submit(fed: Fed, core: Coordinator, envelope: bytes, caller: str) -> None:
    """What the server does: accept, queue for the offline node, the online one answers,
    release."""
    accepted = core.accept(envelope, now_ms=_now(), caller=caller)
    why = queue_offline(core, accepted, envelope, core.targets(accepted), academic_year=None)
    answer = answer_locally(fed.nodes[ONLINE], envelope)
    core.release(accepted, {ONLINE: answer}, [OFFLINE], reasons=why, query_envelope=envelope)


def _refused(core: Coordinator, envelope: bytes, caller: str) -> str:
    """accept refuses: nothing logged, nothing queued."""
    size = core.log.size()
    queued = core.conn.execute("SELECT query_id, query_envelope FROM offline_queue").fetchall()
    with pytest.raises(QueryRefused) as refused:
        core.accept(envelope, now_ms=_now(), caller=caller)
    assert core.log.size() == size
    assert core.conn.execute("SELECT query_id, query_envelope FROM offline_queue").fetchall() == (
        queued
    )
    return str(refused.value)


def test_another_analyst_cannot_take_over_a_released_query_id(fed: Fed) -> None:
    query, envelope = make_query(fed.victim, SQL, epsilon=0.3, accuracy=None)
    core = Coordinator.open(fed.coordinator)
    try:
        _submit(fed, core, envelope, "analyst-1")
        _, stolen = _under(fed.mallory, query.query_id, epsilon=0.31)
        assert "already used by another signed query" in _refused(core, stolen, "mallory")
        # the victim keeps its release, and its resubmission (a client's retry) is taken
        assert own_release(core, query.query_id, "analyst-1") is not None
        assert own_release(core, query.query_id, "mallory") is None
        _submit(fed, core, envelope, "analyst-1")
        assert own_release(core, query.query_id, "analyst-1") is not None
    finally:
        core.close()


def test_the_same_analyst_cannot_reuse_an_id_for_another_query(fed: Fed) -> None:
    query, envelope = make_query(fed.victim, SQL, epsilon=0.3, accuracy=None)
    core = Coordinator.open(fed.coordinator)
    try:
        _submit(fed, core, envelope, "analyst-1")
        _, other = _under(fed.victim, query.query_id, epsilon=0.2)
        _refused(core, other, "analyst-1")
    finally:
        core.close()


def test_a_query_id_only_queued_for_an_offline_node_is_taken(fed: Fed) -> None:
    """The coordinator stopped between queueing and releasing: the queue row holds the id."""
    query, envelope = make_query(fed.victim, SQL, epsilon=0.3, accuracy=None)
    core = Coordinator.open(fed.coordinator)
    try:
        accepted = core.accept(envelope, now_ms=_now(), caller="analyst-1")
        queue_offline(core, accepted, envelope, core.targets(accepted), academic_year=None)
        _, stolen = _under(fed.mallory, query.query_id, epsilon=0.31)
        _refused(core, stolen, "mallory")
        assert core.accept(envelope, now_ms=_now(), caller="analyst-1") == accepted
    finally:
        core.close()


def test_a_release_stored_without_its_signed_query_claims_no_id(fed: Fed) -> None:
    """A release made by calling the core directly (no signed query stored) says nothing
    of whose the id is."""
    query, envelope = make_query(fed.victim, SQL, epsilon=0.3, accuracy=None)
    core = Coordinator.open(fed.coordinator)
    try:
        accepted = core.accept(envelope, now_ms=_now(), caller="analyst-1")
        core.release(accepted, {}, [ONLINE, OFFLINE])
        _, other = _under(fed.victim, query.query_id, epsilon=0.2)
        assert core.accept(other, now_ms=_now(), caller="analyst-1").epsilon == 0.2
    finally:
        core.close()
