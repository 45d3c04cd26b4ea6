"""tlog.log.TransparencyLog.extend and tlog.memberlog.append_many: a batch is the same log.

Logs written in batches of any sizes are compared byte for byte with the same entries
appended one at a time, and with an independent in-memory RFC 9162 tree
(``merkle.MemoryHashStore``): leaves, stored subtree hashes, roots at every size,
inclusion and consistency proofs. A batch that fails leaves the log as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from logentries import stored_entries, verified_entries

from fedscreen.crypto.signing import SigningKey
from fedscreen.tlog import memberlog, merkle
from fedscreen.tlog.checkpoint import member_origin, parse_and_verify_note
from fedscreen.tlog.log import TransparencyLog

KEY = SigningKey.generate()


def _entry(i: int) -> bytes:
    return b"entry %d" % i if i % 5 else b""  # empty entries are leaves too


def _tables(conn: sqlite3.Connection, log: str) -> tuple[list[Any], list[Any]]:
    leaves = conn.execute(
        "SELECT idx, entry, leaf_hash FROM tlog_leaves WHERE log = ? ORDER BY idx", (log,)
    ).fetchall()
    nodes = conn.execute(
        "SELECT level, idx, hash FROM tlog_nodes WHERE log = ? ORDER BY level, idx", (log,)
    ).fetchall()
    return leaves, nodes


def _memory_nodes(store: merkle.MemoryHashStore, size: int) -> list[tuple[int, int, bytes]]:
    """Every complete subtree of level >= 1 in the reference tree of ``size`` leaves."""
    found: list[tuple[int, int, bytes]] = []
    level = 1
    while (1 << level) <= size:
        found.extend((level, i, store.subtree_hash(level, i)) for i in range(size >> level))
        level += 1
    return sorted(found)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), max_size=8))
def test_batches_of_any_sizes_make_the_log_appends_make(batches: list[int]) -> None:
    batched, single = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    try:
        # two logs in one database: a batch of one must not touch its neighbour
        one, other = TransparencyLog(batched, name="one"), TransparencyLog(batched, name="two")
        other.extend([b"neighbour %d" % i for i in range(3)])
        reference = TransparencyLog(single, name="one")
        n = 0
        for size in batches:
            entries = [_entry(n + i) for i in range(size)]
            assert one.extend(entries) == n
            for i, entry in enumerate(entries):
                assert reference.append(entry) == n + i
            n += size
            assert one.size() == reference.size() == n
        batched.commit()
        single.commit()
        assert _tables(batched, "one") == _tables(single, "one")
        assert other.size() == 3
        leaves = [merkle.leaf_hash(_entry(i)) for i in range(n)]
        store = merkle.MemoryHashStore(leaves)
        assert [tuple(row) for row in _tables(batched, "one")[1]] == _memory_nodes(store, n)
        for size in range(n + 1):
            root = one.root(size)
            assert root == reference.root(size) == merkle.root_from_leaf_hashes(leaves[:size])
            assert root == merkle.root(store, size=size)
            for index in range(size):
                proof = one.inclusion_proof(index, size)
                assert proof == merkle.inclusion_proof(store, index=index, size=size)
                merkle.verify_inclusion(
                    leaf_hash=leaves[index], index=index, size=size, proof=proof, root=root
                )
            for size1 in range(1, size + 1):
                proof = one.consistency_proof(size1, size)
                assert proof == merkle.consistency_proof(store, size1=size1, size2=size)
                merkle.verify_consistency(
                    size1=size1, size2=size, root1=one.root(size1), root2=root, proof=proof
                )
    finally:
        batched.close()
        single.close()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    # a real file with autocommit, as fedscreen opens its databases (transactions explicit)
    c = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    yield c
    c.close()


def _state(conn: sqlite3.Connection, log: TransparencyLog) -> tuple[int, bytes, Any]:
    return log.size(), log.root(), _tables(conn, log.name)


def test_a_non_bytes_entry_is_refused_before_anything_is_written(
    conn: sqlite3.Connection,
) -> None:
    log = TransparencyLog(conn, name="t")
    log.extend([_entry(i) for i in range(5)])
    conn.execute("COMMIT")
    before = _state(conn, log)
    bad: list[Any] = [b"a", b"b", "c", b"d"]
    with pytest.raises(TypeError, match="bytes"):
        log.extend(bad)
    with pytest.raises(TypeError, match="bytes"):
        log.extend([b"a", bytearray(b"b")])  # type: ignore[list-item]
    assert not conn.in_transaction  # refused before a transaction was begun
    assert _state(conn, log) == before


def test_a_batch_that_fails_midway_leaves_the_log_as_it_was(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="t")
    log.extend([_entry(i) for i in range(5)])
    conn.execute("COMMIT")
    before = _state(conn, log)
    # the caller's own transaction, with a write of its own before the batch
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS other (x INTEGER)")
    conn.execute("INSERT INTO other VALUES (1)")
    # a subtree hash the batch will make (level 1, index 3: leaves 6 and 7) is already
    # there: the leaves go in first, then the node insert hits the UNIQUE key
    conn.execute(
        "INSERT INTO tlog_nodes (log, level, idx, hash) VALUES ('t', 1, 3, ?)", (bytes(32),)
    )
    with pytest.raises(sqlite3.IntegrityError):
        log.extend([_entry(i) for i in range(5, 9)])
    assert conn.in_transaction  # the caller's transaction is still open, and usable
    assert log.size() == 5
    assert log.root() == before[1]
    assert conn.execute("SELECT x FROM other").fetchall() == [(1,)]  # the caller's write kept
    conn.execute("DELETE FROM tlog_nodes WHERE log = 't' AND level = 1 AND idx = 3")
    assert _state(conn, log) == before
    # the same transaction goes on: the batch now lands, and commits with the caller's write
    assert log.extend([_entry(i) for i in range(5, 9)]) == 5
    conn.execute("COMMIT")
    leaves = [merkle.leaf_hash(_entry(i)) for i in range(9)]
    assert log.root() == merkle.root_from_leaf_hashes(leaves)
    assert conn.execute("SELECT x FROM other").fetchall() == [(1,)]


def test_a_leaf_collision_rolls_back_the_whole_batch(conn: sqlite3.Connection) -> None:
    """A UNIQUE violation in the leaf insert itself (a second writer's leaf at an index
    the batch takes) — provoked through the connection, as a racing append would."""
    log = TransparencyLog(conn, name="t")
    log.extend([_entry(i) for i in range(3)])
    conn.execute("COMMIT")
    before = _state(conn, log)

    class Racing(list[bytes]):
        """Entries whose second iteration (the first is the type check; the second comes
        after the batch read its start) plants a leaf at index 4."""

        iterations = 0

        def __iter__(self) -> Iterator[bytes]:
            self.iterations += 1
            if self.iterations == 2:
                conn.execute(
                    "INSERT INTO tlog_leaves (log, idx, entry, leaf_hash) VALUES ('t', 4, ?, ?)",
                    (b"x", merkle.leaf_hash(b"x")),
                )
            return super().__iter__()

    racing = Racing([_entry(i) for i in range(3, 7)])
    with pytest.raises(sqlite3.IntegrityError):
        log.extend(racing)
    assert racing.iterations == 2
    assert conn.in_transaction
    conn.execute("ROLLBACK")  # the planted leaf was inside the batch's savepoint: gone too
    assert _state(conn, log) == before


def _verified_entries(conn: sqlite3.Connection, role: str) -> list[dict[str, Any]]:
    return verified_entries(stored_entries(conn, role), KEY.public_key)


@pytest.mark.parametrize("role", ["node", "coordinator"])
def test_append_many_signs_each_entry_in_place_and_one_checkpoint_covers_all(
    conn: sqlite3.Connection, role: str
) -> None:
    first = memberlog.append(conn, member_id="m1", key=KEY, payload={"kind": "a"}, role=role)
    conn.execute("COMMIT")
    payloads = [{"kind": "b", "n": n, "index": 99, "node_id": "forged"} for n in range(5)]
    done = memberlog.append_many(conn, member_id="m1", key=KEY, payloads=payloads, role=role)
    conn.execute("COMMIT")
    assert (first.index, first.size) == (0, 1)
    assert (done.index, done.size) == (5, 6)
    entries = _verified_entries(conn, role)
    assert [e["index"] for e in entries] == list(range(6))  # the position, not the payload's
    assert {e["node_id"] for e in entries} == {"m1"}
    assert [e.get("n") for e in entries] == [None, 0, 1, 2, 3, 4]
    origin = member_origin(role, "m1")
    checkpoint = parse_and_verify_note(done.note, verifiers={origin: KEY.public_key})
    log = TransparencyLog(conn, name=role)
    assert (checkpoint.size, checkpoint.root) == (6, log.root(6))
    notes = conn.execute(
        "SELECT size FROM log_checkpoint WHERE log = ? ORDER BY size", (role,)
    ).fetchall()
    assert notes == [(1,), (6,)]  # one checkpoint for the batch, none per entry
    for i in range(6):
        merkle.verify_inclusion(
            leaf_hash=merkle.leaf_hash(log.entry(i)), index=i, size=6,
            proof=log.inclusion_proof(i, 6), root=checkpoint.root,
        )  # fmt: skip
    exported = memberlog.export_log(conn, member_id="m1", role=role)
    assert list(exported.entries) == [log.entry(i) for i in range(6)]


def test_append_many_refuses_an_empty_batch_and_writes_nothing(conn: sqlite3.Connection) -> None:
    memberlog.append(conn, member_id="m1", key=KEY, payload={"kind": "a"})
    conn.execute("COMMIT")
    log = TransparencyLog(conn, name="node")
    before = _state(conn, log)
    notes = conn.execute("SELECT * FROM log_checkpoint").fetchall()
    with pytest.raises(ValueError, match="nothing"):
        memberlog.append_many(conn, member_id="m1", key=KEY, payloads=[])
    assert not conn.in_transaction
    assert _state(conn, log) == before
    assert conn.execute("SELECT * FROM log_checkpoint").fetchall() == notes


def test_append_many_without_a_checkpoint_signs_none(conn: sqlite3.Connection) -> None:
    done = memberlog.append_many(
        conn, member_id="m1", key=KEY, payloads=[{"kind": "a"}, {"kind": "b"}], checkpoint=False
    )
    conn.execute("COMMIT")
    assert (done.index, done.size, done.note) == (1, 2, "")
    assert conn.execute("SELECT COUNT(*) FROM log_checkpoint").fetchone() == (0,)
    assert [e["kind"] for e in _verified_entries(conn, "node")] == ["a", "b"]
