"""An offline node answers the queries carried to it by file (``fedscreen node answer-file``).

The node has no network path to the coordinator; an officer brings the outbox the
coordinator wrote for it (``protocol.offline``). Before anything is answered the
whole file must hold together:

1. a manifest in the file is verified against the authority key pinned in the
   home and, if newer, installed and logged (a revocation reaches the node this way);
2. the outbox is signed by the coordinator that manifest names, for this node;
3. it is not older than the outbox the node answered last (carried again by
   mistake, its checkpoint would look like a coordinator log that went back);
4. the coordinator's checkpoint extends the one the node holds (a coordinator whose
   log went back gets no answers: every query is refused and recorded).

Then each query goes through the same path as one from the stream
(``node.requests.handle_query`` on the node's worker): the analyst's signature,
role and scope against the node's own manifest, freshness within the provincial
catalogue's offline window, the node's policy and budget; a query answered before
(the same outbox twice, or a query also asked online) gets its stored answer at no
cost. Refusals are recorded and cost nothing. The signed answers go into one file
signed by the node, with the consistency proof of its log from the size the
coordinator last verified.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fedscreen._util.files import replace_file, write_new_file
from fedscreen.crypto.envelope import Envelope, parse_json
from fedscreen.errors import ConfigError, QueryRefused, UnknownMember, VerificationError
from fedscreen.node.home import check_placement, load_config
from fedscreen.node.link import CoordinatorLog
from fedscreen.node.rollback import sync_checkpoint
from fedscreen.node.worker import QueryWorker
from fedscreen.protocol.answer import bounded
from fedscreen.protocol.offline import (
    OUTBOX_V1,
    AnswerFile,
    CarriedAnswer,
    Outbox,
    file_digest,
    read_outbox,
    sign_answer_file,
    unverified_payload,
)
from fedscreen.protocol.refusal import refusal_reason
from fedscreen.tlog.checkpoint import note_size
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

__all__ = ["Answered", "answer_outbox", "file_link"]

#: answer bytes after which no further query of an outbox is answered: one answer is at
#: most 4 MiB (a stream message's limit), and the file, base64 inside its envelope, must
#: stay within what the coordinator reads (``protocol.offline.MAX_FILE_BYTES``)
ANSWER_BYTES: Final = 6 << 20
#: the sizes of this node's log at the end of each answer file it wrote (newest last):
#: the coordinator may hold any of them, so each next file proves consistency from them
EXPORTED_FILE: Final = "offline.json"
#: how many of those sizes are kept
MAX_EXPORTED: Final = 32


@dataclass
class Answered:
    """What one outbox got: answered and refused queries, and the ε charged."""

    node: str
    manifest_version: int
    #: (query id, ε charged for this delivery: 0 when answered from the store)
    answered: list[tuple[str, float]] = field(default_factory=list)
    #: (query id, reason)
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: queries left for the next outbox: this answer file was full
    deferred: list[str] = field(default_factory=list)

    @property
    def epsilon_spent(self) -> float:
        """The ε this outbox cost the node's budget."""
        return sum(e for _, e in self.answered)


