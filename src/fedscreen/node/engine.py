"""The node's query engine: policy, SQL, OpenDP noise and the ledger, in one transaction.

``answer_query`` runs, for one request::

    compile against the merged policy  ──refused──▶ record refusal, raise
    BEGIN IMMEDIATE
      identical query answered before?  ──yes──▶ return the stored answer (no cost)
      budget left for every year read?  ──no───▶ rollback, record refusal, raise
      aggregate in SQLite, add OpenDP noise
      store the answer and charge the ledger
    COMMIT                              ──then──▶ return the answer

so an answer can only leave after its charge is durable, and a crash anywhere
before COMMIT leaves neither charge nor answer. Every refusal is recorded with a
reason ``<code>: <detail>`` from ``protocol.refusal``'s fixed vocabulary. Repeating a question (same
canonical spec, ε, data version and policy) returns the same noisy answer, so
averaging repeated answers teaches nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import transaction
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused
from fedscreen.node import ledger, store
from fedscreen.node.cells import release
from fedscreen.node.home import NodeConfig
from fedscreen.policy import Policy
from fedscreen.policy import digest as policy_digest
from fedscreen.protocol.answer import answer_payload
from fedscreen.protocol.budget import check_budget, from_micro, to_micro
from fedscreen.protocol.refusal import parse_reason, refusal_reason
from fedscreen.query import mechanisms
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.cost import request_epsilon
from fedscreen.query.spec import QuerySpec
from fedscreen.query.sqlparse import MAX_SQL_CHARS, parse_sql
from fedscreen.tlog import memberlog

ANSWER_VERSION: Final = 1
#: longest query text kept in a refusal record (characters); a longer one is cut
MAX_RECORDED_CHARS: Final = 2 * MAX_SQL_CHARS


@dataclass(frozen=True)
class QueryRequest:
    """One analyst's question: the spec (or SQL text) and either ε or a target accuracy."""

    analyst: str
    #: the typed query; None to parse ``text`` (a parse failure is then a recorded refusal)
    spec: QuerySpec | None
    epsilon: float | None = None
    #: half-width of the 95% interval wanted for each noisy count or sum
    accuracy: float | None = None
    #: the SQL the analyst wrote, kept in refusal records
    text: str = ""
    #: the signed query's id: a query id is answered once; a replay gets the stored answer
    query_id: str | None = None
    #: SHA-256 (hex) of the signed query's payload; the signed answer states it with the id
    query_sha256: str | None = None
    #: the year a spec without years is answered for (the coordinator's pin); None: the
    #: node's latest year (a local query)
    academic_year: str | None = None
    #: a secure query's two aggregators, (member id, public key) each, from the node's
    #: manifest: its exact cells go to them as sealed shares (``protocol.secure``)
    recipients: tuple[tuple[str, bytes], ...] = ()


class _Refused(Exception):
    """A refusal with its code, inside the engine (callers get QueryRefused)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Answer:
    """An answer as released: the body, and the node-signed envelope that carries it.

    ``cached`` if the same question was answered before (no new charge). The
    envelope's payload is the body plus the node's log index and signed
    checkpoint after the log entry for this answer.
    """

    answer_id: int
    body: dict[str, Any]
    cached: bool
    envelope: Envelope
    log_index: int
    checkpoint: str


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def latest_year(conn: sqlite3.Connection) -> str | None:
    """The most recent academic year with loaded screenings."""
    row = conn.execute(
        "SELECT MAX(academic_year) FROM ingest_batch WHERE kind = 'screening' AND rows > 0"
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def _holds(conn: sqlite3.Connection, kind: str, year: str) -> bool:
    """Whether rows of this ingest kind (``screening``, ``school``) are loaded for the year."""
    row = conn.execute(
        "SELECT 1 FROM ingest_batch WHERE kind = ? AND rows > 0 AND academic_year = ?",
        (kind, year),
    ).fetchone()
    return row is not None


def answer_query(
    config: NodeConfig, policy: Policy, request: QueryRequest, *, conn: sqlite3.Connection
) -> Answer:
    """Answer one request (see the module docstring); raises QueryRefused with a reason."""
    try:
        code = "invalid-query"
        try:
            spec = request.spec if request.spec is not None else parse_sql(request.text)
            if not spec.years:
                year = request.academic_year or latest_year(conn)
                if year is None:
                    raise _Refused("no-data", "this node holds no screenings yet")
                spec = replace(spec, years=(year,))
            code = "policy"
            plan = compile_query(spec, policy)
            if spec.secure and len(request.recipients) != 2:
                raise _Refused("policy", "a secure query needs the federation's two aggregators")
            epsilon = request_epsilon(
                plan, policy, epsilon=request.epsilon, accuracy=request.accuracy
            )
            # a year with nothing loaded (a coordinator's pinned year, a typo) would be
            # charged for pure noise, or for public tables answered as an exact 0 and
            # counted as answered: refuse it, at no cost. Public datasets are the school
            # tables, loaded as ``school`` batches.
            public = plan.dataset.public
            kind, what = ("school", "school tables") if public else ("screening", "screenings")
            absent = [y for y in spec.years if not _holds(conn, kind, y)]
            if absent:
                raise _Refused("no-data", f"this node holds no {what} for {absent[0]}")
        except RecursionError:
            # the parser and the spec limit nesting; this is only the last resort
            raise _Refused("invalid-query", "the query is nested too deeply to check") from None
        except QueryRefused as exc:
            raise _Refused(code, str(exc)) from None
        return _answer(config, policy, request, plan, epsilon, conn)
    except _Refused as refusal:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        query = request.text or _describe(request.spec)
        reason = refusal_reason(refusal.code, str(refusal))
        record_refusal(config, conn, analyst=request.analyst, query=query, reason=reason)
        raise QueryRefused(reason) from None


def _describe(spec: QuerySpec | None) -> str:
    """The spec's canonical text for a refusal record (a malformed spec may have none)."""
    if spec is None:
        return ""
    try:
        return spec.canonical().decode()
    except ValueError:
        return repr(spec)
    except RecursionError:
        return f"(a query on {spec.dataset!r} nested too deeply to print)"


