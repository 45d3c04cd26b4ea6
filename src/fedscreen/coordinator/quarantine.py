"""Rollback caught online: each node's verified checkpoints, and the nodes held in quarantine.

The coordinator keeps, in its own database (``coordinator.db``), the checkpoints
of each node's log it has verified, and sends the newest one's size with every
query (``QueryRequest.known_log_size``). The node's answer carries a new signed
checkpoint and an RFC 9162 consistency proof from that size. A node whose log
shrank, forked or cannot prove consistency is **quarantined**: its answers are
not used (the release lists it missing with the reason) until the province
readmits it (``fedscreen coordinator readmit``). Both events go into the
coordinator's log — the quarantine with its evidence, the two signed checkpoints.

Quarantine lives in the database, not in memory, so a readmission made while the
server runs (another process) counts from the next query on. Readmission forgets
the node's checkpoints: its next answer's checkpoint is the new baseline.

Every function here runs on the core's thread (it uses the core's connection).
Verified checkpoints are written in batches (:meth:`CheckpointBook.flush`, before
each release and at shutdown), not one commit per answer: a checkpoint lost in a
crash only leaves an older baseline, from which the node's log still proves
consistency. A quarantine and a readmission are committed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fedscreen.coordinator.checkpoints import (
    MAX_HELD_CHECKPOINTS,
    CheckpointBook,
    NodeLogState,
    Quarantined,
)
from fedscreen.coordinator.core import Coordinator
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.consistency import check_extends
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.manifest import show_id

__all__ = [
    "MAX_HELD_CHECKPOINTS",
    "MAX_READMIT_REASON_CHARS",
    "CheckpointBook",
    "NodeLogState",
    "Quarantined",
    "quarantine",
    "readmit",
    "screen_answer",
]

#: longest readmission reason kept in the log (characters)
MAX_READMIT_REASON_CHARS: Final = 300


def _answer_checkpoint(core: Coordinator, node_id: str, raw: bytes) -> tuple[Checkpoint, str]:
    """The node-signed checkpoint inside a node's answer envelope; raises VerificationError."""
    member = core.manifest.member(node_id, role="node")
    payload = verify_envelope(
        Envelope.from_json(raw),
        expected_payload_type=ANSWER_V1,
        trusted_keys={member.key_id: member.signing_key},
        memo=core.signatures,
    )
    try:
        data = parse_json(payload)
        note = data["checkpoint"] if isinstance(data, dict) else None
    except (ValueError, KeyError):
        note = None
    if not isinstance(note, str):
        raise VerificationError(f"the answer from {node_id} carries no checkpoint")
    origin = member_origin("node", node_id)
    checkpoint = parse_and_verify_note(
        note, verifiers={origin: member.signing_key}, memo=core.signatures
    )
    if checkpoint.origin != origin:
        raise VerificationError(f"the checkpoint in {node_id}'s answer is of another log")
    return checkpoint, note


def _forget_old_key(core: Coordinator, book: CheckpointBook, node_id: str, key: bytes) -> None:
    """Forget the node's checkpoints if they are not signed by its key in the manifest in
    force: the node was re-keyed (revoked, then added again with a new key) and its new
    log starts afresh — no rollback. Checked against the stored note, so a re-keying
    made while the coordinator was down is caught too. No log entry: the manifest
    versions in the coordinator's log already show the key change to auditors."""
    newest = book.known_size(node_id)
    if book.key_checked.get(node_id) == (newest, key):
        return  # checked at this size under this key already
    held = book.held(node_id, newest) if newest > 0 else None
    if held is None:
        return
    try:
        parse_and_verify_note(
            held[1], verifiers={member_origin("node", node_id): key}, memo=core.signatures
        )
    except VerificationError:
        book.forget(node_id)
        return
    book.key_checked[node_id] = (newest, key)


def screen_answer(
    core: Coordinator,
    book: CheckpointBook,
    *,
    node_id: str,
    envelope: bytes,
    proof: Sequence[bytes],
    sent_size: int,
    now_ms: int,
    checkpoint: tuple[Checkpoint, str] | None = None,
) -> str | None:
    """Why the node's answer may not be used (its log rolled back), or None if it may.

    ``sent_size`` is the ``known_log_size`` the query went out with; ``proof`` the
    node's consistency proof from it. A consistent checkpoint is kept (the newest
    is the next query's baseline); an inconsistent one quarantines the node, with
    the evidence logged. An answer that does not verify at all is not evidence of a
    rollback: None, and the release's own verification drops it. ``checkpoint``: the
    answer's checkpoint and note, when the caller has verified the answer already.
    """
    held_quarantine = book.quarantined(node_id)
    if held_quarantine is not None:
        return f"quarantined: {held_quarantine.reason}"
    try:
        new, note = checkpoint or _answer_checkpoint(core, node_id, envelope)
    except VerificationError:
        return None
    # the key the answer (and its checkpoint) was verified under: the manifest's in force
    key = core.manifest.member(node_id, role="node").signing_key
    _forget_old_key(core, book, node_id, key)
    # the size the query was sent with, then (answers in flight together) the same size;
    # a size beyond the newest held is held by no row (the common case: no read for it)
    newest = book.known_size(node_id)
    for size, steps in ((sent_size, proof), (new.size, ())):
        held = book.held(node_id, size) if 0 < size <= newest else None
        if held is None:
            continue
        try:
            check_extends(held[0], new, steps)
        except VerificationError as exc:
            return quarantine(
                core, book, node_id, str(exc), held=held[1], shown=note, now_ms=now_ms
            )
    if sent_size > 0 and book.held(node_id, sent_size) is None and book.known_size(node_id):
        # the baseline was forgotten meanwhile (pruned): the proof cannot be checked, so
        # this checkpoint is not kept either; the next query is sent the newest size
        return None
    book.keep(node_id, new, note, key=key)
    return None


def quarantine(
    core: Coordinator,
    book: CheckpointBook,
    node_id: str,
    reason: str,
    *,
    held: str,
    shown: str,
    now_ms: int,
) -> str:
    """Quarantine a node whose log went back, with the evidence — the checkpoint the
    coordinator held and the one shown, both signed by the node — logged first; returns
    the reason a release states for it."""
    core.record(
        {
            "kind": "quarantine",
            "node": node_id,
            "reason": reason,
            "held_checkpoint": held,
            "presented_checkpoint": shown,
            "at_ms": now_ms,
        }
    )
    book.quarantine(node_id, reason, now_ms=now_ms)
    return f"quarantined: {reason}"


def readmit(core: Coordinator, *, node_id: str, reason: str, now_ms: int) -> Quarantined:
    """End a node's quarantine as a logged province action; returns what it ended.

    Raises ConfigError if the node is not quarantined. The log entry comes first:
    a crash in between leaves the node quarantined, never readmitted unlogged.
    """
    # one line of printable text: it reaches auditors' terminals
    reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    reason = reason[:MAX_READMIT_REASON_CHARS]
    if not reason:
        raise ConfigError("a readmission needs a reason (--reason)")
    book = core.book  # the one book of this connection: its reads stay in step
    book.refresh()
    held = book.quarantined(node_id)
    if held is None:
        raise ConfigError(f"node {show_id(node_id)} is not quarantined")
    core.record(
        {
            "kind": "readmit",
            "node": node_id,
            "reason": reason,
            "quarantine_reason": held.reason,
            "at_ms": now_ms,
        }
    )
    book.release_node(node_id)
    return held
