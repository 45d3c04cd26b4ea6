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
before COMMIT leaves neither charge nor answer. Repeating a question (same
canonical spec, ε, data version and policy) returns the same noisy answer, so
averaging repeated answers teaches nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import transaction
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused
from fedscreen.node import ledger, store
from fedscreen.node.home import NodeConfig
from fedscreen.policy import Policy
from fedscreen.policy import digest as policy_digest
from fedscreen.protocol.answer import answer_payload
from fedscreen.protocol.budget import check_budget, from_micro, to_micro
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


def answer_query(
    config: NodeConfig, policy: Policy, request: QueryRequest, *, conn: sqlite3.Connection
) -> Answer:
    """Answer one request (see the module docstring); raises QueryRefused with a reason."""
    try:
        try:
            spec = request.spec if request.spec is not None else parse_sql(request.text)
            if not spec.years:
                year = latest_year(conn)
                if year is None:
                    raise QueryRefused("this node holds no screenings yet")
                spec = QuerySpec(spec.dataset, spec.measure, spec.group_by, spec.where, (year,))
            plan = compile_query(spec, policy)
            epsilon = request_epsilon(
                plan, policy, epsilon=request.epsilon, accuracy=request.accuracy
            )
        except RecursionError:
            # the parser and the spec limit nesting; this is only the last resort
            raise QueryRefused("the query is nested too deeply to check") from None
        return _answer(config, policy, request.analyst, plan, epsilon, conn, request.query_id)
    except QueryRefused as refusal:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        query = request.text or _describe(request.spec)
        record_refusal(config, conn, analyst=request.analyst, query=query, reason=str(refusal))
        raise


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

    The texts are stored as valid UTF-8 (a lone surrogate from a command line becomes
    ``\\udcff``) and the query at most ``MAX_RECORDED_CHARS`` long, so no refusal
    fails to be recorded and none fills the disk.
    """
    at = now()
    analyst, reason = _storable(analyst), _storable(reason)
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


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _answer(
    config: NodeConfig,
    policy: Policy,
    analyst: str,
    plan: Plan,
    epsilon: float,
    conn: sqlite3.Connection,
    query_id: str | None = None,
) -> Answer:
    digest = policy_digest(policy)
    cost_micro = to_micro(epsilon)
    key = config.signing_key()
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = store.data_version(conn)
        key_material = canonical_json(
            [plan.spec.to_json(), cost_micro, version, digest, config.node_id]
        )
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
            return _signed(int(row[0]), body, logged, key, cached=True, charged_micro=0)
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
            except QueryRefused:
                conn.execute("COMMIT")  # keep the pending request; the caller records the refusal
                raise
        if not plan.dataset.public:
            limits = policy.limits
            for year in plan.spec.years:
                check_budget(
                    ledger.spent(conn, year, analyst),
                    cost_micro=cost_micro,
                    node_budget_micro=to_micro(limits.epsilon_per_node_per_year),
                    analyst_budget_micro=to_micro(limits.analyst_budget(analyst)),
                    analyst=analyst,
                )
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
            **release(plan, rows, from_micro(cost_micro), policy.limits.publication_threshold),
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
    return _signed(answer_id, body, logged, key, cached=False, charged_micro=cost_micro)


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
) -> Answer:
    """Sign an answer with what this delivery charged (nothing when ``cached``)."""
    payload = answer_payload(body, logged.index, logged.note, from_micro(charged_micro))
    envelope = sign_envelope(payload_type=ANSWER_V1, payload=payload, key=key)
    return Answer(answer_id, body, cached, envelope, logged.index, logged.note)


def _filled(plan: Plan, rows: list[tuple[Any, ...]]) -> list[list[int]]:
    """Aggregates per cell in ``plan.cells`` order; cells with no rows are zeros."""
    width = len(plan.spec.group_by)
    found = {tuple(r[:width]): [int(v or 0) for v in r[width:]] for r in rows}
    return [found.get(cell, [0] * plan.aggregates) for cell in plan.cells]


def release(
    plan: Plan, rows: list[tuple[Any, ...]], epsilon: float, threshold: int
) -> dict[str, Any]:
    """Noisy cells for the plan's measure (exact cells for a public dataset)."""
    values = _filled(plan, rows)
    kind = plan.spec.measure.kind
    groups = [list(cell) for cell in plan.cells]
    if plan.dataset.public:
        return {
            "mechanism": "none (public data)",
            "cells": [
                {"group": g, "value": v[0], **({"denominator": v[1]} if len(v) > 1 else {})}
                for g, v in zip(groups, values, strict=True)
            ],
        }
    if kind in ("count", "sum"):
        noisy = mechanisms.laplace_vector(
            [v[0] for v in values], epsilon=epsilon, sensitivity=plan.sensitivity
        )
        cells = [
            _cell(g, value, noisy.scale, noisy.half_width, threshold if kind == "count" else None)
            for g, value in zip(groups, noisy.values, strict=True)
        ]
        return {"mechanism": noisy.mechanism, "scale": noisy.scale, "cells": cells}
    if kind in ("mean", "rate"):
        # split ε: half for the numerator (sum or matching count), half for the count
        numerator = mechanisms.laplace_vector(
            [v[0] for v in values], epsilon=epsilon / 2, sensitivity=plan.sensitivity
        )
        denominator = mechanisms.laplace_vector(
            [v[1] for v in values], epsilon=epsilon / 2, sensitivity=1
        )
        low, high = plan.bounds if kind == "mean" and plan.bounds else (0, 1)
        cells = []
        for g, num, den in zip(groups, numerator.values, denominator.values, strict=True):
            cells.append(
                {
                    "group": g,
                    **ratio(num, numerator.scale, den, denominator.scale, low, high, threshold),
                    "numerator": {"value": num, "scale": numerator.scale},
                    "denominator": {"value": den, "scale": denominator.scale},
                }
            )
        return {"mechanism": "discrete_laplace ratio", "cells": cells}
    assert kind == "quantile"
    assert plan.spec.measure.q is not None
    cells = []
    per_cell = len(plan.candidates)
    scale = 0.0
    for g, v in zip(groups, values, strict=True):
        below, above = v[0 : 2 * per_cell : 2], v[1 : 2 * per_cell : 2]
        scores, sensitivity = mechanisms.quantile_scores(below, above, plan.spec.measure.q)
        # cells are disjoint: each spends ε on its own rows (parallel composition)
        index, scale = mechanisms.exponential_quantile(
            scores, sensitivity=sensitivity, epsilon=epsilon
        )
        cells.append(
            {"group": g, "value": plan.candidates[index], "display": str(plan.candidates[index])}
        )
    return {
        "mechanism": "exponential mechanism (report noisy max, exponential noise)",
        "scale": scale,
        "cells": cells,
    }