def record_refusal(
    config: NodeConfig, conn: sqlite3.Connection, *, analyst: str, query: str, reason: str
) -> None:
    """Record a refused request and log it, in one transaction; it costs no budget.

    ``reason`` is ``<code>: <detail>`` (``protocol.refusal.refusal_reason``); a reason
    without a code of the vocabulary (a caller's plain text) is filed under the code
    its words suggest. The texts are stored as valid UTF-8 (a lone surrogate from a
    command line becomes ``\\udcff``) and the query at most ``MAX_RECORDED_CHARS``
    long, so no refusal fails to be recorded and none fills the disk.
    """
    at = now()
    analyst, reason = _storable(analyst), _storable(_coded(reason))
    query = _storable(query)
    if len(query) > MAX_RECORDED_CHARS:
        query = f"{query[:MAX_RECORDED_CHARS]}… ({len(query):,} characters)"
    with transaction(conn):
        ledger.record_refusal(conn, analyst=analyst, query=query, reason=reason, at=at)
        memberlog.append(
            conn,
            member_id=config.node_id,
            key=config.signing_key(),
            payload={
                "kind": "refusal",
                "at": at,
                "analyst": analyst,
                "query": query,
                "reason": reason,
                "epsilon": 0,
            },
        )


def _coded(reason: str) -> str:
    try:
        parse_reason(reason)
        return reason
    except ValueError:
        pass
    words = reason.lower()
    # the agent's own refusals: a passed deadline, or a clock too far from the coordinator's
    code = "deadline-passed" if "deadline" in words else "stale" if "clock" in words else "internal"
    return refusal_reason(code, reason)


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _answer(
    config: NodeConfig,
    policy: Policy,
    request: QueryRequest,
    plan: Plan,
    epsilon: float,
    conn: sqlite3.Connection,
) -> Answer:
    analyst, query_id = request.analyst, request.query_id
    # the signed answer names the request it answers now (a replay: this request's id)
    bound = (query_id, request.query_sha256)
    digest = policy_digest(policy)
    cost_micro = to_micro(epsilon)
    key = config.signing_key()
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = store.data_version(conn)
        material: list[Any] = [plan.spec.to_json(), cost_micro, version, digest, config.node_id]
        if plan.spec.secure:
            # boxes sealed to other aggregators' keys are no answer for these ones
            material.append([[m, k.hex()] for m, k in request.recipients])
        key_material = canonical_json(material)
        cache_key = hashlib.sha256(key_material).hexdigest()
        row = conn.execute(
            "SELECT answer_id, answer FROM query_answer WHERE cache_key = ?", (cache_key,)
        ).fetchone()
        if query_id is not None:
            # a replayed query id gets exactly what it got before, whatever changed since
            seen = conn.execute(
                "SELECT a.answer_id, a.answer FROM query_request AS r "
                "JOIN query_answer AS a USING (answer_id) WHERE r.query_id = ?",
                (query_id,),
            ).fetchone()
            if seen is not None:
                row = seen
            elif row is not None:
                _remember(conn, query_id, analyst, int(row[0]))
        if row is not None:
            body = json.loads(row[1])
            logged = _log_answer(conn, config, key, analyst, plan, body, 0, cached=True)
            conn.execute("COMMIT")
            return _signed(int(row[0]), body, logged, key, cached=True, charged_micro=0, to=bound)
        threshold = policy.limits.approval_above_epsilon
        if threshold is not None and cost_micro > to_micro(threshold):
            try:
                ledger.require_approval(
                    conn,
                    request_key=f"{cache_key}:{analyst}",
                    analyst=analyst,
                    spec=plan.spec.canonical().decode(),
                    cost_micro=cost_micro,
                    at=now(),
                )
            except QueryRefused as exc:
                conn.execute("COMMIT")  # keep the pending request; the caller records the refusal
                raise _Refused("approval-required", str(exc)) from None
        if not plan.dataset.public:
            limits = policy.limits
            for year in plan.spec.years:
                try:
                    check_budget(
                        ledger.spent(conn, year, analyst),
                        cost_micro=cost_micro,
                        node_budget_micro=to_micro(limits.epsilon_per_node_per_year),
                        analyst_budget_micro=to_micro(limits.analyst_budget(analyst)),
                        analyst=analyst,
                    )
                except QueryRefused as exc:
                    raise _Refused("budget", str(exc)) from None
        rows = conn.execute(plan.sql, plan.params).fetchall()
        answered_at = now()
        body = {
            "version": ANSWER_VERSION,
            "node_id": config.node_id,
            "node_name": config.name,
            "analyst": analyst,
            "query": plan.spec.to_json(),
            "epsilon": from_micro(cost_micro),
            "unit_of_privacy": plan.dataset.unit,
            "policy_digest": digest,
            "data_version": version,
            "answered_at": answered_at,
            "alpha": mechanisms.ALPHA,
            "threshold": policy.limits.publication_threshold,
            # noise drawn at the ε charged (rounded up to whole µε), so the ε the answer
            # states, its scale, its charge and its cache key all agree
            **release(
                plan,
                rows,
                from_micro(cost_micro),
                policy.limits.publication_threshold,
                node_id=config.node_id,
                recipients=request.recipients,
                min_nodes=policy.secure.min_nodes,
            ),
        }
        answer_id = conn.execute(
            "INSERT INTO query_answer (cache_key, analyst, spec, epsilon_micro, policy_digest, "
            "data_version, answer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cache_key,
                analyst,
                plan.spec.canonical().decode(),
                cost_micro,
                digest,
                version,
                canonical_json(body).decode(),
                answered_at,
            ),
        ).lastrowid
        assert answer_id is not None
        if cost_micro > 0:
            ledger.charge(
                conn,
                years=plan.spec.years,
                analyst=analyst,
                cost_micro=cost_micro,
                answer_id=answer_id,
                at=answered_at,
            )
        if query_id is not None:
            _remember(conn, query_id, analyst, answer_id)
        logged = _log_answer(
            conn, config, key, analyst, plan, body, cost_micro, cached=False, policy=policy
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return _signed(answer_id, body, logged, key, cached=False, charged_micro=cost_micro, to=bound)


def _remember(conn: sqlite3.Connection, query_id: str, analyst: str, answer_id: int) -> None:
    conn.execute(
        "INSERT INTO query_request (query_id, analyst, answer_id, received_at) VALUES (?, ?, ?, ?)",
        (query_id, analyst, answer_id, now()),
    )


def _log_answer(
    conn: sqlite3.Connection,
    config: NodeConfig,
    key: SigningKey,
    analyst: str,
    plan: Plan,
    body: dict[str, Any],
    cost_micro: int,
    *,
    cached: bool,
    policy: Policy | None = None,
) -> memberlog.Appended:
    """Append the answer's log entry (same transaction as the charge)."""
    budget: dict[str, Any] = {}
    if policy is not None and not plan.dataset.public:
        limits = policy.limits
        for year in plan.spec.years:
            after = ledger.spent(conn, year, analyst)
            budget[year] = {
                "node_spent": from_micro(after.node_micro),
                "node_budget": limits.epsilon_per_node_per_year,
                "analyst_spent": from_micro(after.analyst_micro),
                "analyst_budget": limits.analyst_budget(analyst),
            }
    payload = {
        "kind": "answer",
        "at": now(),
        "analyst": analyst,
        "query": plan.spec.to_json(),
        "epsilon": from_micro(cost_micro),
        "cached": cached,
        "budget_after": budget,
        "policy_digest": body["policy_digest"],
        "answer_sha256": hashlib.sha256(canonical_json(body)).hexdigest(),
    }
    return memberlog.append(conn, member_id=config.node_id, key=key, payload=payload)


def _signed(
    answer_id: int,
    body: dict[str, Any],
    logged: memberlog.Appended,
    key: SigningKey,
    *,
    cached: bool,
    charged_micro: int,
    to: tuple[str | None, str | None],
) -> Answer:
    """Sign an answer with what this delivery charged (nothing when ``cached``) and the
    signed query it answers (``to``: query id and digest; None for a local query)."""
    payload = answer_payload(
        body,
        logged.index,
        logged.note,
        from_micro(charged_micro),
        query_id=to[0],
        query_sha256=to[1],
    )
    envelope = sign_envelope(payload_type=ANSWER_V1, payload=payload, key=key)
    return Answer(answer_id, body, cached, envelope, logged.index, logged.note)
