"""protocol.consistency.check_extends: a grown log passes; shrunk, forked or unproven fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import VerificationError
from fedscreen.protocol.consistency import check_extends
from fedscreen.tlog.checkpoint import Checkpoint
from fedscreen.tlog.merkle import MemoryHashStore, consistency_proof, leaf_hash, root

ORIGIN = "fedscreen.node/130102"
MAX_LEAVES = 70


def _store(leaves: int, *, salt: bytes = b"") -> MemoryHashStore:
    return MemoryHashStore(leaf_hash(salt + i.to_bytes(4, "big")) for i in range(leaves))


def _head(store: MemoryHashStore, size: int, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin, size, root(store, size=size))


SIZES = st.integers(1, MAX_LEAVES).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n)))


@settings(max_examples=300, deadline=None, database=None)
@given(sizes=SIZES)
def test_a_grown_log_extends_every_older_head(sizes: tuple[int, int]) -> None:
    old, new = sizes
    store = _store(new)
    proof = consistency_proof(store, size1=old, size2=new) if old < new else []
    check_extends(_head(store, old), _head(store, new), proof)


@settings(max_examples=300, deadline=None, database=None)
@given(sizes=SIZES)
def test_a_shrunk_log_fails(sizes: tuple[int, int]) -> None:
    new, old = sizes  # the held head is the larger one
    if new == old:
        return
    store = _store(old)
    with pytest.raises(VerificationError, match=f"shrank from {old} to {new} entries"):
        check_extends(_head(store, old), _head(store, new), [])


@settings(max_examples=300, deadline=None, database=None)
@given(sizes=SIZES, fork_at=st.integers(0, MAX_LEAVES - 1))
def test_a_forked_log_fails_even_with_its_own_proof(sizes: tuple[int, int], fork_at: int) -> None:
    old, new = sizes
    fork_at %= old  # the fork rewrites one entry the held head covers
    honest = _store(new)
    forked = MemoryHashStore(
        leaf_hash(b"forked" if i == fork_at else i.to_bytes(4, "big")) for i in range(new)
    )
    proof = consistency_proof(forked, size1=old, size2=new) if old < new else []
    with pytest.raises(VerificationError, match="forked"):
        check_extends(_head(honest, old), _head(forked, new), proof)


def test_a_wrong_or_missing_proof_fails() -> None:
    store = _store(10)
    proof = consistency_proof(store, size1=4, size2=10)
    with pytest.raises(VerificationError, match="does not prove"):
        check_extends(_head(store, 4), _head(store, 10), [])
    tampered = [hashlib.sha256(b"x").digest(), *proof[1:]]
    with pytest.raises(VerificationError, match="does not prove"):
        check_extends(_head(store, 4), _head(store, 10), tampered)
    with pytest.raises(VerificationError, match="does not prove"):
        check_extends(_head(store, 5), _head(store, 10), proof)  # the proof for another size


def test_heads_of_two_logs_fail() -> None:
    store = _store(3)
    with pytest.raises(VerificationError, match="two logs"):
        check_extends(_head(store, 3), _head(store, 3, "fedscreen.node/130104"), [])


def test_an_equal_head_needs_no_proof() -> None:
    store = _store(3)
    check_extends(_head(store, 3), _head(store, 3), [])
