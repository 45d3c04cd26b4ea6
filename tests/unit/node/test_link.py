"""node.link and the worker's manifest: what a serving node trusts, kept current and checked.

Real homes (an authority, a coordinator and a node, issued), real signed manifests
and real signed checkpoints of a SQLite transparency log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from logentries import stored_entries, verified_entries
from nodehomes import COORDINATOR, NODE, Homes, idle_agent, make_homes
from nodelogs import NodeLog
from rekeying import rekey_in_place

from fedscreen.analyst.query import make_query
from fedscreen.cli.main import main
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, QueryRefused, UnknownMember, VerificationError
from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.link import (
    COORDINATOR_CHECKPOINT_FILE,
    CoordinatorLog,
    ManifestKeeper,
    check_membership,
)
from fedscreen.node.status import read_link
from fedscreen.node.worker import QueryWorker
from fedscreen.protocol.query import INVALID_QUERY_ID
from fedscreen.trust import authority
from fedscreen.trust.identity import load_identity, update_manifest
from fedscreen.v1 import federation_pb2 as pb


@pytest.fixture
def homes(tmp_path: Path) -> Homes:
    return make_homes(tmp_path)


def _keeper(homes: Homes) -> ManifestKeeper:
    return ManifestKeeper(homes.node.home, load_identity(homes.node.home).manifest())


def _installed_version(homes: Homes) -> int:
    return load_identity(homes.node.home).manifest().version


def test_a_pushed_newer_manifest_is_verified_installed_and_used(homes: Homes) -> None:
    keeper = _keeper(homes)
    old = keeper.current.version
    old_text = (homes.node.home / "manifest.json").read_bytes()
    authority.revoke(homes.auth, "alice")
    text = authority.manifest_text(homes.auth).encode()
    adopted = keeper.offer(text)
    assert adopted is not None
    assert adopted.manifest.version == old + 1
    assert keeper.current.version == old + 1
    assert (homes.node.home / "manifest.json").read_bytes() == text
    assert "alice" not in keeper.current.active("analyst")
    # the same again, or the older one: nothing changes
    assert keeper.offer(text) is None
    assert keeper.offer(old_text) is None
    assert _installed_version(homes) == old + 1
    # the file the keeper installed is not taken for an operator's new one
    assert keeper.check_file() is None


def test_a_pushed_manifest_that_does_not_verify_is_refused(homes: Homes, tmp_path: Path) -> None:
    keeper = _keeper(homes)
    before = (homes.node.home / "manifest.json").read_bytes()
    other = tmp_path / "other-auth"
    authority.init_authority(other, federation="test")
    with pytest.raises(VerificationError):
        keeper.offer(authority.manifest_text(other).encode())
    authority.revoke(homes.auth, "alice")
    doc = json.loads(authority.manifest_text(homes.auth))
    doc["envelope"]["signatures"][0]["sig"] = doc["envelope"]["signatures"][0]["sig"][::-1]
    with pytest.raises(VerificationError):
        keeper.offer(json.dumps(doc).encode())
    with pytest.raises(VerificationError):
        keeper.offer(b"{" * 10)
    assert (homes.node.home / "manifest.json").read_bytes() == before
    assert keeper.current.version == _installed_version(homes)


def test_a_manifest_installed_in_the_home_is_picked_up(homes: Homes) -> None:
    keeper = _keeper(homes)
    old = keeper.current.version
    assert keeper.check_file() is None
    authority.revoke(homes.auth, "alice")
    update_manifest(homes.node.home, authority.manifest_text(homes.auth))
    adopted = keeper.check_file()
    assert adopted is not None
    assert keeper.current.version == old + 1
    assert keeper.check_file() is None  # once


def test_an_older_or_broken_file_in_the_home_is_ignored(homes: Homes) -> None:
    old_text = (homes.node.home / "manifest.json").read_bytes()
    authority.revoke(homes.auth, "alice")
    update_manifest(homes.node.home, authority.manifest_text(homes.auth))
    keeper = _keeper(homes)
    version = keeper.current.version
    (homes.node.home / "manifest.json").write_bytes(old_text)
    assert keeper.check_file() is None
    (homes.node.home / "manifest.json").write_bytes(b"not a manifest, and longer")
    assert keeper.check_file() is None
    assert keeper.current.version == version


def _manifest_versions(config: NodeConfig) -> list[int]:
    conn = store.connect(config.database)
    try:
        entries = verified_entries(stored_entries(conn, "node"), config.signing_key().public_key)
        return [entry["version"] for entry in entries if entry["kind"] == "manifest"]
    finally:
        conn.close()


def test_the_worker_logs_each_manifest_version_it_uses_once(homes: Homes) -> None:
    config = homes.node
    start = load_identity(config.home).manifest()

    async def scenario() -> list[int]:
        worker = QueryWorker(config, config.policy(), start, coordinator_id=COORDINATOR)
        try:
            await worker.statement()  # opens the database: the version in force is logged
            authority.revoke(homes.auth, "alice")
            pushed = authority.manifest_text(homes.auth).encode()
            in_force = [await worker.offer_manifest(pushed), await worker.offer_manifest(pushed)]
            assert worker.manifest.version == start.version + 1
            return in_force
        finally:
            worker.close()

    assert asyncio.run(scenario()) == [start.version + 1] * 2
    assert _manifest_versions(config) == [start.version, start.version + 1]


# ---------------------------------------------------------------- the coordinator's log


def coordinator_tree(conn: sqlite3.Connection, key: SigningKey) -> NodeLog:
    """The coordinator's log (in memory), as it signs and proves it."""
    return NodeLog(conn, key, member_id=COORDINATOR, role="coordinator")


