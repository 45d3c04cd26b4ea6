"""``MemoryHashStore.from_entries`` (a level at a time, what audits use) builds the same
store as appending each entry's leaf hash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import TreeRangeError
from fedscreen.tlog.merkle import (
    EMPTY_ROOT,
    MemoryHashStore,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_leaf_hashes,
)


def _appended(entries: list[bytes]) -> MemoryHashStore:
    store = MemoryHashStore()
    for entry in entries:
        store.append(leaf_hash(entry))
    return store


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=70))
def test_from_entries_is_the_appended_store(entries: list[bytes]) -> None:
    built, appended = MemoryHashStore.from_entries(entries), _appended(entries)
    assert len(built) == len(appended) == len(entries)
    assert built._levels == appended._levels
    for size in range(len(entries) + 1):
        expected = root_from_leaf_hashes([leaf_hash(e) for e in entries[:size]])
        assert root(built, size=size) == expected
    for index in range(len(entries)):
        assert inclusion_proof(built, index=index, size=len(entries)) == inclusion_proof(
            appended, index=index, size=len(entries)
        )


def test_from_no_entries_is_the_empty_tree() -> None:
    store = MemoryHashStore.from_entries([])
    assert len(store) == 0
    assert root(store, size=0) == EMPTY_ROOT
    with pytest.raises(TreeRangeError):
        store.subtree_hash(0, 0)


def test_the_store_grows_on_from_its_entries() -> None:
    entries = [b"%d" % i for i in range(11)]
    store = MemoryHashStore.from_entries(entries[:5])
    for entry in entries[5:]:
        store.append(leaf_hash(entry))
    assert store._levels == _appended(entries)._levels
