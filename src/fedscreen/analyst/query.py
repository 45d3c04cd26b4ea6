"""The analyst's side: sign a query, submit it (``submit``, from the gRPC edge), verify a release,
fetch the newest version of a release (``fetch_verified``).

An analyst's home is a member identity (``fedscreen identity init --role analyst``)
issued by the authority. ``verify_release`` trusts nothing but the manifest and the
provincial catalogue fedscreen ships: the release must be signed by the active
coordinator, every node answer in it must verify against its node's key and be
bound to exactly this signed query (its id, its digest, its ε, the one academic
year the release states), use the mechanism the catalogue gives the dataset, and
the provincial cells must be the combination of those answers.

A release fetched later (``fedscreen query --release``) may be a later version, with
answers that came late by file; it comes with the signed query it answers, which must
be this analyst's own, for the id asked (``verify_fetched``), and is then verified as
any release.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedscreen.crypto.envelope import RELEASE_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.protocol.answer import bounded, dataset_public, verify_answer
from fedscreen.protocol.query import (
    ANY_AGE_MS,
    SignedQuery,
    issue_query,
    new_query_id,
    shown_query_id,
    verify_query,
)
from fedscreen.protocol.release import ReleaseBody, check_release, parse_release
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc.client import Fetched, Submitted, fetch_release, submit
from fedscreen.rpc.transport import RpcFailed
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

__all__ = [
    "FetchedRelease",
    "Submitted",
    "VerifiedRelease",
    "fetch_if_kept",
    "fetch_verified",
    "make_query",
    "submit",
    "verify_fetched",
    "verify_release",
]


def make_query(
    home: Path,
    sql: str,
    *,
    epsilon: float | None,
    accuracy: float | None,
    nodes: Sequence[str] = (),
    secure: bool = False,
) -> tuple[SignedQuery, bytes]:
    """Parse ``sql`` and sign it with the analyst identity in ``home`` (``secure``: released
    only as a province total through the two aggregators; ``protocol.secure``)."""
    identity = load_identity(home)
    if identity.role != "analyst":
        raise ConfigError(f"{home} holds a {identity.role} identity, not an analyst's")
    twice = sorted({n for n in nodes if list(nodes).count(n) > 1})
    if twice:
        raise ConfigError(f"--nodes names {', '.join(twice[:10])} more than once")
    query = SignedQuery(
        query_id=new_query_id(),
        analyst=identity.member_id,
        issued_at_ms=int(time.time() * 1000),
        spec=replace(parse_sql(sql), secure=secure),
        epsilon=epsilon,
        accuracy=accuracy,
        nodes=tuple(nodes),
    )
    signed, envelope = issue_query(query, key=identity.signing_key())
    return signed, envelope.to_json().encode("utf-8")


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature, answers and combination were verified."""

    body: dict[str, Any]
    #: the body's typed form
    release: ReleaseBody
    #: node id -> the node's verified answer body (cells with the noise scale each used)
    node_bodies: dict[str, dict[str, Any]]
    #: node id -> the ε the node charged for this very answer (0 when it came from the
    #: node's store)
    charged: dict[str, float | None]


def verify_release(
    envelope: bytes,
    *,
    manifest: Manifest,
    query: SignedQuery,
    answers: Mapping[str, bytes],
) -> VerifiedRelease:
    """Verify a release of ``query`` (as signed: it carries its digest) and the node
    answers it was made of.

    Whether the data are public comes from the provincial catalogue fedscreen ships.
    Anything wrong — a signature, a shape, a number — is a VerificationError, also
    for a release that is well signed but malformed.
    """
    coordinators = manifest.keys(role="coordinator")
    payload = verify_envelope(
        Envelope.from_json(envelope), expected_payload_type=RELEASE_V1, trusted_keys=coordinators
    )
    try:
        body = parse_json(payload)
    except ValueError as exc:
        raise VerificationError(f"malformed release: {bounded(str(exc))}") from None
    release = parse_release(body)
    if not isinstance(body, dict):  # parse_release refuses these; mypy cannot tell
        raise VerificationError("malformed release: a release body is an object")
    if release.query_id != query.query_id:
        raise VerificationError("the release is for another query")
    listed = release.answer_digests()
    if set(listed) != set(answers):
        raise VerificationError("the release lists other answers than those delivered")
    public = dataset_public(query.spec)
    verified = []
    for node_id in sorted(answers):
        if hashlib.sha256(answers[node_id]).hexdigest() != listed[node_id]:
            raise VerificationError(f"{node_id}'s answer is not the one the release names")
        verified.append(
            verify_answer(
                Envelope.from_json(answers[node_id]),
                manifest=manifest,
                node_id=node_id,
                expected_query=query,
                public=public,
                academic_year=release.academic_year,
            )
        )
    check_release(body, query, verified, public=public, manifest=manifest)
    return VerifiedRelease(
        body,
        release,
        {a.node_id: a.body for a in verified},
        {a.node_id: a.charged for a in verified},
    )