def test_the_coordinators_log_must_extend_the_one_seen(homes: Homes) -> None:
    key = load_identity(homes.coordinator).signing_key()
    tree = coordinator_tree(sqlite3.connect(":memory:"), key)
    seen = CoordinatorLog(homes.node.home, COORDINATOR)
    public = key.public_key
    assert seen.known_size(public) == 0
    assert seen.check("", [], key=public) is None  # an empty log, nothing seen yet
    first = tree.grow(3)
    assert seen.check(first, [], key=public) is not None
    assert seen.known_size(public) == 3
    grown = tree.grow(4)
    assert seen.check(grown, tree.proof(3), key=public) is not None
    assert seen.known_size(public) == 7
    with pytest.raises(VerificationError, match="does not prove"):
        seen.check(tree.grow(1), [], key=public)
    assert seen.known_size(public) == 7

    # rolled back: shrunk, emptied, or forked at the same size
    with pytest.raises(VerificationError, match="shrank from 7 to 3"):
        seen.check(first, [], key=public)
    with pytest.raises(VerificationError, match="shrank"):
        seen.check("", [], key=public)
    other = coordinator_tree(sqlite3.connect(":memory:"), key)
    with pytest.raises(VerificationError, match="forked"):
        seen.check(other.grow(7, tag="another history"), [], key=public)
    # signed by someone else
    with pytest.raises(VerificationError):
        seen.check(coordinator_tree(sqlite3.connect(":memory:"), SigningKey.generate()).grow(9),
                   [], key=public)  # fmt: skip
    assert seen.known_size(public) == 7

    (homes.node.home / COORDINATOR_CHECKPOINT_FILE).write_text("tampered\n")
    with pytest.raises(ConfigError, match="not a checkpoint signed by the coordinator"):
        seen.known_size(public)


def test_a_coordinator_rekeyed_in_place_keeps_the_node_protected(homes: Homes) -> None:
    """The checkpoint held under the coordinator's former key (held in an installed
    manifest version) still binds its log: a shrunk log under the new key is refused,
    an extended one is taken and the file rewritten under the new key."""
    old_key = load_identity(homes.coordinator).signing_key()
    conn = sqlite3.connect(":memory:")
    seen = CoordinatorLog(homes.node.home, COORDINATOR)
    first = coordinator_tree(conn, old_key).grow(5)
    assert seen.check(first, [], key=old_key.public_key) is not None
    new_key = rekey_in_place(
        homes.auth, homes.coordinator, member_id=COORDINATOR, role="coordinator", name="省平台"
    )
    update_manifest(homes.node.home, authority.manifest_text(homes.auth))
    public = new_key.public_key
    assert seen.known_size(public) == 5
    # the same log, shrunk and re-signed under the new key: still caught
    with pytest.raises(VerificationError, match="shrank from 5 to 2"):
        seen.check(coordinator_tree(sqlite3.connect(":memory:"), new_key).grow(2), [], key=public)
    tree = coordinator_tree(conn, new_key)
    grown = tree.grow(2)
    assert seen.check(grown, tree.proof(5), key=public) is not None
    saved = (homes.node.home / COORDINATOR_CHECKPOINT_FILE).read_text()
    assert saved == grown
    # a key the coordinator never held in an installed version is not trusted
    stranger = coordinator_tree(sqlite3.connect(":memory:"), SigningKey.generate()).grow(9)
    (homes.node.home / COORDINATOR_CHECKPOINT_FILE).write_text(stranger)
    with pytest.raises(ConfigError, match="not a checkpoint signed by the coordinator"):
        seen.known_size(public)


