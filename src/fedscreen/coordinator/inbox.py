"""The coordinator imports an offline node's signed answer file (``fedscreen coordinator inbox``).

Each answer is verified exactly as one from a stream (bound to its query, its ε, the
one academic year; its log consistent with the checkpoint the coordinator holds, or
the node is quarantined), and the newest release of its query is followed by a new
version that includes it; a refusal makes a version saying why the node is missing.
Before any answer of a file is used, the file's closing checkpoint of the node's log
must extend the newest one the coordinator holds (``_check_file_log``).

Importing is idempotent: an answer already in its query's newest release, or a query
already settled, changes nothing; a file imported again after a stop part way
completes what the first run began. It works on the coordinator's database from the
CLI while the server runs, as ``coordinator.offline`` does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Final

from fedscreen._util.sqlite import transaction
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.offline import QUEUED, TRANSIENT
from fedscreen.coordinator.quarantine import quarantine, screen_answer
from fedscreen.coordinator.releases import StoredRelease, newest_release
from fedscreen.coordinator.runtime import node_refusal
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused, UnknownMember, VerificationError
from fedscreen.protocol.answer import bounded
from fedscreen.protocol.budget import verify_statement
from fedscreen.protocol.consistency import check_extends
from fedscreen.protocol.offline import ANSWERS_V1, AnswerFile, read_answer_file, unverified_payload
from fedscreen.protocol.query import ANY_AGE_MS, SignedQuery, verify_query
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note

__all__ = ["Imported", "import_answers"]


@dataclass
class Imported:
    """What one answer file changed: new release versions, and what it did not use."""

    node: str
    #: (query id, the new release version)
    released: list[tuple[str, int]] = field(default_factory=list)
    #: (query id, why the answer changed nothing)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    #: (query id, the node's refusal reason)
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: why nothing of the file was used ("" when it was)
    problem: str = ""
    #: the file showed the node's log went back: it is quarantined now
    quarantined: bool = False


def import_answers(core: Coordinator, data: bytes, *, now_ms: int | None = None) -> Imported:
    """Verify an offline node's answer file and release what it adds.

    VerificationError (nothing imported) if the file is not signed by an active node of
    the manifest, is not addressed to this coordinator, or answers an outbox this
    coordinator did not make for that node.
    """
    core.reload_manifest()
    at = _now_ms() if now_ms is None else now_ms
    carried = _verified_file(core, data)
    node = carried.node
    row = core.conn.execute(
        "SELECT node, known_log_size, checkpoint_size FROM offline_outbox WHERE sha256 = ?",
        (carried.outbox_sha256,),
    ).fetchone()
    if row is None or row[0] != node:
        raise VerificationError(
            f"the answer file answers an outbox this coordinator did not make for node {node}"
        )
    sent_size, outbox_size = int(row[1]), int(row[2])
    done = Imported(node)
    core.book.refresh()
    # the file's log is checked once, before anything of it is used: imported again (after
    # a crash part way, say) the checkpoints it brought are no longer the ones to prove from
    signed = hashlib.sha256(Envelope.from_json(data).unverified_payload()).hexdigest()
    again = core.conn.execute("SELECT 1 FROM offline_inbox WHERE sha256 = ?", (signed,))
    refused, final, quarantined = _check_file_log(
        core, carried, now_ms=at, again=again.fetchone() is not None
    )
    if refused is not None:
        done.problem, done.quarantined = refused, quarantined
        return done
    if final is not None:
        _keep_proofs(core, carried, final)
    with transaction(core.conn):
        core.conn.execute(
            "INSERT OR IGNORE INTO offline_inbox (sha256, node, imported_ms) VALUES (?, ?, ?)",
            (signed, node, at),
        )
    for answer in carried.answers:
        outcome = _import_one(core, node, answer.query_id, answer.envelope, answer.proof,
                              sent_size=sent_size, now_ms=at)  # fmt: skip
        if isinstance(outcome, int):
            done.released.append((answer.query_id, outcome))
        else:
            done.unchanged.append((answer.query_id, outcome))
    if final is not None and core.book.quarantined(node) is None:
        # the file's closing checkpoint (after its refusals too) is the next baseline:
        # the node proves its next file from it
        core.book.keep(node, final, carried.checkpoint)
    core.book.flush()
    for query_id, reason in carried.refusals:
        why = node_refusal(reason)
        done.refused.append((query_id, why))
        if why.startswith(TRANSIENT):
            continue  # the node could not work with this file: the query stays queued
        version = _refused_one(core, node, query_id, why, now_ms=at)
        if version is not None:
            done.released.append((query_id, version))
    _keep_statement(core, node, carried.statement)
    if carried.coordinator_log_size == outbox_size > 0:
        # the node now holds that outbox's checkpoint: the next outbox proves from it (a
        # size the node merely claims is never a baseline)
        with transaction(core.conn):
            core.conn.execute(
                "INSERT INTO offline_link (node, coordinator_log_size) VALUES (?, ?) "
                "ON CONFLICT (node) DO UPDATE SET coordinator_log_size = "
                "max(coordinator_log_size, excluded.coordinator_log_size)",
                (node, outbox_size),
            )
    return done


def _check_file_log(
    core: Coordinator, carried: AnswerFile, *, now_ms: int, again: bool = False
) -> tuple[str | None, Checkpoint | None, bool]:
    """Why none of the file may be used, or None; the file's closing checkpoint when it
    is the newest the coordinator now holds; and whether the node was quarantined.

    The file's closing checkpoint must be consistent with the checkpoints of the node's
    log the coordinator holds: extend the newest one, with the file's proof from that
    size (``log_proofs``: from the outbox's ``known_log_size`` and from where the node's
    earlier files ended), or — a file imported after a later one — be proven a prefix
    of a held one by a proof an earlier-imported file offered from its size. A proof
    that fails is a rollback: the node is quarantined, the evidence logged. A file that
    offers no proof is not used, and not evidence (the node may have lost the note of
    its earlier files): its queries stay queued, and a new outbox gets their answers
    again from the node's store at no cost. ``again``: the file was checked when first
    imported (a crash may have left checkpoints of its own answers held since).
    """
    node = carried.node
    held_quarantine = core.book.quarantined(node)
    if held_quarantine is not None:
        return f"quarantined: {bounded(held_quarantine.reason)}", None, False
    if not carried.checkpoint:
        return "the answer file carries no checkpoint of the node's log", None, False
    member = core.manifest.member(node, role="node")
    try:
        final = parse_and_verify_note(
            carried.checkpoint, verifiers={member_origin("node", node): member.signing_key}
        )
    except VerificationError as exc:
        return f"the answer file's checkpoint does not verify: {bounded(str(exc))}", None, False
    size = core.book.known_size(node)
    held = core.book.held(node, size) if size else None
    if held is None or again:
        return None, final if held is None or held[0].size <= final.size else None, False
    try:
        if held[0].size > final.size:
            proven = _prefix_of_held(core, node, final)
            if proven is None:
                return (
                    (
                        f"the answer file ends before the checkpoint of {held[0].size} entries the "
                        "coordinator holds and no file imported before proves it a prefix of it: "
                        "make a new outbox (its answers come again from the node's store, free)"
                    ),
                    None,
                    False,
                )
            return None, None, False
        proof = () if held[0].size == final.size else carried.log_proof_from(held[0].size)
        if proof is None:
            return (
                (
                    f"the answer file does not prove that the node's log extends the checkpoint of "
                    f"{held[0].size} entries the coordinator holds: make a new outbox (its answers "
                    "come again from the node's store, free)"
                ),
                None,
                False,
            )
        check_extends(held[0], final, proof)
    except VerificationError as exc:
        why = quarantine(
            core, core.book, node, str(exc), held=held[1], shown=carried.checkpoint, now_ms=now_ms
        )
        return bounded(why), None, True
    return None, final, False


def _prefix_of_held(core: Coordinator, node: str, final: Checkpoint) -> bool | None:
    """True if ``final`` is proven a prefix of a checkpoint the coordinator holds (by a
    proof a file imported before offered from its size, or by equal roots at its size);
    None if nothing proves it either way. VerificationError if a proof fails."""
    same = core.book.held(node, final.size)
    if same is not None:
        if same[0].root != final.root:
            raise VerificationError(
                f"its log has another root at {final.size} entries than the coordinator holds"
            )
        return True
    rows = core.conn.execute(
        "SELECT to_size, proof FROM offline_proof WHERE node = ? AND from_size = ?",
        (node, final.size),
    ).fetchall()
    for to_size, proof in rows:
        target = core.book.held(node, int(to_size))
        if target is not None:
            check_extends(final, target[0], _hashes(str(proof)))
            return True
    return None


def _keep_proofs(core: Coordinator, carried: AnswerFile, final: Checkpoint) -> None:
    """Keep the file's proofs to its closing checkpoint: a file that ended at one of
    those sizes, imported later, is proven a prefix with them."""
    with transaction(core.conn):
        core.conn.executemany(
            "INSERT OR IGNORE INTO offline_proof (node, from_size, to_size, proof) "
            "VALUES (?, ?, ?, ?)",
            [
                (carried.node, start, final.size, json.dumps(_b64(proof)))
                for start, proof in carried.log_proofs
                if 0 < start < final.size
            ],
        )


def _b64(hashes: tuple[bytes, ...]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]


def _hashes(text: str) -> tuple[bytes, ...]:
    return tuple(base64.b64decode(h) for h in json.loads(text))


def _keep_statement(core: Coordinator, node: str, envelope: bytes) -> None:
    """Keep the node's budget statement from its answer file if it verifies and is newer
    than the one kept: analysts read it (``fedscreen budgets``) as an online node's."""
    if not envelope:
        return
    try:
        statement = verify_statement(envelope, manifest=core.manifest, node_id=node)
    except VerificationError:
        return  # informative only: the answers stand on their own signatures
    with transaction(core.conn):
        core.conn.execute(
            "INSERT INTO offline_statement (node, issued_ms, envelope) VALUES (?, ?, ?) "
            "ON CONFLICT (node) DO UPDATE SET issued_ms = excluded.issued_ms, "
            "envelope = excluded.envelope WHERE excluded.issued_ms > issued_ms",
            (node, statement.issued_at_ms, envelope),
        )


