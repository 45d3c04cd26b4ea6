"""The node's query worker: one thread that owns the node's SQLite connection.

The agent (:mod:`fedscreen.node.agent`) hands it queries to answer or refuse and
asks it for budget statements; all of them run in arrival order on this thread,
so the agent's event loop never waits on SQLite. It also holds the manifest in
force (:class:`~fedscreen.node.link.ManifestKeeper`): before each query it looks
for a newer file in the home, and a manifest the coordinator pushes is offered
here; each version the node adopts is logged in its own transparency log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedscreen._util.sqlite import transaction
from fedscreen.errors import QueryRefused, UnknownMember
from fedscreen.node import store
from fedscreen.node.engine import latest_year, record_refusal
from fedscreen.node.home import NodeConfig
from fedscreen.node.link import Adopted, ManifestKeeper, answer_proof, check_membership
from fedscreen.node.requests import handle_query
from fedscreen.node.rollback import CheckpointGuard
from fedscreen.node.statement import sign_statement, statement_body
from fedscreen.policy import Policy
from fedscreen.protocol.query import FRESHNESS_WINDOW_MS
from fedscreen.protocol.refusal import refusal_reason
from fedscreen.tlog import memberlog
from fedscreen.tlog.checkpoint import note_size
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.manifest import Manifest, manifest_entry

_log = logging.getLogger("fedscreen.node.agent")  # the agent's: its worker's troubles

__all__ = ["QueryWorker", "hello_facts"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def hello_facts(database: Path) -> tuple[int, str]:
    """The eligible-student count and latest academic year ("" none) a Hello announces
    (public numbers; a quick read on a connection of its own)."""
    conn = store.connect(database)
    try:
        return store.eligible_students(conn), latest_year(conn) or ""
    finally:
        conn.close()


@dataclass(frozen=True)
class Answered:
    """A signed answer, with what goes up the stream with it."""

    envelope: bytes
    #: the node log's consistency proof from the coordinator's ``known_log_size``
    proof: list[bytes]
    #: a signed budget statement made after the answer's charge (b"": none)
    statement: bytes


class QueryWorker:
    """Runs :func:`handle_query` on one dedicated thread that owns the node's SQLite connection.

    One thread is enough: answering takes SQLite's write lock (BEGIN IMMEDIATE)
    anyway, so queries at one node run one at a time whatever the thread count.
    """

    def __init__(
        self, config: NodeConfig, policy: Policy, manifest: Manifest, *, coordinator_id: str
    ) -> None:
        self.config = config
        self.coordinator_id = coordinator_id
        #: why this node serves no more (it or its coordinator left the manifest); "" serving
        self.ended = ""
        self.policy = policy
        self.keeper = ManifestKeeper(config.home, manifest)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"node-{config.node_id}"
        )
        # opened lazily on the worker thread and only ever used there
        self._conn: sqlite3.Connection | None = None
        #: issue time of the last budget statement (ms); each next one is strictly later
        self._issued_ms = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = store.connect(self.config.database)
            try:
                # a database restored behind the node's saved checkpoint is refused here
                self._guard = CheckpointGuard.open(self.config, conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            # the version in force at start is logged too (once: restarts repeat nothing)
            self._adopt(self.keeper.in_force())
        return self._conn

    @property
    def manifest(self) -> Manifest:
        """The manifest in force (queries are verified against it)."""
        return self.keeper.current

    def _adopt(self, adopted: Adopted | None) -> None:
        """Log a manifest version the node starts using (its own log says when it did),
        unless that version or a newer one is logged already."""
        if adopted is None:
            return
        conn = self._connection()
        entry = manifest_entry(adopted.text, authority_key=adopted.manifest.authority_key)
        with transaction(conn):
            memberlog.append_manifest(
                conn, member_id=self.config.node_id, key=self.config.signing_key(), entry=entry
            )
        self._guard.advance(conn)

    def _offer(self, text: bytes) -> int:
        self._adopt(self.keeper.offer(text))
        return self.manifest.version

    def membership(self) -> str:
        """Why this node serves no more, "" while it does: set for good once the manifest
        in force no longer lists it or its coordinator as active (revocation is final)."""
        if not self.ended:
            try:
                check_membership(
                    self.manifest, node_id=self.config.node_id, coordinator_id=self.coordinator_id
                )
            except UnknownMember as exc:
                self.ended = str(exc)
        return self.ended

    def _proof(self, answer: bytes, known_size: int) -> list[bytes]:
        conn = self._connection()
        return answer_proof(
            conn, key=self.config.signing_key(), answer=answer, known_size=known_size
        )

    def _answer(
        self,
        envelope: bytes,
        now_ms: Callable[[], int],
        deadline_ms: int | None,
        academic_year: str = "",
        query_id: str = "",
        window_ms: int = FRESHNESS_WINDOW_MS,
    ) -> bytes:
        # a manifest installed in the home since the last query is in force for this one
        self._adopt(self.keeper.check_file())
        if self.membership():  # answer nothing, pay nothing: the membership this relied on is gone
            reason = refusal_reason("revoked", self.ended)
            self._refuse(query_id, reason)
            raise QueryRefused(reason)
        conn = self._connection()
        try:
            return handle_query(
                self.config,
                self.policy,
                self.manifest,
                envelope,
                conn=conn,
                now_ms=now_ms(),  # read when the query is taken up, not when it was queued
                deadline_unix_ms=deadline_ms,
                academic_year=academic_year,
                window_ms=window_ms,
            )
        finally:  # answers and refusals are both logged: save the checkpoint after the commit
            self._guard.advance(conn)

    def _refuse(self, query_id: str, reason: str) -> None:
        # the query is refused before it is verified: its analyst is not known yet
        conn = self._connection()
        record_refusal(self.config, conn, analyst="(unverified)", query=query_id, reason=reason)
        self._guard.advance(conn)

    def _statement(self) -> bytes:
        # strictly increasing issue times order this process's statements even within
        # one millisecond: the coordinator keeps the newest by issue time
        self._issued_ms = max(_now_ms(), self._issued_ms + 1)
        body = statement_body(
            self._connection(), self.policy, self.config.node_id, now_ms=self._issued_ms
        )
        return sign_statement(body, key=self.config.signing_key())

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def answer_in_full(
        self,
        envelope: bytes,
        *,
        now_ms: Callable[[], int],
        deadline_ms: int | None = None,
        academic_year: str = "",
        query_id: str = "",
        known_size: int = 0,
    ) -> Answered:
        """The signed answer envelope, with the log's consistency proof from ``known_size``
        and a budget statement made after the charge, in one job of the worker's thread (a
        query queued meanwhile does not hold the answer back). Raises QueryRefused (already
        recorded by the node); a proof or a statement that cannot be made is logged and
        left empty (the answer is charged).

        ``now_ms`` is the node's clock, read when the query is taken up: its freshness
        and ``deadline_ms`` (the coordinator's deadline in the node's clock) are
        checked against it, so a query that waited behind another is not started late.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            self._answer_in_full,
            envelope, now_ms, deadline_ms, academic_year, query_id, known_size,
        )  # fmt: skip

    def _answer_in_full(
        self,
        envelope: bytes,
        now_ms: Callable[[], int],
        deadline_ms: int | None,
        academic_year: str,
        query_id: str,
        known_size: int,
        window_ms: int = FRESHNESS_WINDOW_MS,
    ) -> Answered:
        answer = self._answer(envelope, now_ms, deadline_ms, academic_year, query_id, window_ms)
        proof: list[bytes] = []
        if known_size > 0:
            try:
                proof = self._proof(answer, known_size)
            except Exception:  # the answer is charged: send it; the coordinator judges it
                _log.exception("node %s could not prove its log's consistency", self.config.node_id)
        try:
            statement = self._statement()
        except Exception:  # the statement is informative only: keep answering queries
            _log.exception("node %s could not make its budget statement", self.config.node_id)
            statement = b""
        return Answered(answer, proof, statement)

    # --- for a process without an event loop (``fedscreen node answer-file``) -----------

    def answer_here(
        self,
        envelope: bytes,
        *,
        now_ms: Callable[[], int],
        academic_year: str,
        query_id: str,
        known_size: int,
        window_ms: int,
    ) -> Answered:
        """:meth:`answer_in_full` on the caller's thread, with freshness ``window_ms``:
        only for a process that never starts this worker's thread (the connection is
        the caller's then). Raises QueryRefused (recorded)."""
        return self._answer_in_full(
            envelope, now_ms, None, academic_year, query_id, known_size, window_ms
        )

    def offer_here(self, text: bytes) -> int:
        """:meth:`offer_manifest` on the caller's thread (see :meth:`answer_here`)."""
        return self._offer(text)

    def refuse_here(self, query_id: str, reason: str) -> None:
        """:meth:`refuse` on the caller's thread (see :meth:`answer_here`)."""
        self._refuse(query_id, reason)

    def statement_here(self) -> bytes:
        """:meth:`statement` on the caller's thread (see :meth:`answer_here`)."""
        return self._statement()

    def log_head_here(self, sizes: Iterable[int]) -> tuple[str, list[tuple[int, list[bytes]]]]:
        """The node log's newest signed checkpoint and its consistency proof from each of
        ``sizes`` below it (on the caller's thread, see :meth:`answer_here`)."""
        conn = self._connection()
        note = memberlog.newest_note(conn)
        size = note_size(note)
        log = TransparencyLog(conn, name="node")
        proofs = [(s, log.consistency_proof(s, size)) for s in sorted(set(sizes)) if 0 < s < size]
        return note, proofs

    async def offer_manifest(self, text: bytes) -> int:
        """Verify a manifest the coordinator sent and use it if newer; the version in force.

        Raises VerificationError if it does not verify under the pinned authority key.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._offer, text)

    async def refuse(self, query_id: str, reason: str) -> None:
        """Record (in the ledger and the node's log) a query refused before it ran."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._refuse, query_id, reason)

    async def statement(self) -> bytes:
        """A signed budget statement of the ledger after every charge queued before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._statement)

    def close(self) -> None:
        """Finish the query running (if any), close the connection, stop the thread."""
        with contextlib.suppress(RuntimeError):  # already shut down
            self._executor.submit(self._close)
        self._executor.shutdown(wait=True)