def _cell(
    group: list[Any], value: int, scale: float, half: int, threshold: int | None
) -> dict[str, Any]:
    small = threshold is not None and value < threshold
    return {
        "group": group,
        "value": value,
        "lower": value - half,
        "upper": value + half,
        "display": f"< {threshold}" if small else str(value),
        "suppressed": small,
    }


def ratio(
    num: int, num_scale: float, den: int, den_scale: float, low: float, high: float, threshold: int
) -> dict[str, Any]:
    """A noisy ratio with a ≥95% interval (each part at 97.5%, union bound), clipped to bounds."""
    if den < threshold:
        return {
            "value": None,
            "lower": low,
            "upper": high,
            "display": f"< {threshold}",
            "suppressed": True,
        }
    num_half = mechanisms.half_width(num_scale, alpha=mechanisms.ALPHA / 2)
    den_half = mechanisms.half_width(den_scale, alpha=mechanisms.ALPHA / 2)
    value = min(max(num / den, low), high)
    lows = [(num - num_half) / (den + den_half)]
    highs = [(num + num_half) / (den - den_half)] if den - den_half > 0 else [high]
    if den - den_half > 0:
        lows.append((num - num_half) / (den - den_half))
        highs.append((num + num_half) / (den + den_half))
    return {
        "value": value,
        "lower": min(max(min(lows), low), high),
        "upper": min(max(max(highs), low), high),
        "display": f"{value:.4g}",
        "suppressed": False,
    }
