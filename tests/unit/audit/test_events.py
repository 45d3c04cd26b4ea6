"""The auditor's checks of event entries: a node's rollback, a coordinator's quarantine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.audit.events import (
    Quarantines,
    accepted_lost_budget,
    coordinator_event,
    rollback_restored,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, sign_checkpoint
from fedscreen.trust.manifest import Manifest, Member

NODE = "130102"
ORIGIN = member_origin("node", NODE)
KEY = SigningKey.generate()
OTHER = SigningKey.generate()


def _tree(leaves: list[bytes]) -> merkle.MemoryHashStore:
    tree = merkle.MemoryHashStore()
    for leaf in leaves:
        tree.append(merkle.leaf_hash(leaf))
    return tree


def _note(tree: merkle.MemoryHashStore, size: int, key: SigningKey = KEY) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, size, merkle.root(tree, size=size)), key=key)


#: the log before the backup was restored (5 entries), and the restored one (3 entries,
#: then the rollback entry at index 3)
AHEAD = _tree([b"e%d" % i for i in range(5)])
RESTORED = _tree([b"e%d" % i for i in range(3)])


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "rollback",
        "from_checkpoint": _note(AHEAD, 5),
        "to_checkpoint": _note(RESTORED, 3),
        "reason": "restored from Sunday's backup after a disk failure",
        "epsilon": 0,
        "restored": {"2024-2025": {"analyst-1": 0.3, "analyst-2": 0.25}},
    }
    entry.update(changes)
    return entry


def _check(entry: dict[str, Any], index: int = 3) -> dict[tuple[str, str], int]:
    return rollback_restored(
        entry,
        index=index,
        origin=ORIGIN,
        key=KEY.public_key,
        root_at=lambda n: merkle.root(RESTORED, size=n),
    )


def test_a_rollback_adds_the_restored_epsilon_in_micro_epsilon() -> None:
    assert _check(_entry()) == {
        ("2024-2025", "analyst-1"): 300_000,
        ("2024-2025", "analyst-2"): 250_000,
    }


def test_a_rollback_without_a_database_checkpoint_is_accepted() -> None:
    assert _check(_entry(to_checkpoint=None, restored={})) == {}


def test_an_accepted_lost_budget_is_read_from_the_entry() -> None:
    """Finding F3: the flag ``node recover --accept-lost-budget`` writes; entries written
    before the flag existed are not lost-budget recoveries."""
    assert accepted_lost_budget(_entry(accepted_lost_budget=True)) is True
    assert accepted_lost_budget(_entry(accepted_lost_budget=False)) is False
    assert accepted_lost_budget(_entry()) is False


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.booleans())))
def test_an_accepted_lost_budget_that_is_not_a_boolean_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="accepted_lost_budget"):
        accepted_lost_budget(_entry(accepted_lost_budget=value))


@pytest.mark.parametrize(
    ("changes", "index"),
    [
        ({"epsilon": 0.1}, 3),  # the entry itself charges nothing
        ({"to_checkpoint": _note(AHEAD, 4)}, 3),  # not this log's history
        ({"to_checkpoint": _note(RESTORED, 3)}, 2),  # after the entry
        ({"from_checkpoint": _note(RESTORED, 2)}, 3),  # "ahead" is behind
        ({"from_checkpoint": _note(RESTORED, 3)}, 3),  # the very same tree
        ({"from_checkpoint": _note(AHEAD, 5, OTHER)}, 3),  # signed by someone else
        ({"from_checkpoint": "not a note"}, 3),
        ({"reason": " "}, 3),
        ({"restored": {"2024-2025": {"analyst-1": -0.1}}}, 3),
        ({"restored": {"2024-2025": {"analyst-1": True}}}, 3),
        ({"restored": {"2024-2025": {"analyst-1": 10**400}}}, 3),  # no float: was a traceback
        ({"restored": {"2024-2025": {"analyst-1": float("inf")}}}, 3),  # would not round
        ({"restored": ["2024-2025"]}, 3),
    ],
)
def test_a_false_rollback_entry_is_refused(changes: dict[str, Any], index: int) -> None:
    with pytest.raises((ValueError, TypeError, VerificationError)):
        _check(_entry(**changes), index)


@given(
    st.dictionaries(
        st.text(max_size=8), st.dictionaries(st.text(max_size=8), st.integers(0, 10**9))
    )
)
def test_restored_sums_are_exact_whatever_the_numbers(restored: dict[str, dict[str, int]]) -> None:
    entry = _entry(
        restored={y: {a: m / 1_000_000 for a, m in v.items()} for y, v in restored.items()}
    )
    assert _check(entry) == {(y, a): m for y, v in restored.items() for a, m in v.items()}


def _manifest() -> Manifest:
    authority = SigningKey.generate()
    member = Member(NODE, "node", "county", KEY.public_key, "00" * 32)
    return Manifest("test", 1, "2026-12-06", authority.public_key, (member,))


def _quarantine(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "quarantine",
        "node": NODE,
        "reason": "its log shrank from 5 to 3 entries",
        "held_checkpoint": _note(AHEAD, 5),
        "presented_checkpoint": _note(RESTORED, 3),
    }
    entry.update(changes)
    return entry


def test_a_quarantine_then_a_readmission_are_counted() -> None:
    seen = Quarantines()
    coordinator_event("quarantine", _quarantine(), manifest=_manifest(), seen=seen)
    assert seen.current == {NODE}
    coordinator_event(
        "readmit", {"node": NODE, "reason": "checked"}, manifest=_manifest(), seen=seen
    )
    assert (seen.quarantines, seen.readmissions, seen.current) == (1, 1, set())


def test_a_readmission_without_a_quarantine_is_refused() -> None:
    with pytest.raises(ValueError, match="not quarantined"):
        coordinator_event(
            "readmit", {"node": NODE, "reason": "x"}, manifest=_manifest(), seen=Quarantines()
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"presented_checkpoint": _note(AHEAD, 5)},  # no evidence: the same checkpoint
        {"held_checkpoint": _note(AHEAD, 5, OTHER)},  # not the node's signature
        {"node": "999999"},  # not a node of the manifest
        {"reason": None},
    ],
)
def test_a_quarantine_without_evidence_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError, VerificationError)):
        coordinator_event(
            "quarantine", _quarantine(**changes), manifest=_manifest(), seen=Quarantines()
        )