def _import_one(
    core: Coordinator,
    node: str,
    query_id: str,
    raw: bytes,
    proof: tuple[bytes, ...],
    *,
    sent_size: int,
    now_ms: int,
) -> int | str:
    """Release one late answer as a new version of its query's release; returns the
    version, or why the answer changed nothing."""
    queued = core.conn.execute(
        "SELECT query_envelope, academic_year, settled_ms FROM offline_queue "
        "WHERE node = ? AND query_id = ?",
        (node, query_id),
    ).fetchone()
    if queued is None:
        return "this query was not queued for the node"
    previous = newest_release(core.conn, query_id)
    if previous is None:
        return "the query has no release yet: import the file again later"
    if node in previous.answers or queued[2] is not None:
        _settle(core, node, query_id, now_ms, "answered")
        return "already in the newest release"
    if node not in previous.targeted:
        return "the query's newest release did not ask this node"
    try:
        query = _queued_query(core, bytes(queued[0]))
    except (VerificationError, QueryRefused) as exc:
        return f"the query no longer verifies: {bounded(str(exc))}"
    year = previous.academic_year if not query.spec.years else None
    try:
        verified = core.verified_answer(node, raw, query, academic_year=year)
    except VerificationError as exc:
        return f"its answer did not verify: {bounded(str(exc))}"
    reason = screen_answer(
        core, core.book, node_id=node, envelope=raw, proof=proof, sent_size=sent_size,
        now_ms=now_ms, checkpoint=(verified.checkpoint, verified.checkpoint_note),
    )  # fmt: skip
    if reason is not None:
        core.forget_verdict(node, raw, query, academic_year=year)
        return reason
    core.book.flush()  # the checkpoint kept above, before the release that relies on it
    try:
        version = _release_late(core, query, previous, node, raw)
    except _Raced:
        return RACED
    if isinstance(version, str):
        _settle(core, node, query_id, now_ms, version)
        return version
    _settle(core, node, query_id, now_ms, f"answered in release version {version}")
    return version