def test_without_the_manifest_history_a_former_key_is_not_trusted(homes: Homes) -> None:
    old_key = load_identity(homes.coordinator).signing_key()
    seen = CoordinatorLog(homes.node.home, COORDINATOR)
    seen.check(coordinator_tree(sqlite3.connect(":memory:"), old_key).grow(3), [],
               key=old_key.public_key)  # fmt: skip
    new_key = rekey_in_place(
        homes.auth, homes.coordinator, member_id=COORDINATOR, role="coordinator", name="省平台"
    )
    update_manifest(homes.node.home, authority.manifest_text(homes.auth))
    shutil.rmtree(homes.node.home / "manifests")
    with pytest.raises(ConfigError, match="not a checkpoint signed by the coordinator"):
        seen.known_size(new_key.public_key)


def _charges(config: NodeConfig) -> int:
    conn = store.connect(config.database)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM ledger_charge").fetchone()[0])
    finally:
        conn.close()


def test_a_manifest_placed_in_the_home_is_in_force_for_the_next_query(homes: Homes) -> None:
    """No restart and no push: the worker looks at the file before each query."""
    config = homes.node
    _, envelope = make_query(
        homes.auth.parent / "alice", "SELECT COUNT(*) FROM screenings", epsilon=0.5, accuracy=None
    )

    async def scenario() -> str:
        worker = QueryWorker(
            config,
            config.policy(),
            load_identity(config.home).manifest(),
            coordinator_id=COORDINATOR,
        )
        try:
            await worker.statement()
            authority.revoke(homes.auth, "alice")
            update_manifest(config.home, authority.manifest_text(homes.auth))  # the operator
            with pytest.raises(QueryRefused) as refused:
                await worker.answer_in_full(envelope, now_ms=lambda: int(time.time() * 1000))
            return str(refused.value)
        finally:
            worker.close()

    reason = asyncio.run(scenario())
    assert reason.startswith("revoked: analyst alice is revoked"), reason  # F6c's code
    assert _charges(config) == 0
    version = load_identity(config.home).manifest().version
    assert _manifest_versions(config)[-1] == version


def _refusals(config: NodeConfig) -> list[tuple[str, str]]:
    conn = store.connect(config.database)
    try:
        rows = conn.execute("SELECT query, reason FROM query_refusal ORDER BY refusal_id")
        return [(str(q), str(r)) for q, r in rows]
    finally:
        conn.close()


# ---------------------------------------------------------------- forks and membership (T7, T2)


def _forked(homes: Homes, tmp_path: Path) -> tuple[bytes, bytes]:
    """Two manifests the authority signed with one version number, revoking different members."""
    shutil.copytree(homes.auth, tmp_path / "auth-copy")
    authority.revoke(homes.auth, "alice")
    authority.revoke(tmp_path / "auth-copy", COORDINATOR)
    return (
        authority.manifest_text(homes.auth).encode(),
        authority.manifest_text(tmp_path / "auth-copy").encode(),
    )


