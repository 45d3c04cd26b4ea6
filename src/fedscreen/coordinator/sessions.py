"""The coordinator's node sessions: one live stream per node, and the queries waiting on it.

Pure asyncio bookkeeping: no protobuf (the servicers in ``server`` convert what a
session queues), no log and no keys (those are the core's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fedscreen.protocol.budget import BudgetStatement
from fedscreen.protocol.query import SignedQuery

__all__ = [
    "CoordinatorHead",
    "NodeReply",
    "NodeSeen",
    "NodeSession",
    "Push",
    "PushManifest",
    "SessionRegistry",
    "Withdraw",
    "collect_replies",
    "fan_out",
    "now_ms",
    "push_query",
]

_log = logging.getLogger(__name__)

#: queries whose ``known_log_size`` a session remembers until the node replies (count);
#: the oldest is forgotten beyond this (its reply, if it ever comes, is then not checked)
MAX_REMEMBERED_QUERIES: Final = 4_096


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), the unit of every ``*_unix_ms`` field."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Push:
    """A query to send down a node's stream, to be answered by ``deadline_unix_ms``."""

    query_id: str
    envelope: bytes
    deadline_unix_ms: int
    #: the size of the node's log in its newest checkpoint the coordinator verified
    #: (0: none): the answer proves consistency from it
    known_log_size: int = 0
    #: the year a query without years is answered for ("": none pinned)
    academic_year: str = ""
    #: the coordinator's newest signed checkpoint when the query was sent ("": none)
    coordinator_checkpoint: str = ""
    #: RFC 9162 consistency proof of the coordinator's log from the size of the
    #: checkpoint this session last sent the node to ``coordinator_checkpoint``
    coordinator_proof: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class CoordinatorHead:
    """The coordinator's newest checkpoint, as each query carries it to the nodes."""

    note: str
    #: its tree size (0: the log is empty)
    size: int
    #: node id -> consistency proof from the size that node's session last got to ``size``
    proofs: Mapping[str, tuple[bytes, ...]]


@dataclass(frozen=True)
class PushManifest:
    """A newer federation manifest (the file, verbatim) for the node to verify and install."""

    manifest: bytes


@dataclass(frozen=True)
class Withdraw:
    """Tell the node nobody waits for ``query_id`` any more (advisory)."""

    query_id: str


@dataclass(frozen=True)
class NodeReply:
    """What became of one query at one node: its answer envelope, or why there is none."""

    #: the node's answer envelope, byte for byte as received; None if no answer
    envelope: bytes | None
    #: why there is no answer ("refused: <the node's reason>", "link lost", "not
    #: connected", "no answer before the deadline", ...); the release states it
    reason: str = ""
    #: the consistency proof the answer came with, and the ``known_log_size`` its query
    #: was pushed with (None: not pushed); screened for rollbacks before the release
    proof: tuple[bytes, ...] = ()
    sent_size: int | None = None


@dataclass
class NodeSeen:
    """What the coordinator last saw of a node, for its operator (kept after it disconnects)."""

    #: the node's clock minus the coordinator's at its newest Hello (ms); None if unknown
    clock_offset_ms: int | None = None
    #: when its newest session opened (ms since the epoch, coordinator's clock); 0 never
    session_opened_ms: int = 0
    #: when its newest verified budget statement arrived (ms, coordinator's clock); 0 none
    statement_at_ms: int = 0
    software_version: str = ""