def _refused_one(
    core: Coordinator, node: str, query_id: str, why: str, *, now_ms: int
) -> int | None:
    """Settle a query the node refused; if its newest release still says the node's answer
    is queued, the next version says why it is missing instead (returns that version)."""
    queued = core.conn.execute(
        "SELECT query_envelope, settled_ms FROM offline_queue WHERE node = ? AND query_id = ?",
        (node, query_id),
    ).fetchone()
    if queued is None or queued[1] is not None:
        return None
    previous = newest_release(core.conn, query_id)
    version = None
    if previous is not None and previous.reasons.get(node) == QUEUED:
        try:
            query = _queued_query(core, bytes(queued[0]))
        except (VerificationError, QueryRefused):
            query = None  # its analyst was revoked since: no new version for it
        if query is not None:
            try:
                made = _release_late(core, query, previous, node, None, why=why)
            except _Raced:
                return None  # unsettled: the file imported again settles it
            version = made if isinstance(made, int) else None
    _settle(core, node, query_id, now_ms, why)
    return version


def _queued_query(core: Coordinator, envelope: bytes) -> SignedQuery:
    """A queued signed query, verified again against the manifest in force (its analyst may
    have been revoked since it was queued); its age is no matter here, the node's offline
    window judged it. Raises VerificationError or QueryRefused."""
    return verify_query(
        Envelope.from_json(envelope), manifest=core.manifest, now_ms=0, window_ms=ANY_AGE_MS
    )


