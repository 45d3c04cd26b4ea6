"""The SQLite-backed transparency log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedscreen.errors import LogIntegrityError, TreeRangeError
from fedscreen.tlog.log import TransparencyLog
from fedscreen.tlog.merkle import (
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)


def _entry(i: int) -> bytes:
    return b"entry %d" % i


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    yield c
    c.close()


def _fill(log: TransparencyLog, n: int) -> None:
    for i in range(n):
        assert log.append(_entry(i)) == i


def test_append_roots_and_proofs(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="test")
    assert log.size() == 0
    assert log.root() == root_from_leaf_hashes([])
    n = 37
    _fill(log, n)
    conn.commit()
    hashes = [leaf_hash(_entry(i)) for i in range(n)]
    assert log.size() == n
    assert log.entry(5) == _entry(5)
    for size in range(1, n + 1):
        tree_root = log.root(size)
        assert tree_root == root_from_leaf_hashes(hashes[:size])
        for index in range(size):
            verify_inclusion(
                leaf_hash=hashes[index],
                index=index,
                size=size,
                proof=log.inclusion_proof(index, size),
                root=tree_root,
            )
        for size1 in range(1, size + 1):
            verify_consistency(
                size1=size1,
                size2=size,
                root1=log.root(size1),
                root2=tree_root,
                proof=log.consistency_proof(size1, size),
            )
    assert log.root() == log.root(n)
    assert log.inclusion_proof(3) == log.inclusion_proof(3, n)
    assert log.consistency_proof(4) == log.consistency_proof(4, n)


def test_out_of_range_requests(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="test")
    _fill(log, 5)
    with pytest.raises(TreeRangeError):
        log.entry(5)
    with pytest.raises(TreeRangeError):
        log.root(6)
    with pytest.raises(TreeRangeError):
        log.inclusion_proof(5, 5)
    with pytest.raises(TreeRangeError):
        log.inclusion_proof(0, 6)
    with pytest.raises(TreeRangeError):
        log.consistency_proof(0, 5)
    with pytest.raises(TreeRangeError):
        log.consistency_proof(3, 6)


def test_append_does_not_commit(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    writer = sqlite3.connect(db)
    reader = sqlite3.connect(db)
    try:
        log = TransparencyLog(writer, name="n")
        writer.commit()
        log.append(b"a")
        assert writer.in_transaction
        assert TransparencyLog(reader, name="n").size() == 0
        writer.commit()
        assert TransparencyLog(reader, name="n").size() == 1
    finally:
        writer.close()
        reader.close()


def test_append_joins_the_callers_transaction(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="n")
    conn.execute("CREATE TABLE ledger (charge INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO ledger VALUES (1)")
    log.append(b"charged")
    conn.rollback()
    assert log.size() == 0
    assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (0,)


def test_autocommit_connection_gets_a_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    try:
        log = TransparencyLog(conn, name="n")
        log.append(b"x")
        assert conn.in_transaction
        conn.execute("ROLLBACK")
        assert log.size() == 0
    finally:
        conn.close()


def test_reopen(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    conn = sqlite3.connect(db)
    log = TransparencyLog(conn, name="n")
    _fill(log, 21)
    conn.commit()
    old_root = log.root()
    conn.close()

    conn = sqlite3.connect(db)
    try:
        log = TransparencyLog(conn, name="n")
        assert log.size() == 21
        assert log.root() == old_root
        for i in range(21, 50):
            assert log.append(_entry(i)) == i
        conn.commit()
        hashes = [leaf_hash(_entry(i)) for i in range(50)]
        assert log.root() == root_from_leaf_hashes(hashes)
        verify_consistency(
            size1=21, size2=50, root1=old_root, root2=log.root(), proof=log.consistency_proof(21)
        )
    finally:
        conn.close()


def test_logs_sharing_a_database_are_independent(conn: sqlite3.Connection) -> None:
    a = TransparencyLog(conn, name="a")
    b = TransparencyLog(conn, name="b")
    _fill(a, 10)
    assert b.append(b"only b") == 0
    assert a.size() == 10
    assert b.size() == 1
    assert b.root() == root_from_leaf_hashes([leaf_hash(b"only b")])
    assert a.root() == root_from_leaf_hashes([leaf_hash(_entry(i)) for i in range(10)])


def test_missing_node_is_reported(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="n")
    _fill(log, 8)
    conn.execute("DELETE FROM tlog_nodes WHERE log = 'n' AND level = 2 AND idx = 0")
    with pytest.raises(LogIntegrityError):
        log.root(6)


def test_proofs_use_logarithmically_many_queries(conn: sqlite3.Connection) -> None:
    log = TransparencyLog(conn, name="n")
    n = 3000
    for i in range(n):
        log.append(_entry(i))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        log.root()
        log.inclusion_proof(1234)
        log.consistency_proof(1001)
    finally:
        conn.set_trace_callback(None)
    # log2(3000) < 12: a few dozen indexed reads, nowhere near n.
    assert len(statements) < 80
