"""What the coordinator's server runs on: its limits, the core's own thread, the manifest watch.

Kept apart from the servicers (``server``) so that module stays small; no
protobuf and no gRPC here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.quarantine import CheckpointBook, screen_answer
from fedscreen.coordinator.sessions import (
    CoordinatorHead,
    NodeReply,
    NodeSession,
    SessionRegistry,
    collect_replies,
    now_ms,
    push_query,
)
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.protocol.budget import verify_statement
from fedscreen.protocol.query import SignedQuery, shown_query_id
from fedscreen.protocol.refusal import parse_reason, refusal_reason
from fedscreen.rpc import guard, transport
from fedscreen.rpc.clock import CLOCK_TOLERANCE_MS
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits
from fedscreen.tlog.checkpoint import Checkpoint, note_size
from fedscreen.trust.manifest import Manifest

__all__ = [
    "CORE_THREAD_NAME",
    "DEFAULT_SERVER_LIMITS",
    "CoreThread",
    "Listening",
    "ManifestWatch",
    "ServerLimits",
    "active_nodes",
    "ask_nodes",
    "coordinator_head",
    "keep_statement",
    "log_head",
    "node_refusal",
    "open_session",
    "screen",
    "settle_statements",
]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: the operating system's name for the core's thread (``top -H``, /proc/PID/task/*/comm)
CORE_THREAD_NAME: Final = "fedscreen-core"

#: the reason a release states for a node refusal outside the fixed vocabulary
REASON_NOT_UNDERSTOOD: Final = "refused: (reason not understood)"


@dataclass(frozen=True)
class ServerLimits:
    """Every wait, count and size of the coordinator's server, with its unit."""

    #: how long Submit waits for node answers when the request names no wait (ms)
    default_answer_wait_ms: int = 10_000
    #: the longest wait an analyst may ask for (ms); longer requests are cut to this
    max_answer_wait_ms: int = 60_000
    #: kept back from the analyst's own gRPC deadline to sign and return the release (ms)
    release_margin_ms: int = 1_000
    #: a node must send its Hello within this after opening its stream (ms)
    hello_timeout_ms: int = 10_000
    #: a session that sends nothing — no answer, no heartbeat — for this long is dropped
    #: (ms); well above the node's heartbeat interval (15 s by default)
    session_idle_timeout_ms: int = 60_000
    #: messages queued for one node before its session counts as stuck (count); a query
    #: that finds the queue full treats the node as missing instead of waiting
    session_outbox_messages: int = 1_024
    #: entries one GetEntries call returns at most (count); clients continue from there
    max_entries_per_call: int = 1_000
    #: time calls in flight get to finish when the server stops (ms)
    shutdown_grace_ms: int = 5_000
    #: the largest clock offset, either way, at which a node still answers (ms); a node
    #: further off is logged, shown by ``coordinator status``, and refuses every query
    clock_tolerance_ms: int = CLOCK_TOLERANCE_MS
    #: how often the C heap's freed memory is returned to the system (ms; see rpc.guard)
    heap_trim_interval_ms: int = 5_000
    #: how often the home's manifest file is checked for a newer version to push to the
    #: nodes (ms); every query and every node's Hello checks it too
    manifest_check_interval_ms: int = 1_000
    transport: TransportLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        transport.check_positive_limits(self, "server")
        if self.default_answer_wait_ms > self.max_answer_wait_ms:
            raise ConfigError("default_answer_wait_ms must not exceed max_answer_wait_ms")

    def answer_wait_s(self, requested_ms: int, time_remaining: float | None) -> float:
        """How long to wait for nodes: the request's wait (or the default), capped twice."""
        wait_ms = requested_ms if requested_ms > 0 else self.default_answer_wait_ms
        wait_ms = min(wait_ms, self.max_answer_wait_ms)
        if time_remaining is not None:
            # leave the analyst's call enough time to get the release back
            wait_ms = min(wait_ms, int(time_remaining * 1000) - self.release_margin_ms)
        if wait_ms <= 0:
            raise QueryRefused("the call's deadline leaves no time to wait for nodes")
        return wait_ms / 1000


DEFAULT_SERVER_LIMITS: Final = ServerLimits()


@dataclass(frozen=True)
class Listening:
    """Where a started coordinator listens (also what ``--ready-file`` holds, as JSON)."""

    member_id: str
    address: str
    port: int
    pid: int

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "member_id": self.member_id,
            "address": self.address,
            "port": self.port,
            "pid": self.pid,
        }


# ---------------------------------------------------------------- the core's thread


