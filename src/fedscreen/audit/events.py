"""Log entries that record events, not queries: a node's rollback, a node's quarantine.

* A node's ``rollback`` entry (``fedscreen node recover``) says its database went
  back from one signed checkpoint to an older one, why, and the ε it charged again
  (``restored``) because the restored ledger had forgotten it. The auditor checks
  both checkpoints are the node's own signed notes, that the older one is this
  log's own history just before the entry, that the newer one is really ahead
  (or a fork), and adds the restored ε to the charges it sums — so a node's
  ``budget_after`` figures keep adding up across a recovery. An entry with
  ``accepted_lost_budget`` (the operator lost the ledger mirror too) is reported
  apart: from it on the node's ε sums are only a lower bound.
* A coordinator's ``quarantine`` entry holds the evidence (two checkpoints the
  node signed: the one the coordinator held and the one it presented); a
  ``readmit`` entry ends a quarantine. The auditor checks the evidence is signed
  by the node (its key in force, or an older key it held: a re-keyed node), that a
  readmission follows a quarantine, and (in ``verify``) that no release uses a
  quarantined node's answer.

Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.errors import VerificationError
from fedscreen.protocol.answer import stated_epsilon
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.manifest import Manifest

MICRO: Final = 1_000_000
#: event kinds a coordinator logs besides requests, answers and releases
COORDINATOR_EVENTS: Final = frozenset({"quarantine", "readmit"})


@dataclass
class Quarantines:
    """The quarantines a coordinator log recorded, in log order."""

    quarantines: int = 0
    readmissions: int = 0
    #: nodes quarantined and not (yet) readmitted
    current: set[str] = field(default_factory=set)


def rollback_restored(
    entry: Mapping[str, Any],
    *,
    index: int,
    origin: str,
    key: bytes,
    root_at: Callable[[int], bytes],
) -> dict[tuple[str, str], int]:
    """Check a node's rollback entry at ``index``; the µε per (year, analyst) it charged again.

    ``root_at(size)`` is the Merkle root of this log's first ``size`` entries.
    Raises ValueError or VerificationError.
    """
    if entry.get("epsilon") != 0:
        raise ValueError("a rollback entry charges no ε of its own")
    before = _note(entry.get("from_checkpoint"), [key], origin, "from_checkpoint")
    after_note = entry.get("to_checkpoint")
    if after_note is not None:
        after = _note(after_note, [key], origin, "to_checkpoint")
        if after.size > index or root_at(after.size) != after.root:
            raise ValueError("the rollback's to_checkpoint is not this log's own history")
        if after.size > before.size or (after.size == before.size and after.root == before.root):
            raise ValueError("the rollback's from_checkpoint is not ahead of its to_checkpoint")
    if not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
        raise ValueError("a rollback entry states its reason")
    restored = entry.get("restored", {})
    if not isinstance(restored, dict):
        raise TypeError("restored must be an object of years")
    charged: dict[tuple[str, str], int] = {}
    for year, analysts in restored.items():
        if not isinstance(analysts, dict):
            raise TypeError("restored[year] must be an object of analysts")
        for analyst, epsilon in analysts.items():
            # a finite ε in range, never negative (a huge or infinite one would not round)
            micro = round(stated_epsilon(epsilon, "a restored ε") * MICRO)
            charged[str(year), str(analyst)] = micro
    return charged


def accepted_lost_budget(entry: Mapping[str, Any]) -> bool:
    """Whether a rollback entry says the operator accepted lost budget
    (``node recover --accept-lost-budget``): ε spent after the backup may be uncounted,
    so the node's sums are a lower bound from this entry on. Raises TypeError."""
    flag = entry.get("accepted_lost_budget", False)  # entries before the flag: not accepted
    if not isinstance(flag, bool):
        raise TypeError("accepted_lost_budget must be true or false")
    return flag


def coordinator_event(
    kind: str,
    entry: Mapping[str, Any],
    *,
    manifest: Manifest,
    seen: Quarantines,
    keys: Sequence[bytes] = (),
) -> None:
    """Check a coordinator's quarantine or readmission entry; update ``seen``.

    The evidence must be signed by the node: by the key ``manifest`` (in force) gives
    it, or by one of ``keys`` (every key it held up to then: the coordinator may
    hold a checkpoint the node signed before it was re-keyed). Raises ValueError,
    KeyError, TypeError or VerificationError (the caller reports the entry as invalid).
    """
    node = entry["node"]
    if not isinstance(node, str) or not isinstance(entry.get("reason"), str):
        raise TypeError("a quarantine or readmission names its node and reason")
    if kind == "quarantine":
        member = manifest.member(node, role="node")
        origin = member_origin("node", node)
        held_by = [member.signing_key, *(k for k in keys if k != member.signing_key)]
        held = _note(entry.get("held_checkpoint"), held_by, origin, "held_checkpoint")
        shown = _note(entry.get("presented_checkpoint"), held_by, origin, "presented_checkpoint")
        if shown.size == held.size and shown.root == held.root:
            # a smaller tree or another root at the same size is evidence on its face; a
            # larger one failed its consistency proof, which the coordinator checked
            raise ValueError("the quarantine's two checkpoints are the same")
        seen.quarantines += 1
        seen.current.add(node)
    elif kind == "readmit":
        if node not in seen.current:
            raise ValueError(f"readmits node {node}, which is not quarantined")
        seen.readmissions += 1
        seen.current.discard(node)
    else:  # pragma: no cover - callers pass only COORDINATOR_EVENTS
        raise ValueError(f"unknown event {kind!r}")


def _note(value: object, keys: Sequence[bytes], origin: str, what: str) -> Checkpoint:
    """``value``: a checkpoint of ``origin`` signed by one of ``keys`` (the note's key id
    picks it)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a signed checkpoint note")
    failure: VerificationError | None = None
    for key in keys:
        try:
            checkpoint = parse_and_verify_note(value, verifiers={origin: key})
            break
        except VerificationError as exc:
            failure = failure or exc
    else:
        raise VerificationError(f"{what}: {failure or 'no key'}")
    if checkpoint.origin != origin:
        raise ValueError(f"{what} is another log's checkpoint")
    return checkpoint
