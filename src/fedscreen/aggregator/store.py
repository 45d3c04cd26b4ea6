"""The aggregator's store: its partials under the use-once rule, and its transparency log.

**Use once.** Each node answer body (by ``secure.answer_digest``) is summed into one
partial only. The same answers again — the same question at the same ε over the same
answer bodies (``secure.partial_key``), e.g. a resubmitted question the nodes answer
from their stores — get the stored partial, its noise drawn once, signed for the query
id asking now (free: nothing new is learnt). Answers of which one was already summed
with others are refused: fresh noise over a re-summed answer would let differences or
averages spend a county's ε twice.

**Log.** Every partial the aggregator hands out (entry ``kind = "partial"``: the query
id and the signed envelope, verbatim) and every refusal (``kind = "refusal"``: the query
id and a bounded reason, never student data) is signed into its own log
(:mod:`fedscreen.tlog.memberlog`, origin ``fedscreen.aggregator/ID``), in the same
transaction as the partial it stores; so is each manifest version it starts using.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import connect, transaction
from fedscreen.aggregator.home import ROLE, AggregatorHome
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.protocol.refusal import MAX_DETAIL_CHARS
from fedscreen.tlog import memberlog
from fedscreen.tlog.export import LogExport
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.manifest import manifest_entry

__all__ = [
    "SCHEMA",
    "AggregatorStatus",
    "PartialStore",
    "Signer",
    "bounded_reason",
    "export_log",
]

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS secure_partial ("
    " key TEXT PRIMARY KEY, body TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS secure_summed ("
    " answer_sha256 TEXT PRIMARY KEY, node_id TEXT NOT NULL,"
    " key TEXT NOT NULL REFERENCES secure_partial (key));"
    "CREATE TABLE IF NOT EXISTS partial_given ("
    " query_id TEXT NOT NULL, key TEXT NOT NULL REFERENCES secure_partial (key),"
    " envelope BLOB NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (query_id, key));"
    "CREATE TABLE IF NOT EXISTS aggregator_refusal ("
    " n INTEGER PRIMARY KEY, query_id TEXT NOT NULL, reason TEXT NOT NULL,"
    " at_ms INTEGER NOT NULL);"
)

#: signs the stored body for the query asking now: body -> the signed envelope's bytes
Signer = Callable[[Mapping[str, Any]], bytes]
#: makes the partial body (opens the shares, sums, draws the noise); called only when
#: the answers are new to the store
Aggregate = Callable[[], Mapping[str, Any]]


def bounded_reason(text: str) -> str:
    """A refusal reason as logged and sent: one printable line of at most MAX_DETAIL_CHARS."""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(clean) > MAX_DETAIL_CHARS:
        clean = clean[: MAX_DETAIL_CHARS - 1] + "…"
    return clean or "no reason given"


@dataclass(frozen=True)
class AggregatorStatus:
    """What ``fedscreen aggregator status`` shows."""

    member_id: str
    log_size: int
    #: distinct partials made (noise drawn), and partials handed out (one per query id)
    partials: int
    given: int
    refusals: int
    #: the newest refusal: (query id, reason, ms since the epoch); None if none
    last_refusal: tuple[str, str, int] | None


class PartialStore:
    """The aggregator's database: partials, what each answer was summed into, its log.

    Single-threaded: the agent's worker thread owns it.
    """

    def __init__(self, conn: sqlite3.Connection, *, member_id: str, key: SigningKey) -> None:
        self.conn = conn
        self.member_id = member_id
        self.key = key
        conn.executescript(SCHEMA)
        conn.execute(memberlog.CHECKPOINT_SCHEMA)

    @classmethod
    def open(cls, home: AggregatorHome) -> PartialStore:
        """Open the home's database (created by ``init_aggregator``)."""
        if not home.database.is_file():
            raise ConfigError(f"{home.home} has no aggregator database; run aggregator init")
        return cls(
            connect(home.database), member_id=home.member_id, key=home.identity.signing_key()
        )

    def close(self) -> None:
        """Close the database."""
        self.conn.close()

    # ------------------------------------------------------------ the use-once rule

    def give(
        self,
        *,
        query_id: str,
        key: str,
        nodes: Mapping[str, str],
        make: Aggregate,
        sign: Signer,
        now_ms: int | None = None,
    ) -> bytes:
        """The signed partial for ``query_id`` over the answer bodies ``nodes`` (node id ->
        answer digest), whose partial key is ``key``: made (``make``), stored and logged in
        one transaction, or the stored one again. QueryRefused, logged and with nothing
        stored, if one of these answer bodies was summed into another partial or ``make``
        refuses (QueryRefused, VerificationError); any other error of ``make`` or ``sign``
        leaves nothing behind."""
        at = _now_ms() if now_ms is None else now_ms
        conn = self.conn
        with transaction(conn):
            given = conn.execute(
                "SELECT envelope FROM partial_given WHERE query_id = ? AND key = ?",
                (query_id, key),
            ).fetchone()
            if given is not None:
                return bytes(given[0])  # this query id asked before: the same bytes, free
            row = conn.execute("SELECT body FROM secure_partial WHERE key = ?", (key,)).fetchone()
            made = json.loads(row[0]) if row is not None else self._make(query_id, nodes, make, at)
            if isinstance(made, str):
                refusal = made  # logged: it commits with this transaction
            else:
                refusal = ""
                if row is None:
                    self._store(key, made, nodes, at)
                envelope = sign(made)
                conn.execute(
                    "INSERT INTO partial_given (query_id, key, envelope, at_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (query_id, key, envelope, at),
                )
                self._append({"kind": "partial", "query_id": query_id,
                              "partial": envelope.decode("utf-8")})  # fmt: skip
        if refusal:
            raise QueryRefused(refusal)
        return envelope

    def _make(
        self, query_id: str, nodes: Mapping[str, str], make: Aggregate, at_ms: int
    ) -> Mapping[str, Any] | str:
        """A new partial body, or the reason (logged) why there is none."""
        summed = self._already_summed(nodes)
        if summed is not None:
            why = (
                f"node {summed}'s answer was already summed into another release: "
                "ask again at another ε for a new one"
            )
            return self._log_refusal(query_id, why, at_ms)
        try:
            return make()
        except (QueryRefused, VerificationError) as exc:  # too few nodes, a share that is bad
            return self._log_refusal(query_id, str(exc), at_ms)

    def _store(self, key: str, body: Mapping[str, Any], nodes: Mapping[str, str], at: int) -> None:
        self.conn.execute(
            "INSERT INTO secure_partial (key, body, created_ms) VALUES (?, ?, ?)",
            (key, canonical_json(dict(body)).decode(), at),
        )
        self.conn.executemany(
            "INSERT INTO secure_summed (answer_sha256, node_id, key) VALUES (?, ?, ?)",
            [(digest, node, key) for node, digest in nodes.items()],
        )

    def _already_summed(self, nodes: Mapping[str, str]) -> str | None:
        """The first node (by id) whose answer body is summed into a stored partial."""
        for node, digest in sorted(nodes.items()):
            row = self.conn.execute(
                "SELECT 1 FROM secure_summed WHERE answer_sha256 = ?", (digest,)
            ).fetchone()
            if row is not None:
                return node
        return None

    # ------------------------------------------------------------ refusals and the log

    def refuse(self, query_id: str, reason: str, *, now_ms: int | None = None) -> str:
        """Log a refusal (it costs nothing); returns the reason as logged."""
        with transaction(self.conn):
            return self._log_refusal(query_id, reason, _now_ms() if now_ms is None else now_ms)

    def _log_refusal(self, query_id: str, reason: str, at_ms: int) -> str:
        shown = bounded_reason(reason)
        # a query id is whatever the coordinator sent: bounded, printable
        qid = bounded_reason(query_id)[:64]
        self.conn.execute(
            "INSERT INTO aggregator_refusal (query_id, reason, at_ms) VALUES (?, ?, ?)",
            (qid, shown, at_ms),
        )
        self._append({"kind": "refusal", "query_id": qid, "reason": shown})
        return shown

    def _append(self, payload: dict[str, Any]) -> None:
        memberlog.append(
            self.conn, member_id=self.member_id, key=self.key, payload=payload, role=ROLE
        )

    def log_manifest(self, text: bytes, *, authority_key: bytes) -> None:
        """Log the manifest version now in force, unless the log already has it."""
        entry = manifest_entry(text, authority_key=authority_key)
        with transaction(self.conn):
            memberlog.append_manifest(
                self.conn, member_id=self.member_id, key=self.key, entry=entry, role=ROLE
            )

    def export(self) -> LogExport:
        """Every entry and checkpoint of the log, for an audit bundle."""
        return memberlog.export_log(self.conn, member_id=self.member_id, role=ROLE)

    def status(self) -> AggregatorStatus:
        """Counts for the operator."""
        conn = self.conn

        def count(table: str) -> int:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

        last = conn.execute(
            "SELECT query_id, reason, at_ms FROM aggregator_refusal ORDER BY n DESC LIMIT 1"
        ).fetchone()
        return AggregatorStatus(
            member_id=self.member_id,
            log_size=TransparencyLog(conn, name=ROLE).size(),
            partials=count("secure_partial"),
            given=count("partial_given"),
            refusals=count("aggregator_refusal"),
            last_refusal=None if last is None else (str(last[0]), str(last[1]), int(last[2])),
        )


def export_log(home: Path) -> LogExport:
    """The aggregator's log in ``home``, as exported for auditors."""
    store = PartialStore.open(AggregatorHome.open(home))
    try:
        return store.export()
    finally:
        store.close()


def _now_ms() -> int:
    return int(time.time() * 1000)