class CoreThread:
    """The coordinator core, used from one worker thread only.

    Signing, answer verification and SQLite commits (``synchronous=FULL``) take
    milliseconds; on the loop they would stall every node stream. One thread
    also serialises the core's calls, which share one SQLite connection.
    """

    def __init__(self, executor: ThreadPoolExecutor, core: Coordinator) -> None:
        self._executor = executor
        self.core = core
        #: the nodes' verified checkpoints and quarantines, in the core's database
        self.book: CheckpointBook = core.book

    @classmethod
    async def open(cls, home: Path) -> CoreThread:
        """Open the coordinator home on a new worker thread."""
        executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="coordinator-core",
            initializer=guard.name_os_thread,
            initargs=(CORE_THREAD_NAME,),
        )
        loop = asyncio.get_running_loop()
        try:
            core = await loop.run_in_executor(executor, Coordinator.open, home)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, core)

    async def call(self, fn: Callable[[Coordinator], T]) -> T:
        """``fn(core)`` on the core's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.core)

    async def close(self) -> None:
        """Close the core (after every queued call) and stop the thread."""
        try:
            await self.call(lambda _: self.book.flush())
            await self.call(lambda core: core.close())
        finally:
            self._executor.shutdown(wait=True)


# ---------------------------------------------------------------- the manifest watch


def _manifest_now(core: Coordinator, known: int) -> tuple[int, bytes | None, tuple[str, ...]]:
    """Version and active nodes of the newest manifest installed in the home, and its file
    if the version is not ``known`` (a stat call otherwise: this runs for every query)."""
    core.reload_manifest()
    version = core.manifest.version
    data = None if version == known else core.identity.manifest_path.read_bytes()
    return version, data, core.node_ids


class ManifestWatch:
    """Pushes a newer manifest down every open node stream; ends revoked members' streams.

    Revocation takes effect at once: the coordinator re-reads its home's manifest
    for each query and Hello anyway (a stat call), and this watch also looks every
    ``manifest_check_interval_ms`` so an idle federation learns of it too.
    """

    def __init__(self, core: CoreThread, sessions: SessionRegistry) -> None:
        self.core = core
        self.sessions = sessions
        self.version = core.core.manifest.version
        #: the manifest file of ``version``, verbatim (nodes verify it themselves)
        self.data = core.core.identity.manifest_path.read_bytes()
        self._lock = asyncio.Lock()
        if self.revoked:
            _log.error("this coordinator is revoked in the manifest installed; it takes no query")

    async def current(self) -> bytes:
        """The manifest file now installed (after pushing it, if it is new)."""
        async with self._lock:
            known = self.version
            version, data, active = await self.core.call(lambda c: _manifest_now(c, known))
            if data is not None:
                self.version, self.data = version, data
                self._push(version, data, frozenset(active))
            return self.data

    @property
    def revoked(self) -> bool:
        """True once the manifest in force revokes this coordinator itself."""
        return self.core.core.revoked

    def _push(self, version: int, data: bytes, active: frozenset[str]) -> None:
        if self.revoked:
            # a revoked coordinator must not relay: every stream ends, no Hello is taken
            _log.error(
                "this coordinator is revoked in manifest version %d; it takes no query "
                "and closes every node stream",
                version,
            )
            self.sessions.close_all("the coordinator is revoked by the federation manifest")
            return
        _log.info("manifest version %d installed; pushing it to the nodes", version)
        for session in self.sessions.live():
            if session.node_id not in active:
                _log.warning(
                    "node %s is revoked or removed in manifest version %d; closing its stream",
                    session.node_id,
                    version,
                )
                self.sessions.close(session, "revoked by the federation manifest")
            elif not session.push_manifest(data):
                _log.warning("node %s: could not queue the new manifest", session.node_id)

    async def run(self, interval_ms: int) -> None:
        """Check every ``interval_ms`` until cancelled; a failed check is logged, not fatal."""
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await self.current()
            except Exception:  # a half-written or bad file: the next check tries again
                _log.exception("could not check the manifest for a newer version")


# ---------------------------------------------------------------- run on the core's thread


def active_nodes(core: Coordinator) -> tuple[str, ...]:
    """The active nodes of the newest manifest installed in the coordinator's home."""
    core.reload_manifest()
    return core.node_ids


def log_head(core: Coordinator, known_size: int) -> tuple[str, list[bytes]]:
    """The newest checkpoint of the coordinator's log, and its consistency proof from
    ``known_size`` (a node's Hello); no proof if that is 0, the same, or beyond the log."""
    head = coordinator_head(core, {"": known_size})
    return head.note, list(head.proofs[""])


def coordinator_head(core: Coordinator, sent: Mapping[str, int]) -> CoordinatorHead:
    """The newest checkpoint of the coordinator's log, with a consistency proof for each
    node from the size ``sent`` names (what its session last got); a proof is empty when
    that size is 0, the same, or beyond the log (the node judges a log that shrank)."""
    note = core.checkpoint()
    size = note_size(note)
    # sessions that got the same checkpoint get the same proof: one per distinct size
    by_size = {
        known: tuple(core.consistency_proof(known, size)) if 0 < known < size else ()
        for known in set(sent.values())
    }
    return CoordinatorHead(note, size, {node: by_size[known] for node, known in sent.items()})


async def open_session(
    core: CoreThread, sessions: SessionRegistry, session: NodeSession, known_size: int
) -> tuple[str, list[bytes]]:
    """Register a node's new session; returns its Welcome's checkpoint and proof from
    ``known_size`` (the Hello's). Under ``head_lock``: no query is pushed to the session
    before it knows what the Welcome sends, so its next query's proof starts there."""
    async with sessions.head_lock:
        head = await core.call(lambda c: coordinator_head(c, {session.node_id: known_size}))
        session.coordinator_size = head.size
        sessions.open(session)
    return head.note, list(head.proofs[session.node_id])


