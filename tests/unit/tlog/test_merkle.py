"""RFC 9162 Merkle proofs: transparency-dev/merkle vectors and property tests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import TreeRangeError, VerificationError
from fedscreen.tlog.merkle import (
    EMPTY_ROOT,
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# Copied unchanged from transparency-dev/merkle (testdata/inclusion and testdata/consistency);
# source, commit and licence in tests/vectors/README.md.
VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "merkle" / "testdata"
# Files per folder at the recorded commit; fewer means the copy is incomplete.
MIN_VECTOR_FILES = {"inclusion": 98, "consistency": 98}


def _vector_files(kind: str) -> list[Path]:
    folder = VECTORS / kind
    return sorted(folder.rglob("*.json")) if folder.is_dir() else []


def _vector_params(kind: str) -> list[Any]:
    files = _vector_files(kind)
    if not files:
        # One case that fails, rather than a skip or an empty (silently skipped) set.
        return [pytest.param(VECTORS / kind, id="vectors-missing")]
    return [pytest.param(f, id=str(f.relative_to(VECTORS / kind))) for f in files]


@pytest.mark.parametrize("kind", sorted(MIN_VECTOR_FILES))
def test_vector_files_are_complete(kind: str) -> None:
    files = _vector_files(kind)
    if len(files) < MIN_VECTOR_FILES[kind]:
        pytest.fail(
            f"expected at least {MIN_VECTOR_FILES[kind]} transparency-dev/merkle vector files "
            f"under {VECTORS / kind}, found {len(files)} (see tests/vectors/README.md)",
            pytrace=False,
        )
    # Each numbered folder holds a valid proof (happy-path.json) and its mutations.
    numbered = {
        f.parent for f in files if f.parent.parent == VECTORS / kind and f.parent.name.isdigit()
    }
    assert len(numbered) >= 5
    for folder in sorted(numbered):
        assert (folder / "happy-path.json") in files, f"{folder} has no happy-path.json"


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        pytest.fail(
            f"transparency-dev/merkle vectors missing: {path} (see tests/vectors/README.md)",
            pytrace=False,
        )
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if path.name == "happy-path.json":
        assert doc["wantErr"] is False
    return doc


def _b64(values: list[str] | None) -> list[bytes]:
    return [base64.b64decode(v) for v in values or []]


@pytest.mark.parametrize("path", _vector_params("inclusion"))
def test_inclusion_vectors(path: Path) -> None:
    doc = _load(path)

    def check() -> None:
        verify_inclusion(
            leaf_hash=base64.b64decode(doc["leafHash"]),
            index=doc["leafIdx"],
            size=doc["treeSize"],
            proof=_b64(doc["proof"]),
            root=base64.b64decode(doc["root"]),
        )

    if doc["wantErr"]:
        with pytest.raises(VerificationError):
            check()
    else:
        check()


@pytest.mark.parametrize("path", _vector_params("consistency"))
def test_consistency_vectors(path: Path) -> None:
    doc = _load(path)

    def check() -> None:
        verify_consistency(
            size1=doc["size1"],
            size2=doc["size2"],
            root1=base64.b64decode(doc["root1"]),
            root2=base64.b64decode(doc["root2"]),
            proof=_b64(doc["proof"]),
        )

    if doc["wantErr"]:
        with pytest.raises(VerificationError):
            check()
    else:
        check()


# --- independent reference: the recursive definitions of RFC 9162 §2.1 -------------

MAX_LEAVES = 300
LEAF_HASHES = [leaf_hash(b"leaf %d" % i) for i in range(MAX_LEAVES)]
STORE = MemoryHashStore(LEAF_HASHES)


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, straight from the definition."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = _k(len(hashes))
    return node_hash(naive_mth(hashes[:k]), naive_mth(hashes[k:]))


def naive_path(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH."""
    if len(hashes) == 1:
        return []
    k = _k(len(hashes))
    if m < k:
        return [*naive_path(m, hashes[:k]), naive_mth(hashes[k:])]
    return [*naive_path(m - k, hashes[k:]), naive_mth(hashes[:k])]