def test_a_second_manifest_with_the_version_in_force_is_refused_loudly(
    homes: Homes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = _forked(homes, tmp_path)
    keeper = _keeper(homes)
    assert keeper.offer(first) is not None
    version = keeper.current.version
    assert keeper.offer(first) is None  # the same one again: nothing to say
    assert keeper.conflict == ""
    with caplog.at_level(logging.ERROR), pytest.raises(VerificationError, match="two manifests"):
        keeper.offer(second)
    assert "MANIFEST CONFLICT" in caplog.text
    assert "two manifests with one version" in keeper.conflict
    assert keeper.current.version == version
    assert COORDINATOR in keeper.current.active("coordinator")
    assert (homes.node.home / "manifest.json").read_bytes() == first


def test_a_forked_manifest_installed_in_the_home_is_not_used(homes: Homes, tmp_path: Path) -> None:
    first, second = _forked(homes, tmp_path)
    keeper = _keeper(homes)
    assert keeper.offer(first) is not None
    (homes.node.home / "manifest.json").write_bytes(second)  # past update-manifest's checks
    assert keeper.check_file() is None
    assert "two manifests" in keeper.conflict
    assert COORDINATOR in keeper.current.active("coordinator")


def test_membership_needs_this_node_and_its_coordinator_active(homes: Homes) -> None:
    manifest = load_identity(homes.node.home).manifest()
    check_membership(manifest, node_id=NODE, coordinator_id=COORDINATOR)
    with pytest.raises(UnknownMember, match="the coordinator is no longer"):
        check_membership(manifest, node_id=NODE, coordinator_id="alice")
    without_coordinator = authority.revoke(homes.auth, COORDINATOR)
    with pytest.raises(UnknownMember, match="the coordinator is no longer"):
        check_membership(without_coordinator, node_id=NODE, coordinator_id=COORDINATOR)
    without_node = authority.revoke(homes.auth, NODE)
    with pytest.raises(UnknownMember, match="this node is no longer"):
        check_membership(without_node, node_id=NODE, coordinator_id=COORDINATOR)


@pytest.mark.parametrize("revoked", [NODE, COORDINATOR])
def test_a_node_whose_membership_ended_answers_nothing_and_pays_nothing(
    homes: Homes, revoked: str
) -> None:
    """A manifest placed in the home (not through update-manifest) that revokes the node
    itself or its coordinator: the next query is refused, recorded, and nothing charged."""
    config = homes.node
    _, envelope = make_query(
        homes.auth.parent / "alice", "SELECT COUNT(*) FROM screenings", epsilon=0.5, accuracy=None
    )
    query_id = "ab" * 16

    async def scenario() -> tuple[str, str]:
        worker = QueryWorker(
            config,
            config.policy(),
            load_identity(config.home).manifest(),
            coordinator_id=COORDINATOR,
        )
        try:
            await worker.statement()
            assert worker.membership() == ""
            authority.revoke(homes.auth, revoked)
            (config.home / "manifest.json").write_text(authority.manifest_text(homes.auth))
            with pytest.raises(QueryRefused) as refused:
                await worker.answer_in_full(
                    envelope, now_ms=lambda: int(time.time() * 1000), query_id=query_id
                )
            return str(refused.value), worker.membership()
        finally:
            worker.close()

    reason, ended = asyncio.run(scenario())
    assert reason.startswith("revoked: ")
    assert ended in reason
    assert "no longer" in ended
    assert _charges(config) == 0
    [(query, recorded)] = _refusals(config)
    assert query == query_id
    assert "no longer" in recorded


# ---------------------------------------------------------------- each query's checkpoint (T3)


def test_a_query_from_a_coordinator_whose_log_went_back_is_refused_and_recorded(
    homes: Homes,
) -> None:
    config = homes.node
    key = load_identity(homes.coordinator).signing_key()
    tree = coordinator_tree(sqlite3.connect(":memory:"), key)
    _, envelope = make_query(
        homes.auth.parent / "alice", "SELECT COUNT(*) FROM screenings", epsilon=0.5, accuracy=None
    )
    agent = idle_agent(config)
    welcomed = tree.grow(3)
    agent.coordinator_log.check(welcomed, [], key=key.public_key)  # as at the Welcome
    grown = tree.grow(2)
    request = pb.QueryRequest(
        query_id="\x1b[31m\nCRITICAL forged line",
        query_envelope=envelope,
        coordinator_checkpoint=grown,
        coordinator_consistency_proof=tree.proof(3),
    )
    agent._check_query_checkpoint(request)
    assert agent.halted == ""
    assert agent.coordinator_log.known_size(key.public_key) == 5  # advanced
    # the coordinator's database put back to the Welcome's time
    del request.coordinator_consistency_proof[:]
    request.coordinator_checkpoint = welcomed
    agent._check_query_checkpoint(request)
    assert "went back" in agent.halted
    assert agent.coordinator_log.known_size(key.public_key) == 5
    sent: list[pb.NodeMessage] = []

    async def send(message: pb.NodeMessage) -> None:
        sent.append(message)

    async def reply() -> None:
        try:
            await agent._reply(request, send)
        finally:
            agent.worker.close()

    asyncio.run(reply())
    [message] = sent
    assert "went back" in message.refusal.reason
    assert _charges(config) == 0
    [(query, reason)] = _refusals(config)
    assert query == INVALID_QUERY_ID  # never the coordinator's raw text
    assert "went back" in reason
    link = read_link(config.home)
    assert link is not None
    assert "went back" in link.refusing


def test_a_query_without_a_checkpoint_is_refused_once_the_node_holds_one(homes: Homes) -> None:
    key = load_identity(homes.coordinator).signing_key()
    tree = coordinator_tree(sqlite3.connect(":memory:"), key)
    agent = idle_agent(homes.node)
    try:
        agent._check_query_checkpoint(pb.QueryRequest(query_id="ab" * 16))
        assert agent.halted == ""  # a coordinator with an empty log, none held
        agent.coordinator_log.check(tree.grow(2), [], key=key.public_key)
        agent._check_query_checkpoint(pb.QueryRequest(query_id="ab" * 16))
        assert "went back" in agent.halted
    finally:
        agent.worker.close()


def test_node_status_shows_a_manifest_conflict_the_coordinator_pushed(
    homes: Homes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _forked(homes, tmp_path)
    agent = idle_agent(homes.node)

    async def pushed() -> None:
        try:
            await agent._offer_manifest(first)
            await agent._offer_manifest(second)
        finally:
            agent.worker.close()

    asyncio.run(pushed())
    link = read_link(homes.node.home)
    assert link is not None
    assert "two manifests with one version" in link.manifest_conflict
    assert main(["node", "status", "--home", str(homes.node.home)]) == 0
    assert "MANIFEST CONFLICT: a manifest sent by the coordinator" in capsys.readouterr().out