class NodeSession:
    """One node's live stream: what to push down it, and the queries waiting on it."""

    def __init__(self, node_id: str, *, outbox_messages: int) -> None:
        self.node_id = node_id
        self.opened_ms = now_ms()
        #: messages for the writer; None tells it to end the stream
        self.outbox: asyncio.Queue[Push | PushManifest | Withdraw | None] = asyncio.Queue(
            outbox_messages
        )
        self._waiting: dict[str, list[asyncio.Future[NodeReply]]] = {}
        #: query id -> the known_log_size it was pushed with (until the node replies)
        self._sent: OrderedDict[str, int] = OrderedDict()
        #: the size of the coordinator checkpoint last sent down this stream (Welcome or
        #: query): the next query's proof starts there. Set and used only under
        #: ``SessionRegistry.head_lock``, so the sizes a node sees never go down.
        self.coordinator_size = 0
        self.closed = False

    def sent_log_size(self, query_id: str) -> int | None:
        """The ``known_log_size`` the query was pushed with (None: not pushed, or forgotten)."""
        return self._sent.pop(query_id, None)

    def push_manifest(self, manifest: bytes) -> bool:
        """Queue a newer manifest for the node; False if the stream is backed up or closed."""
        if self.closed:
            return False
        try:
            self.outbox.put_nowait(PushManifest(manifest))
        except asyncio.QueueFull:
            return False
        return True

    def ask(
        self,
        query_id: str,
        envelope: bytes,
        *,
        deadline_unix_ms: int,
        known_log_size: int = 0,
        academic_year: str = "",
        head: CoordinatorHead | None = None,
    ) -> asyncio.Future[NodeReply]:
        """Push a query to the node; the future settles with its reply (never raises)."""
        future: asyncio.Future[NodeReply] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_result(NodeReply(None, "link lost"))
            return future
        waiting = self._waiting.get(query_id)
        if waiting is None:
            # the same query id already on its way (a concurrent replay) is not sent twice
            message = Push(
                query_id, envelope, deadline_unix_ms, known_log_size, academic_year,
                *(("", ()) if head is None else (head.note, head.proofs.get(self.node_id, ()))),
            )  # fmt: skip
            try:
                self.outbox.put_nowait(message)
            except asyncio.QueueFull:
                future.set_result(NodeReply(None, "the node's stream is backed up"))
                return future
            if head is not None:
                self.coordinator_size = head.size
            self._sent[query_id] = known_log_size
            self._sent.move_to_end(query_id)
            while len(self._sent) > MAX_REMEMBERED_QUERIES:
                self._sent.popitem(last=False)
            waiting = self._waiting[query_id] = []
        waiting.append(future)
        return future

    def settle(self, query_id: str, reply: NodeReply) -> bool:
        """Hand a reply to whoever waits for it; False if nobody does (late: discard it)."""
        waiting = self._waiting.pop(query_id, None)
        if not waiting:
            return False
        for future in waiting:
            if not future.done():
                future.set_result(reply)
        return True

    def withdraw(self, query_id: str, future: asyncio.Future[NodeReply]) -> None:
        """Stop waiting (deadline passed, analyst gone); tell the node, advisorily."""
        waiting = self._waiting.get(query_id)
        if waiting is None or future not in waiting:
            return
        waiting.remove(future)
        if waiting:
            return
        del self._waiting[query_id]
        with contextlib.suppress(asyncio.QueueFull):  # advisory only
            self.outbox.put_nowait(Withdraw(query_id))

    def close(self, reason: str) -> None:
        """End the session: every waiting query counts this node as missing."""
        if self.closed:
            return
        self.closed = True
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_result(NodeReply(None, reason))
        self._waiting.clear()
        # wake the writer even if the queue is full: it only needs to see the end mark
        while True:
            try:
                self.outbox.put_nowait(None)
                break
            except asyncio.QueueFull:
                self.outbox.get_nowait()


class SessionRegistry:
    """The live session of each node: one per node, the newest wins."""

    def __init__(self) -> None:
        self._live: dict[str, NodeSession] = {}
        #: node -> eligible students it last announced (public); kept after it disconnects
        self.eligible: dict[str, int] = {}
        #: node -> the latest academic year it last announced (public); kept after it
        #: disconnects, for pinning a query without years to one year
        self.latest_years: dict[str, str] = {}
        #: node -> its newest verified budget statement and that statement's envelope,
        #: verbatim; kept after it disconnects (in memory: a restarted coordinator waits
        #: for each node's next statement, which its Welcome brings)
        self.budgets: dict[str, tuple[BudgetStatement, bytes]] = {}
        #: node -> its newest statements not yet verified, oldest first, each with the time
        #: it arrived (a node sends one after every answer; they are verified when someone
        #: reads them — Budgets, Status — not on the answer path)
        self.unverified: dict[str, list[tuple[bytes, int]]] = {}
        #: node -> what the coordinator last saw of it (clock, session, statement times)
        self.seen: dict[str, NodeSeen] = {}
        #: held while the coordinator's checkpoint is read and sent down streams (a Welcome,
        #: a query's push), so each stream gets checkpoints in the order they were read
        self.head_lock = asyncio.Lock()

    def hello(
        self, session: NodeSession, *, clock_offset_ms: int | None, software_version: str
    ) -> None:
        """Note a node's Hello: its clock offset (None: it sent no clock) and software."""
        seen = self.seen.setdefault(session.node_id, NodeSeen())
        seen.clock_offset_ms = clock_offset_ms
        seen.session_opened_ms = session.opened_ms
        seen.software_version = software_version

    def open(self, session: NodeSession) -> None:
        """Register ``session``; an older session of the same node is closed."""
        old = self._live.get(session.node_id)
        self._live[session.node_id] = session
        if old is not None:
            _log.info("node %s reconnected; closing its older session", session.node_id)
            old.close("replaced by a newer session")

    def close(self, session: NodeSession, reason: str) -> None:
        """Unregister ``session`` (if still the live one) and close it."""
        if self._live.get(session.node_id) is session:
            del self._live[session.node_id]
        session.close(reason)

    def record_budget(
        self, statement: BudgetStatement, envelope: bytes, *, at_ms: int | None = None
    ) -> bool:
        """Keep a verified statement unless a newer one is held; False if it was older.

        Newer is by the node's own signed issue time, so a statement delayed on an
        old stream cannot roll the view back (the node's issue times strictly increase).
        """
        held = self.budgets.get(statement.node_id)
        if held is not None and held[0].issued_at_ms > statement.issued_at_ms:
            return False
        self.budgets[statement.node_id] = (statement, envelope)
        seen = self.seen.setdefault(statement.node_id, NodeSeen())
        seen.statement_at_ms = now_ms() if at_ms is None else at_ms
        return True

    def get(self, node_id: str) -> NodeSession | None:
        """The node's live session, if it has one."""
        return self._live.get(node_id)

    def live(self) -> tuple[NodeSession, ...]:
        """Every live session."""
        return tuple(self._live.values())

    @property
    def connected(self) -> tuple[str, ...]:
        """Ids of the nodes with a live session."""
        return tuple(sorted(self._live))

    def close_all(self, reason: str) -> None:
        """Close every session (shutdown)."""
        for session in list(self._live.values()):
            self.close(session, reason)