def _release_late(
    core: Coordinator,
    query: SignedQuery,
    previous: StoredRelease,
    node: str,
    raw: bytes | None,
    *,
    why: str = "",
) -> int | str:
    """The next version of ``previous``: its answers and ``node``'s late one (``raw``), or
    with ``why`` as the reason ``node`` is missing (it refused); or why there is none.

    A later version keeps every answer of the one it follows (the auditor checks it):
    if one of them no longer verifies (its node quarantined or revoked since), no later
    version is made — the analyst asks again."""
    answers = dict(previous.answers) if raw is None else {**previous.answers, node: raw}
    missing = [n for n in previous.targeted if n not in answers]
    reasons = {n: previous.reasons.get(n, "no answer") for n in missing}
    if raw is None:
        reasons[node] = why
    checked = core.check_answers(
        query, answers, missing, reasons=reasons, academic_year=previous.academic_year
    )
    lost = sorted(set(previous.answers) - set(checked.verified))
    if lost:
        return (
            f"the release's earlier answers of {', '.join(lost[:5])} no longer verify "
            "(quarantined or revoked since): no later version; ask the query again"
        )
    try:
        release = core.release(
            query, answers, missing, reasons=reasons, academic_year=previous.academic_year,
            targeted=previous.targeted, eligible=previous.eligible, checked=checked,
            query_envelope=previous.query_envelope, previous=previous,
        )  # fmt: skip
    except sqlite3.IntegrityError:
        # another import superseded the same version first (nothing of this one logged):
        # the query stays unsettled, for the file imported again
        raise _Raced from None
    return int(release.body.get("release_version", 1))


class _Raced(Exception):
    """Another import made the next version of the same release first."""


RACED: Final = "another import made the next version of this release meanwhile: import again"


def _settle(core: Coordinator, node: str, query_id: str, now_ms: int, outcome: str) -> None:
    with transaction(core.conn):
        core.conn.execute(
            "UPDATE offline_queue SET settled_ms = ?, outcome = ? "
            "WHERE node = ? AND query_id = ? AND settled_ms IS NULL",
            (now_ms, outcome, node, query_id),
        )


def _verified_file(core: Coordinator, data: bytes) -> AnswerFile:
    """The answer file, verified under the key of the active node it names."""
    _, payload = unverified_payload(data, ANSWERS_V1)
    claimed = payload.get("node")
    if not isinstance(claimed, str):
        raise VerificationError("the answer file names no node")
    try:
        member = core.manifest.member(claimed, role="node")
    except UnknownMember as exc:
        raise VerificationError(f"the answer file's signer: {exc}") from None
    carried = read_answer_file(data, node_key=member.signing_key, key_id=member.key_id)
    if carried.coordinator != core.member_id:
        raise VerificationError(
            f"the answer file is addressed to coordinator {bounded(carried.coordinator)}"
        )
    return carried


def _now_ms() -> int:
    return int(time.time() * 1000)