@dataclass(frozen=True)
class FetchedRelease:
    """The newest release of one of this analyst's queries, verified, with its bytes."""

    query: SignedQuery
    #: the signed query, the signed release and the answers, verbatim
    query_envelope: bytes
    release_envelope: bytes
    answers: dict[str, bytes]
    verified: VerifiedRelease


def verify_fetched(
    fetched: Fetched, *, manifest: Manifest, analyst: str, query_id: str
) -> FetchedRelease:
    """Verify a fetched release: VerificationError unless the query it came with is a
    query signed by ``analyst`` (any age) with id ``query_id``, and the release verifies
    against it (``verify_release``) and states the version the coordinator said.

    A later version (``release_version`` > 1) is checked on its own only: the release
    it ``supersedes`` is not fetched, so whether it kept every answer of that one is
    not known here. ``report run --include-late`` checks that against the release it
    stored (``report.late.check_later``), and an auditor against the coordinator's log
    (``audit.coordinatorlog``: a version that drops, swaps or adds nothing is refused).
    """
    try:
        query = verify_query(
            Envelope.from_json(fetched.query_envelope),
            manifest=manifest,
            now_ms=0,
            window_ms=ANY_AGE_MS,
        )
    except QueryRefused as exc:  # well signed, malformed: still not a query to trust
        raise VerificationError(f"the fetched query does not verify: {exc}") from None
    if query.analyst != analyst:
        raise VerificationError(
            f"the coordinator returned a query signed by {query.analyst}, not by {analyst}"
        )
    if query.query_id != query_id:
        raise VerificationError(
            f"the coordinator returned query {query.query_id}, not {shown_query_id(query_id)}"
        )
    verified = verify_release(
        fetched.release_envelope, manifest=manifest, query=query, answers=fetched.answers
    )
    if verified.release.release_version != fetched.release_version:
        raise VerificationError(
            f"the coordinator calls it version {fetched.release_version}, the signed release "
            f"says version {verified.release.release_version}"
        )
    return FetchedRelease(
        query, fetched.query_envelope, fetched.release_envelope, dict(fetched.answers), verified
    )


async def fetch_verified(
    home: Path, coordinator: str, query_id: str, *, coordinator_id: str | None = None
) -> FetchedRelease:
    """Fetch the newest release of ``query_id`` (one of the analyst in ``home``'s own
    queries) and verify it against the home's manifest (``verify_fetched``); RpcFailed
    (NOT_FOUND) if the coordinator keeps none for this analyst."""
    identity = load_identity(home)
    if identity.role != "analyst":
        raise ConfigError(f"{home} holds a {identity.role} identity, not an analyst's")
    fetched = await fetch_release(home, coordinator, query_id, coordinator_id=coordinator_id)
    return verify_fetched(
        fetched, manifest=identity.manifest(), analyst=identity.member_id, query_id=query_id
    )


async def fetch_if_kept(
    home: Path, coordinator: str, query_id: str, *, coordinator_id: str | None = None
) -> FetchedRelease | None:
    """``fetch_verified``, or None if the coordinator keeps no release of ``query_id`` for
    this analyst (one released before it kept its releases, or by another coordinator)."""
    try:
        return await fetch_verified(home, coordinator, query_id, coordinator_id=coordinator_id)
    except RpcFailed as exc:
        if exc.code.name == "NOT_FOUND":  # (grpc itself stays at the edge)
            return None
        raise
