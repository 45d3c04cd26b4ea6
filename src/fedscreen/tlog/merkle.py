"""RFC 9162 Merkle tree hashing with inclusion and consistency proofs.

Proof generation reads hashes of complete ("perfect") subtrees from a
:class:`HashStore`, so a root or proof for a tree of ``n`` leaves costs
O(log n) lookups. Verification needs no store.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Protocol

from fedscreen.errors import TreeRangeError, VerificationError

HASH_SIZE = 32

# RFC 9162 §2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


class HashStore(Protocol):
    """Source of the hashes of complete subtrees of one tree."""

    def subtree_hash(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree over leaves [index·2^level, (index+1)·2^level).

        Level 0 gives leaf hashes. Raise if that subtree is not complete.
        """
        ...


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """Root of the tree with these leaf hashes, in O(n) time and O(log n) memory."""
    # Stack of (level, hash) of complete subtrees with strictly decreasing levels.
    stack: list[tuple[int, bytes]] = []
    for h in leaf_hashes:
        _check_hash(h, "leaf hash")
        level = 0
        while stack and stack[-1][0] == level:
            h = node_hash(stack.pop()[1], h)
            level += 1
        stack.append((level, h))
    if not stack:
        return EMPTY_ROOT
    return _fold_right([h for _, h in stack])


def root(store: HashStore, *, size: int) -> bytes:
    """MTH of the first ``size`` leaves (RFC 9162 §2.1.1)."""
    if size < 0:
        raise TreeRangeError(f"tree size {size} is negative")
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(store, 0, size)


def inclusion_proof(store: HashStore, *, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) per RFC 9162 §2.1.3.1, leaf-side sibling first."""
    if not 0 <= index < size:
        raise TreeRangeError(f"leaf index {index} is not in a tree of size {size}")
    siblings: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            siblings.append(_range_hash(store, start + k, end))
            end = start + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            siblings.append(_range_hash(store, start, start + k))
            start += k
    siblings.reverse()
    return siblings


def consistency_proof(store: HashStore, *, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[0:size2]) per RFC 9162 §2.1.4.1; needs 0 < size1 <= size2."""
    if not 0 < size1 <= size2:
        raise TreeRangeError(f"no consistency proof from size {size1} to size {size2}")
    nodes: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            nodes.append(_range_hash(store, start + k, end))
            end = start + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            nodes.append(_range_hash(store, start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        nodes.append(_range_hash(store, start, end))
    nodes.reverse()
    return nodes


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 §2.1.3.2); raise VerificationError if it fails."""
    _check_hash(leaf_hash, "leaf hash", VerificationError)
    for p in proof:
        _check_hash(p, "proof hash", VerificationError)
    # Step 1: leaf_index must be less than tree_size.
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf_hash  # steps 2 and 3
    for p in proof:  # step 4
        if sn == 0:  # 4a: proof longer than the path
            raise VerificationError("inclusion proof is too long")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    if sn != 0:  # step 5
        raise VerificationError("inclusion proof is too short")
    if not hmac.compare_digest(r, root):
        raise VerificationError("inclusion proof does not lead to the given root")


def verify_consistency(
    *, size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof (RFC 9162 §2.1.4.2); raise VerificationError if it fails.

    ``size1`` must be positive: RFC 9162 §2.1.4 defines proofs for 0 < m, and a
    proof from the empty tree would prove nothing. Equal sizes need an empty
    proof and equal roots.
    """
    for p in proof:
        _check_hash(p, "proof hash", VerificationError)
    if not 0 < size1 <= size2:
        raise VerificationError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == size2:
        if proof:
            raise VerificationError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(root1, root2):
            raise VerificationError("roots differ for the same tree size")
        return
    if not proof:  # step 1
        raise VerificationError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # step 2: first is an exact power of 2
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            raise VerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    if sn != 0:  # step 7
        raise VerificationError("consistency proof is too short")
    if not hmac.compare_digest(fr, root1):
        raise VerificationError("consistency proof does not lead to the first root")
    if not hmac.compare_digest(sr, root2):
        raise VerificationError("consistency proof does not lead to the second root")


class MemoryHashStore:
    """An in-memory :class:`HashStore` that keeps every complete subtree hash."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @classmethod
    def from_entries(cls, entries: Sequence[bytes]) -> MemoryHashStore:
        """The store of the tree over ``entries`` (leaf data, not leaf hashes).

        The same store as appending each entry's :func:`leaf_hash`, built a level at a
        time: an audit hashes every entry of every log it verifies.
        """
        store = cls()
        row = [hashlib.sha256(b"\x00" + entry).digest() for entry in entries]  # RFC 9162 §2.1.1
        store._levels = [row]
        while len(row) > 1:
            # the complete pairs of the row below (an odd last hash has no sibling yet:
            # its parent's subtree is not complete)
            pairs = zip(row[0::2], row[1::2], strict=False)
            row = [node_hash(left, right) for left, right in pairs]
            store._levels.append(row)
        return store

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash; return its index."""
        _check_hash(leaf_hash, "leaf hash")
        index = len(self._levels[0])
        h, level = leaf_hash, 0
        while True:
            row = self._levels[level]
            row.append(h)
            if len(row) % 2:
                return index
            h = node_hash(row[-2], row[-1])
            level += 1
            if level == len(self._levels):
                self._levels.append([])

    def subtree_hash(self, level: int, index: int) -> bytes:
        """See :meth:`HashStore.subtree_hash`."""
        if 0 <= level < len(self._levels) and 0 <= index < len(self._levels[level]):
            return self._levels[level][index]
        raise TreeRangeError(f"no complete subtree at level {level}, index {index}")


def _split(n: int) -> int:
    """RFC 9162 §2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(store: HashStore, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a subtree of the RFC 9162 recursion.

    Such a range splits, left to right, into complete subtrees of strictly
    decreasing size, each aligned to its size; MTH folds them from the right.
    """
    parts: list[bytes] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start & ((1 << level) - 1):
            raise AssertionError(f"range [{start}, {end}) is not a subtree")
        parts.append(store.subtree_hash(level, start >> level))
        start += 1 << level
    return _fold_right(parts)


def _fold_right(parts: list[bytes]) -> bytes:
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def _check_hash(value: object, what: str, error: type[Exception] = ValueError) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise error(f"{what} must be {HASH_SIZE} bytes")