async def fan_out(
    sessions: SessionRegistry,
    query: SignedQuery,
    envelope: bytes,
    targets: tuple[str, ...],
    wait_s: float,
    *,
    known_log_sizes: Mapping[str, int] | None = None,
    academic_year: str = "",
) -> dict[str, NodeReply]:
    """Each target's reply, or why there is none, by the deadline.

    ``known_log_sizes``: each node's log size in its newest checkpoint the coordinator
    verified, sent with the query so the answer proves consistency from it.
    """
    replies, asked = push_query(
        sessions,
        query.query_id,
        envelope,
        targets,
        deadline_unix_ms=now_ms() + int(wait_s * 1000),
        known_log_sizes=known_log_sizes,
        academic_year=academic_year,
    )
    return await collect_replies(query.query_id, replies, asked, wait_s)


#: what :func:`push_query` pushed: node id -> its session and the future of its reply
Asked = dict[str, tuple[NodeSession, "asyncio.Future[NodeReply]"]]


def push_query(
    sessions: SessionRegistry,
    query_id: str,
    envelope: bytes,
    targets: tuple[str, ...],
    *,
    deadline_unix_ms: int,
    known_log_sizes: Mapping[str, int] | None = None,
    academic_year: str = "",
    head: CoordinatorHead | None = None,
) -> tuple[dict[str, NodeReply], Asked]:
    """Push the query down each target's stream, without waiting (no ``await``: the caller
    may hold ``head_lock``); returns the replies known already ("not connected") and the
    nodes asked. ``head``: the coordinator's checkpoint and each node's proof to send."""
    replies: dict[str, NodeReply] = {}
    asked: dict[str, tuple[NodeSession, asyncio.Future[NodeReply]]] = {}
    for node_id in targets:
        session = sessions.get(node_id)
        if session is None:
            replies[node_id] = NodeReply(None, "not connected")
            continue
        future = session.ask(
            query_id,
            envelope,
            deadline_unix_ms=deadline_unix_ms,
            known_log_size=(known_log_sizes or {}).get(node_id, 0),
            academic_year=academic_year,
            head=head,
        )
        asked[node_id] = (session, future)
    return replies, asked


async def collect_replies(
    query_id: str, replies: dict[str, NodeReply], asked: Asked, wait_s: float
) -> dict[str, NodeReply]:
    """Wait up to ``wait_s`` for the nodes asked; each that did not reply by then is
    withdrawn and missing ("no answer before the deadline")."""
    try:
        if asked:
            await asyncio.wait([f for _, f in asked.values()], timeout=wait_s)
    finally:
        # settle every target now: whatever arrives later finds nobody waiting
        for node_id, (session, future) in asked.items():
            if future.done():
                replies[node_id] = future.result()
            else:
                session.withdraw(query_id, future)
                future.cancel()
                replies[node_id] = NodeReply(None, "no answer before the deadline")
    return replies