def answer_outbox(
    home: Path, data: bytes, out: Path, *, now_ms: Callable[[], int] | None = None
) -> Answered:
    """Verify the outbox ``data``, answer its queries, write the signed answer file ``out``.

    VerificationError or ConfigError (nothing answered, nothing charged) if the file
    does not hold together, ``out`` exists already or its folder does not, or the
    database is behind its saved checkpoint (restored: ``fedscreen node recover``).
    """
    clock = now_ms or (lambda: int(time.time() * 1000))
    if out.exists():
        raise ConfigError(f"{out} exists already; give a new --out")
    # checked before answering: a file that cannot be written would leave ε charged
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} is not a folder; give an --out in an existing one")
    config = load_config(home)
    identity = load_identity(home)
    if identity.member_id != config.node_id or identity.role != "node":
        raise ConfigError(f"{home}: the identity is not node {config.node_id}'s")
    # a database restored behind its saved checkpoint is refused first, with its own
    # reason (not as a manifest that "does not verify" when the outbox brings a newer one)
    sync_checkpoint(config)
    manifest = identity.manifest()
    check_placement(config, manifest)
    _, payload = unverified_payload(data, OUTBOX_V1)
    policy = config.policy()
    worker = QueryWorker(config, policy, manifest, coordinator_id=manifest.coordinator())
    try:
        text = payload.get("manifest")
        if not isinstance(text, str):
            raise VerificationError("the outbox carries no manifest")
        try:
            # authority-signed: safe to install before the outbox itself is verified
            worker.offer_here(text.encode("utf-8"))
        except (VerificationError, ConfigError) as exc:
            raise VerificationError(
                f"the manifest in the outbox does not verify under this node's authority "
                f"key: {bounded(str(exc))}"
            ) from None
        manifest = worker.manifest
        coordinator = _coordinator(manifest)
        outbox = read_outbox(data, coordinator_keys={coordinator[1]: coordinator[2]})
        if outbox.node != config.node_id:
            raise VerificationError(
                f"the outbox is for node {bounded(outbox.node)}, not {config.node_id}"
            )
        if outbox.coordinator != coordinator[0]:
            raise VerificationError(f"the outbox names coordinator {bounded(outbox.coordinator)}")
        check_placement(config, manifest)
        if config.node_id not in manifest.offline:
            # an online node's queries come down its stream, fresh: an outbox would let
            # its coordinator hand it queries up to the offline window old
            raise VerificationError(
                f"node {config.node_id} is not offline in manifest version {manifest.version}: "
                "it answers over its stream, not by file (nothing was answered)"
            )
        digest = file_digest(data)
        log = CoordinatorLog(home, coordinator[0])
        exported, last_made = _exported(home)
        halted = _check_coordinator_log(log, outbox, key=coordinator[2])
        done = Answered(config.node_id, manifest.version)
        window = policy.limits.offline_window_ms
        answers = _answer_all(worker, outbox, halted, done, clock, window_ms=window)
        note, proofs = worker.log_head_here({outbox.known_log_size, *exported})
        carried = AnswerFile(
            node=config.node_id,
            coordinator=coordinator[0],
            made_at_ms=clock(),
            outbox_sha256=digest,
            coordinator_log_size=log.known_size(coordinator[2]),
            answers=tuple(answers),
            refusals=tuple(done.refused),
            statement=worker.statement_here(),
            checkpoint=note,
            log_proofs=tuple((size, tuple(proof)) for size, proof in proofs),
        )
        write_new_file(
            out, sign_answer_file(carried, config.signing_key()), mode=0o644, what="answer file"
        )
        size = note_size(note)
        kept = [*(s for s in exported if s != size), size][-MAX_EXPORTED:]
        made = max(last_made, outbox.made_at_ms)
        doc = {"exported": kept, "outbox_made_at_ms": made}
        replace_file(home / EXPORTED_FILE, json.dumps(doc).encode("utf-8"))
        return done
    finally:
        worker.close()


def _answer_all(
    worker: QueryWorker,
    outbox: Outbox,
    halted: str,
    done: Answered,
    clock: Callable[[], int],
    *,
    window_ms: int,
) -> list[CarriedAnswer]:
    answers: list[CarriedAnswer] = []
    seen: set[str] = set()
    carried = 0
    for query in outbox.queries:
        if query.query_id in seen:
            continue  # one answer per query: a repeat would be the stored answer again
        if _signed_id(query.envelope) != query.query_id:
            # one signed query carried under several ids would be answered (from the
            # store) and logged once per id
            reason = refusal_reason(
                "invalid-query", "carried under another id than it is signed with"
            )
            done.refused.append((query.query_id, reason))
            continue
        if carried > ANSWER_BYTES:
            # the file is full: the rest stay queued at the coordinator, uncharged here,
            # and come again in its next outbox
            done.deferred.append(query.query_id)
            continue
        seen.add(query.query_id)
        if halted:
            worker.refuse_here(query.query_id, halted)
            done.refused.append((query.query_id, halted))
            continue
        try:
            answered = worker.answer_here(
                query.envelope,
                now_ms=clock,
                academic_year=query.academic_year,
                query_id=query.query_id,
                known_size=outbox.known_log_size,
                window_ms=window_ms,
            )
        except QueryRefused as exc:
            done.refused.append((query.query_id, str(exc)))
            continue
        answers.append(CarriedAnswer(query.query_id, answered.envelope, tuple(answered.proof)))
        carried += len(answered.envelope) + 64 * len(answered.proof)
        done.answered.append((query.query_id, _charged(answered.envelope)))
    return answers