async def ask_nodes(
    core: CoreThread,
    sessions: SessionRegistry,
    query: SignedQuery,
    envelope: bytes,
    targets: tuple[str, ...],
    wait_s: float,
    *,
    known_log_sizes: Mapping[str, int],
    academic_year: str,
) -> dict[str, NodeReply]:
    """Push a query to its targets with the coordinator's newest checkpoint and each
    node's consistency proof (so a node catches a coordinator log put back between
    Welcomes), then wait for the replies (:func:`~.sessions.collect_replies`)."""
    deadline_unix_ms = now_ms() + int(wait_s * 1000)
    async with sessions.head_lock:
        sent = {n: s.coordinator_size for n in targets if (s := sessions.get(n)) is not None}
        head = await core.call(lambda c: coordinator_head(c, sent))
        replies, asked = push_query(
            sessions, query.query_id, envelope, targets, deadline_unix_ms=deadline_unix_ms,
            known_log_sizes=known_log_sizes, academic_year=academic_year, head=head,
        )  # fmt: skip
    return await collect_replies(query.query_id, replies, asked, wait_s)


def screen(
    core: Coordinator,
    query: SignedQuery,
    replies: dict[str, NodeReply],
    *,
    academic_year: str | None,
) -> None:
    """Screen a query's answers for rollbacks, in the core's thread, all in one call.

    An answer whose node's log shrank, forked or did not prove consistency becomes a
    reply without an answer, saying why (``screen_answer``: the evidence is logged and
    the node quarantined). One call per query, not one thread hop per answer as it
    arrives; the release follows in the core's thread, so no quarantine can fall
    between an answer's screening and its release. Each answer is verified here in
    full, once (``academic_year``: the release's pin); the release uses the verdict.
    """
    core.book.refresh()  # a readmission made by another process counts from here
    for node_id, reply in replies.items():
        if reply.envelope is None or reply.sent_size is None:
            continue
        try:
            answer = core.verified_answer(
                node_id, reply.envelope, query, academic_year=academic_year
            )
            checkpoint: tuple[Checkpoint, str] | None = (answer.checkpoint, answer.checkpoint_note)
        except VerificationError:
            checkpoint = None  # screened by its checkpoint alone; the release says why
        reason = screen_answer(
            core,
            core.book,
            node_id=node_id,
            envelope=reply.envelope,
            proof=reply.proof,
            sent_size=reply.sent_size,
            now_ms=now_ms(),
            checkpoint=checkpoint,
        )
        if reason is not None:
            core.forget_verdict(node_id, reply.envelope, query, academic_year=academic_year)
            _log.error(
                "node %s: answer to query %s not used: %s",
                node_id,
                shown_query_id(query.query_id),
                reason,
            )
            replies[node_id] = NodeReply(None, reason)


#: unverified statements kept per node until someone reads them (the newest few: if
#: the newest does not verify, an older one still may)
UNVERIFIED_STATEMENTS: Final = 4


def keep_statement(sessions: SessionRegistry, node_id: str, envelope: bytes) -> None:
    """Keep a node's budget statement, to be verified when someone reads the statements.

    A node sends one after every answer; verifying each as it came cost the coordinator
    an Ed25519 verification per answer for statements mostly superseded unread.
    """
    queue = sessions.unverified.setdefault(node_id, [])
    queue.append((envelope, now_ms()))
    del queue[:-UNVERIFIED_STATEMENTS]


def settle_statements(manifest: Manifest, sessions: SessionRegistry) -> None:
    """Verify the statements kept since the last read: each node's newest (by the time it
    was issued, not the order it arrived in: an old stream may deliver late) that
    verifies is kept if it is newer than the one held; the others are dropped (logged)."""
    pending, sessions.unverified = sessions.unverified, {}
    for node_id, queue in pending.items():
        verified = []
        for envelope, at_ms in queue:
            try:
                statement = verify_statement(envelope, manifest=manifest, node_id=node_id)
            except VerificationError as exc:
                _log.warning(
                    "node %s sent a budget statement that does not verify; dropped: %s",
                    node_id,
                    exc,
                )
                continue
            verified.append((statement.issued_at_ms, at_ms, statement, envelope))
        if not verified:
            continue
        _, at_ms, statement, envelope = max(verified, key=lambda v: v[0])
        if not sessions.record_budget(statement, envelope, at_ms=at_ms):
            _log.info("node %s sent an out-of-date budget statement; dropped", node_id)


def node_refusal(reason: str) -> str:
    """A node's refusal reason as a release and the log state it: ``refused: <code>:
    <detail>`` of the fixed vocabulary (``protocol.refusal``), printable and bounded;
    anything else from the node becomes :data:`REASON_NOT_UNDERSTOOD`."""
    try:
        code, detail = parse_reason(reason)
    except ValueError:
        return REASON_NOT_UNDERSTOOD
    return f"refused: {refusal_reason(code, detail)}"