def naive_subproof(m: int, hashes: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF."""
    n = len(hashes)
    if m == n:
        return [] if b else [naive_mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, hashes[:k], b), naive_mth(hashes[k:])]
    return [*naive_subproof(m - k, hashes[k:], False), naive_mth(hashes[:k])]


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    changed = list(proof)
    h = bytearray(changed[which])
    h[bit // 8] ^= 1 << (bit % 8)
    changed[which] = bytes(h)
    return changed


sizes = st.integers(1, MAX_LEAVES)


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return size, draw(st.integers(0, size - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(sizes)
    return draw(st.integers(1, size2)), size2


@settings(max_examples=300, deadline=None, database=None)
@given(sizes)
def test_roots_match_naive_definition(size: int) -> None:
    expected = naive_mth(LEAF_HASHES[:size])
    assert root(STORE, size=size) == expected
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == expected


def test_empty_tree_root() -> None:
    assert root(STORE, size=0) == EMPTY_ROOT
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@settings(max_examples=300, deadline=None, database=None)
@given(size_and_index(), st.data())
def test_inclusion_proofs(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    proof = inclusion_proof(STORE, index=index, size=size)
    assert proof == naive_path(index, LEAF_HASHES[:size])
    tree_root = naive_mth(LEAF_HASHES[:size])
    verify_inclusion(
        leaf_hash=LEAF_HASHES[index], index=index, size=size, proof=proof, root=tree_root
    )

    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(VerificationError):
            verify_inclusion(
                leaf_hash=LEAF_HASHES[index],
                index=index,
                size=size,
                proof=_flip(proof, which, bit),
                root=tree_root,
            )
    wrong_lengths = [[*proof, LEAF_HASHES[0]]] + ([proof[:-1]] if proof else [])
    for bad_proof in wrong_lengths:
        with pytest.raises(VerificationError):
            verify_inclusion(
                leaf_hash=LEAF_HASHES[index],
                index=index,
                size=size,
                proof=bad_proof,
                root=tree_root,
            )
    other = (index + 1) % size
    if other != index:
        with pytest.raises(VerificationError):
            verify_inclusion(
                leaf_hash=LEAF_HASHES[other], index=index, size=size, proof=proof, root=tree_root
            )


@settings(max_examples=300, deadline=None, database=None)
@given(two_sizes(), st.data())
def test_consistency_proofs(case: tuple[int, int], data: st.DataObject) -> None:
    size1, size2 = case
    proof = consistency_proof(STORE, size1=size1, size2=size2)
    assert proof == naive_subproof(size1, LEAF_HASHES[:size2], True)
    root1 = naive_mth(LEAF_HASHES[:size1])
    root2 = naive_mth(LEAF_HASHES[:size2])
    verify_consistency(size1=size1, size2=size2, root1=root1, root2=root2, proof=proof)

    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(VerificationError):
            verify_consistency(
                size1=size1, size2=size2, root1=root1, root2=root2, proof=_flip(proof, which, bit)
            )
        with pytest.raises(VerificationError):
            verify_consistency(size1=size1, size2=size2, root1=root1, root2=root2, proof=proof[:-1])
    with pytest.raises(VerificationError):
        verify_consistency(
            size1=size1, size2=size2, root1=root1, root2=root2, proof=[*proof, LEAF_HASHES[0]]
        )
    bad_root = _flip([root1], 0, data.draw(st.integers(0, 255)))[0]
    with pytest.raises(VerificationError):
        verify_consistency(size1=size1, size2=size2, root1=bad_root, root2=root2, proof=proof)
    with pytest.raises(VerificationError):
        verify_consistency(size1=size1, size2=size2, root1=root1, root2=bad_root, proof=proof)


def test_proof_generation_rejects_bad_ranges() -> None:
    with pytest.raises(TreeRangeError):
        inclusion_proof(STORE, index=5, size=5)
    with pytest.raises(TreeRangeError):
        inclusion_proof(STORE, index=-1, size=5)
    with pytest.raises(TreeRangeError):
        consistency_proof(STORE, size1=0, size2=5)
    with pytest.raises(TreeRangeError):
        consistency_proof(STORE, size1=6, size2=5)
    with pytest.raises(TreeRangeError):
        root(STORE, size=MAX_LEAVES + 1)


def test_verify_rejects_wrong_length_hashes() -> None:
    proof = inclusion_proof(STORE, index=3, size=10)
    tree_root = root(STORE, size=10)
    with pytest.raises(VerificationError):
        verify_inclusion(
            leaf_hash=LEAF_HASHES[3][:31], index=3, size=10, proof=proof, root=tree_root
        )
    with pytest.raises(VerificationError):
        verify_inclusion(
            leaf_hash=LEAF_HASHES[3], index=3, size=10, proof=[*proof[:-1], b""], root=tree_root
        )


def test_consistency_from_empty_tree_is_rejected() -> None:
    with pytest.raises(VerificationError):
        verify_consistency(size1=0, size2=0, root1=EMPTY_ROOT, root2=EMPTY_ROOT, proof=[])
