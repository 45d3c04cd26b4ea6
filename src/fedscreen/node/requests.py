"""A node's handling of a signed query that arrived from the federation.

The node trusts nobody on the path: it verifies the analyst's signature and
role against its own copy of the manifest (the coordinator cannot forge or
alter a query), checks freshness, the coordinator's deadline, that the query
is addressed to it and that the node lies inside the analyst's scope (a city's
analyst asks its own counties only, whatever a coordinator relays), then runs
the engine, which answers each query id once (a replay gets the stored answer
and costs nothing) and signs the answer together with the query's id and
digest. Every refusal — a bad or stale envelope, a passed deadline, a query for
other nodes or from outside the scope, and whatever the engine refuses — is
recorded and logged with a reason ``<code>: <detail>`` (``protocol.refusal``),
and costs nothing. Nothing of an envelope that did not verify is recorded.
"""

from __future__ import annotations

import sqlite3
import time
from typing import NoReturn

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import QUERY_V1, Envelope, verify_envelope
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.node.engine import QueryRequest, answer_query, record_refusal
from fedscreen.node.home import NodeConfig, check_placement
from fedscreen.policy import Policy
from fedscreen.protocol.query import ANY_AGE_MS, FRESHNESS_WINDOW_MS, check_fresh, verify_query
from fedscreen.protocol.refusal import refusal_reason
from fedscreen.protocol.secure import aggregators
from fedscreen.trust.manifest import Manifest, Member
from fedscreen.trust.scope import PROVINCE, describe, node_place, scope_contains


def handle_query(
    config: NodeConfig,
    policy: Policy,
    manifest: Manifest,
    envelope_bytes: bytes,
    *,
    conn: sqlite3.Connection,
    now_ms: int | None = None,
    window_ms: int = FRESHNESS_WINDOW_MS,
    deadline_unix_ms: int | None = None,
    academic_year: str | None = None,
) -> bytes:
    """Answer a signed query; returns the signed answer envelope (JSON bytes).

    ``deadline_unix_ms`` (the coordinator's, 0 or None: none): a query that reaches
    the node when its deadline has passed is refused, not started — its answer
    could not be delivered, and a charge for it would buy nothing.
    ``academic_year`` (the coordinator's pin, "" or None: none): the year a query
    whose spec names no years is answered for, the same at every node.

    Raises QueryRefused (recorded and logged) for anything the node will not answer.
    """
    clock = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        envelope = Envelope.from_json(envelope_bytes)
    except VerificationError:
        _refuse(config, conn, "(unverified)", "", "invalid-query", "not a well-formed envelope")
    try:
        # freshness is checked apart below, to refuse a stale query as "stale"
        query = verify_query(envelope, manifest=manifest, now_ms=clock, window_ms=ANY_AGE_MS)
    except RecursionError:
        _refuse(config, conn, "(unverified)", "", "invalid-query", "nested too deeply")
    except (VerificationError, QueryRefused) as exc:
        revoked = _revoked_signer(envelope, manifest)
        if revoked is not None:
            detail = f"analyst {revoked} is revoked in manifest version {manifest.version}"
            _refuse(config, conn, revoked, "", "revoked", detail)
        # verify_query's words: fixed ones before the signature verified, and after it
        # only what the analyst signed (bounded by refusal_reason)
        detail = f"not a valid analyst query: {exc}"
        _refuse(config, conn, "(unverified)", "", "invalid-query", detail)
    try:
        check_fresh(query, now_ms=clock, window_ms=window_ms)
    except QueryRefused as exc:
        _refuse(config, conn, query.analyst, query.query_id, "stale", str(exc))
    if deadline_unix_ms and clock >= deadline_unix_ms:
        detail = (
            f"the coordinator's deadline for query {query.query_id} passed "
            f"{(clock - deadline_unix_ms) / 1000:.3g} s before the node could start"
        )
        _refuse(config, conn, query.analyst, query.query_id, "deadline-passed", detail)
    if query.nodes and config.node_id not in query.nodes:
        detail = f"query {query.query_id} is not addressed to node {config.node_id}"
        _refuse(config, conn, query.analyst, query.query_id, "not-addressed", detail)
    try:
        # a manifest adopted while serving may have moved this node (pki scope): it must
        # not answer as what its node.toml says until the two agree again
        check_placement(config, manifest)
    except ConfigError as exc:
        _refuse(config, conn, query.analyst, query.query_id, "policy", str(exc))
    scope = manifest.member(query.analyst, role="analyst").scope
    me = _myself(config, manifest)
    if not scope_contains(scope, me):
        detail = (
            f"analyst {query.analyst}'s scope is {describe(scope)}; node {config.node_id} "
            f"({node_place(me)}) lies outside it (manifest version {manifest.version})"
        )
        _refuse(config, conn, query.analyst, query.query_id, "out-of-scope", detail)
    recipients: tuple[tuple[str, bytes], ...] = ()
    if query.spec.secure:
        try:
            pair = aggregators(manifest)
        except QueryRefused as exc:
            _refuse(config, conn, query.analyst, query.query_id, "policy", str(exc))
        recipients = tuple((m, manifest.member(m).signing_key) for m in pair)
    request = QueryRequest(
        analyst=query.analyst,
        spec=query.spec,
        epsilon=query.epsilon,
        accuracy=query.accuracy,
        text=canonical_json(query.to_json()).decode(),
        query_id=query.query_id,
        query_sha256=query.digest,
        academic_year=academic_year or None,
        recipients=recipients,
    )
    answer = answer_query(config, policy, request, conn=conn)
    return answer.envelope.to_json().encode("utf-8")


def _myself(config: NodeConfig, manifest: Manifest) -> Member:
    """This node as the manifest lists it: its place is the authority's word, never the
    node's own configuration. A node the manifest does not list is in no city's or
    county's scope (only a province analyst may ask it)."""
    member = manifest.find(config.node_id)
    if member is not None and member.role == "node":
        return member
    return Member(
        id=config.node_id,
        role="node",
        name=config.name,
        signing_key=b"",
        tls_sha256="",
        scope=PROVINCE,
    )


def _revoked_signer(envelope: Envelope, manifest: Manifest) -> str | None:
    """The id of the revoked analyst whose key the query verifies under, if any.

    Only a signature that verifies counts: anyone can name a revoked analyst, and such
    a claim stays an ``invalid-query``."""
    for member in manifest.members:
        if not (member.revoked and member.role == "analyst"):
            continue
        try:
            verify_envelope(
                envelope,
                expected_payload_type=QUERY_V1,
                trusted_keys={member.key_id: member.signing_key},
            )
        except VerificationError:
            continue
        return member.id
    return None


def _refuse(
    config: NodeConfig, conn: sqlite3.Connection, analyst: str, query: str, code: str, detail: str
) -> NoReturn:
    """Record and log a refusal (it costs nothing), then raise it."""
    reason = refusal_reason(code, detail)
    record_refusal(config, conn, analyst=analyst, query=query, reason=reason)
    raise QueryRefused(reason)