def _exported(home: Path) -> tuple[list[int], int]:
    """The sizes of this node's log at the end of its earlier answer files, and when the
    last outbox it answered was made (coordinator's clock, 0: none)."""
    try:
        doc = json.loads((home / EXPORTED_FILE).read_bytes())
        sizes, made = doc["exported"], doc.get("outbox_made_at_ms", 0)
    except FileNotFoundError:
        return [], 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], 0  # unreadable: the next file proves from known_log_size only
    if not isinstance(sizes, list):
        return [], 0
    made = made if isinstance(made, int) and not isinstance(made, bool) else 0
    return [s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s > 0], made


def file_link(home: Path) -> str | None:
    """One line on this node's exchange by file, for ``fedscreen node status`` (None if it
    never answered an outbox): when the last outbox was made, and which checkpoint of the
    coordinator's log it holds (the size a province names in ``outbox --from-size``)."""
    if not (home / EXPORTED_FILE).is_file():
        return None
    _, made = _exported(home)
    try:
        manifest = load_identity(home).manifest()
        if load_config(home).node_id not in manifest.offline:
            return None  # back online: its stream's link.json says the rest
        _, _, key = _coordinator(manifest)
        held = CoordinatorLog(home, manifest.coordinator()).known_size(key)
    except (ConfigError, VerificationError):
        held = 0
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(made / 1000)) if made else "unknown"
    return (
        f"link: by file; the last outbox answered was made {when}; this node holds the "
        f"coordinator's checkpoint of {held} entries"
    )


def _check_coordinator_log(log: CoordinatorLog, outbox: Outbox, *, key: bytes) -> str:
    """Empty if the outbox's coordinator checkpoint extends the one this node holds (now
    held); else the refusal every query of the file gets: the coordinator's log forked
    (another root at the size held, or a proof from it that fails — evidence, recorded
    in the node's log).

    VerificationError (the whole file refused, nothing recorded) if its checkpoint is
    behind the one held — an outbox made before the node last heard from the coordinator
    (carried late, or before the node went online for a while) looks the same as a log
    that shrank, so it is no evidence — or it offers no proof from the checkpoint held
    (the node learnt a later one online, say): a file to make again.
    """
    held = log.known_size(key)
    size = outbox.checkpoint_size
    proof: tuple[bytes, ...] | None = ()
    if held and size < held:
        raise VerificationError(
            f"this outbox is older than what this node last had from the coordinator (its "
            f"checkpoint in it has {size} entries, this node holds one of {held}): ask the "
            "province for a new one (nothing was answered)"
        )
    if held and size > held:
        proof = outbox.proof_from(held)
    if proof is None:
        raise VerificationError(
            f"the outbox does not prove that the coordinator's log extends the checkpoint "
            f"this node holds ({held} entries): ask the province for one made with "
            f"`fedscreen coordinator outbox … --from-size {held}` (nothing was answered)"
        )
    try:
        log.check(outbox.coordinator_checkpoint, list(proof), key=key)
    except VerificationError as exc:
        return refusal_reason("internal", f"the coordinator's log went back: {exc}")
    return ""


def _coordinator(manifest: Manifest) -> tuple[str, str, bytes]:
    """The coordinator's id, key id and key, from the manifest in force."""
    try:
        member = manifest.member(manifest.coordinator(), role="coordinator")
    except (UnknownMember, ConfigError) as exc:
        raise VerificationError(f"no active coordinator in the manifest: {exc}") from None
    return member.id, member.key_id, member.signing_key


def _signed_id(envelope: bytes) -> str | None:
    """The query id inside a carried query's envelope (not verified here: the engine
    verifies the envelope; this only matches it with the id it is carried under)."""
    try:
        payload = parse_json(Envelope.from_json(envelope).unverified_payload())
    except (ValueError, VerificationError):
        return None
    value = payload.get("query_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def _charged(envelope: bytes) -> float:
    """The ε the node's own fresh answer charged (0 for a stored answer given again)."""
    try:
        body = parse_json(Envelope.from_json(envelope).unverified_payload())
        return float(body.get("charged") or 0.0)
    except (ValueError, VerificationError, AttributeError, TypeError):
        return 0.0
