"""Answers bound to their query, and one academic year per query, on a real federation (issue 11).

The federation of ``test_federation.py`` (its builder and helpers, reused): a real
coordinator and three real node processes over mutual TLS. The analyst asks three
questions; then the coordinator turns dishonest — stopped, its home used in
process with its own signing key — and presents the answers to the first question
as the answers to another query id, to the same question at another ε and to
another question. Its own release code makes those nodes missing; the analyst's
``verify_release`` and ``fedscreen query`` refuse the forged releases (a fake
coordinator server with the real coordinator's certificate serves them); and
``audit verify`` of a log holding one exits 2. Last, a query without a year on
nodes that hold two years each is answered for one year by every node.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_federation import (
    EPSILON,
    NODES,
    PROCESS_TIMEOUT_S,
    READY_TIMEOUT_S,
    SQL,
    STUDENTS,
    YEAR,
    Federation,
    _cli,
    _env,
    _query,
    _submit,
    _verified,
    run,
    running_federation,
)

from fedscreen._util.canonical import canonical_json
from fedscreen.analyst.query import make_query, verify_release
from fedscreen.coordinator.core import Coordinator
from fedscreen.crypto.envelope import RELEASE_V1, Envelope, sign_envelope
from fedscreen.errors import VerificationError
from fedscreen.node.home import load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.protocol.answer import VerifiedAnswer, verify_answer
from fedscreen.protocol.query import SignedQuery, verify_query
from fedscreen.protocol.release import release_body
from fedscreen.rpc import serde, transport
from fedscreen.rpc.client import Submitted
from fedscreen.synth import generate, write_export
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

OTHER_SQL = SQL.replace("grade_band, sex", "sex")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("binding")) as federation:
        yield federation


def _ask(fed: Federation, sql: str, epsilon: float) -> tuple[SignedQuery, Submitted]:
    query, envelope = make_query(fed.analyst.home, sql, epsilon=epsilon, accuracy=None)

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    submitted = run(scenario)
    assert _verified(fed, query, submitted)["answered"] == sorted(NODES)
    return query, submitted


def _forged(
    coordinator: Coordinator, target: SignedQuery, source: SignedQuery, answers: dict[str, bytes]
) -> bytes:
    """A release of ``target`` made of the answers to ``source``, signed by the coordinator."""
    verified: dict[str, tuple[bytes, VerifiedAnswer]] = {}
    for node, raw in answers.items():
        answer = verify_answer(
            Envelope.from_json(raw),
            manifest=coordinator.manifest,
            node_id=node,
            expected_query=source,
            public=False,
        )
        verified[node] = (raw, answer)
    body = release_body(
        coordinator_id=coordinator.member_id, query=target, answers=verified, missing=[],
        targeted=list(NODES), threshold=coordinator.policy.limits.publication_threshold,
        public=False,
    )  # fmt: skip
    return (
        sign_envelope(payload_type=RELEASE_V1, payload=canonical_json(body), key=coordinator.key)
        .to_json()
        .encode()
    )


def _stop_coordinator(fed: Federation) -> dict[str, int]:
    """Stop the coordinator (SIGTERM); each node's session count, to see it redial."""
    assert fed.coordinator is not None
    sessions = {n: fed.session_of(n) for n in NODES}
    fed.coordinator.terminate()
    fed.coordinator.wait(timeout=PROCESS_TIMEOUT_S)
    return sessions


def _restart_coordinator(fed: Federation, sessions: dict[str, int]) -> None:
    """Start it again at the same address and wait (bounded) until every node redialled."""
    fed.start_coordinator(listen=fed.address)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while any(fed.session_of(n) <= sessions[n] for n in NODES):
        assert time.monotonic() < deadline, "the nodes did not come back"
        time.sleep(0.1)


def _audit(fed: Federation, coordinator_home: Path, name: str) -> Any:
    bundle = fed.root / f"{name}.bundle"
    exported = _cli("audit", "export", "--home", str(coordinator_home), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    return _cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"))


def test_an_answer_moved_to_another_query_is_rejected_everywhere(fed: Federation) -> None:
    first, answered = _ask(fed, SQL, EPSILON)
    # the very question again under a new id (the nodes give their stored answers, bound
    # to the new id), the same question at another ε, and another question
    again, _ = _ask(fed, SQL, EPSILON)
    other_eps, _ = _ask(fed, SQL, 2 * EPSILON)
    other_sql, _ = _ask(fed, OTHER_SQL, EPSILON)
    targets = {"another query id": again, "another ε": other_eps, "another question": other_sql}
    sessions = _stop_coordinator(fed)
    try:
        coordinator = Coordinator.open(fed.coordinator_home)
        try:
            # at the coordinator, on receipt: a resubmission of ``again`` gets the answers to
            # ``first``: every node is missing, with the reason, and the release goes on
            envelope = _request_envelope(coordinator, again.query_id)
            accepted = coordinator.accept(envelope, now_ms=again.issued_at_ms)
            release = coordinator.release(accepted, answered.answers, missing=[])
            assert release.body["answered"] == []
            for node in NODES:
                assert release.body["missing_reasons"][node] == (
                    f"its answer did not verify: the answer from {node} answers another query id"
                )
            forged = {
                name: _forged(coordinator, target, first, answered.answers)
                for name, target in targets.items()
            }
        finally:
            coordinator.close()
        # the analyst's verify refuses each forged release
        manifest = fed.analyst.manifest()
        for name, target in targets.items():
            with pytest.raises(VerificationError, match="another query id"):
                verify_release(
                    forged[name], manifest=manifest, query=target, answers=answered.answers
                )
        # the auditor: a log holding the forged release of ``other_eps`` does not verify
        dishonest = fed.root / "dishonest-coordinator"
        shutil.copytree(fed.coordinator_home, dishonest)
        coordinator = Coordinator.open(dishonest)
        try:
            request = _request_envelope(coordinator, other_eps.query_id)
            coordinator.accept(request, now_ms=other_eps.issued_at_ms)
            for node in sorted(answered.answers):
                coordinator.record(
                    {"kind": "answer", "query_id": other_eps.query_id, "node": node,
                     "envelope": answered.answers[node].decode()}
                )  # fmt: skip
            coordinator.record(
                {"kind": "release", "query_id": other_eps.query_id,
                 "envelope": forged["another ε"].decode()}
            )  # fmt: skip
        finally:
            coordinator.close()
        audited = _audit(fed, dishonest, "dishonest")
        assert audited.returncode == 2, (audited.stdout, audited.stderr)
        assert "answers another query id" in audited.stderr
        assert "Traceback" not in audited.stderr
        honest = _audit(fed, fed.coordinator_home, "honest")
        assert honest.returncode == 0, (honest.stdout, honest.stderr)
    finally:
        _restart_coordinator(fed, sessions)


def _request_envelope(coordinator: Coordinator, query_id: str) -> bytes:
    """The analyst's signed query as the coordinator logged it."""
    for entry in coordinator.export().entries:
        payload = json.loads(_payload(entry))
        if payload.get("kind") == "request" and payload.get("query_id") == query_id:
            return str(payload["envelope"]).encode()
    raise AssertionError(f"no request {query_id} in the log")


def _payload(entry: bytes) -> bytes:
    doc = json.loads(entry)  # a signed envelope, or an answer entry logged bare
    return base64.b64decode(doc["payload"]) if "payloadType" in doc else entry


class _DishonestAnalystService(pb_grpc.AnalystServicer):
    """A coordinator that answers every query with a release it makes up (real key, real TLS)."""

    def __init__(self, coordinator: Coordinator, make: Any) -> None:
        self.coordinator = coordinator
        self.make = make

    async def Submit(
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitResponse:
        query = verify_query(
            Envelope.from_json(request.query_envelope),
            manifest=self.coordinator.manifest,
            now_ms=0,
            window_ms=2**62,
        )
        release, answers = self.make(query)
        return serde.submit_response(release, answers, [])


def test_fedscreen_query_refuses_a_forged_or_malformed_release(fed: Federation) -> None:
    first, answered = _ask(fed, SQL, EPSILON)
    copy = fed.root / "fake-coordinator"
    shutil.copytree(fed.coordinator_home, copy)
    fake = Coordinator.open(copy)  # the coordinator's identity and key, another process
    moved = {"kind": "moved"}

    def make(query: SignedQuery) -> tuple[bytes, dict[str, bytes]]:
        if moved["kind"] == "moved":
            return _forged(fake, query, first, answered.answers), answered.answers
        body = {"version": 1, "query_id": query.query_id, "answers": "none", "province": 7}
        signed = sign_envelope(payload_type=RELEASE_V1, payload=canonical_json(body), key=fake.key)
        return signed.to_json().encode(), {}

    async def scenario() -> list[tuple[int, str, str]]:
        server = transport.server()
        pb_grpc.add_AnalystServicer_to_server(_DishonestAnalystService(fake, make), server)
        port = transport.add_secure_port(server, fake.identity, "127.0.0.1:0")
        await server.start()
        results = []
        try:
            for kind in ("moved", "malformed"):
                moved["kind"] = kind
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "fedscreen.cli.main", "query",
                    "--home", str(fed.analyst.home), "--coordinator", f"127.0.0.1:{port}",
                    "--epsilon", str(EPSILON), SQL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT_S)
                results.append((proc.returncode or 0, out.decode(), err.decode()))
        finally:
            await server.stop(grace=None)
        return results

    try:
        (moved_code, moved_out, moved_err), (bad_code, bad_out, bad_err) = run(scenario)
    finally:
        fake.close()
    assert moved_code != 0
    assert "answers another query id" in moved_err
    assert "Province" not in moved_out
    assert bad_code != 0
    assert "malformed release" in bad_err
    assert "Province" not in bad_out
    for err in (moved_err, bad_err):
        assert "Traceback" not in err


def test_a_query_without_a_year_is_answered_for_one_year_by_every_node(fed: Federation) -> None:
    # every node holds two years; the first node's newest is a year the others lack
    for n, node in enumerate(NODES):
        extra = "2025-2026" if n == 0 else "2023-2024"
        fed.kill_node(node)
        export = fed.root / f"export-{node}-{extra}"
        write_export(generate(node, STUDENTS, extra, seed=10 + n), export)
        _, rejected = ingest_paths(load_config(fed.node_home(node)), [export])
        assert not rejected, rejected
        fed.start_node(node)
    sql = "SELECT sex, COUNT(*) FROM screenings WHERE phq9_total >= 10 GROUP BY sex"
    query, envelope = _query(fed, sql)

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    submitted = run(scenario)
    body = verify_release(
        submitted.release_envelope, manifest=fed.manifest, query=query, answers=submitted.answers
    ).body
    # most nodes' newest year, for every node (the first node's newer year is not used)
    assert body["academic_year"] == YEAR
    assert body["answered"] == sorted(NODES)
    for node, raw in submitted.answers.items():
        answer = verify_answer(
            Envelope.from_json(raw),
            manifest=fed.manifest,
            node_id=node,
            expected_query=query,
            public=False,
            academic_year=YEAR,
        )
        assert answer.answer.query.years == (YEAR,)
    table = _cli(
        "query", "--home", str(fed.analyst.home), "--coordinator", fed.address,
        "--epsilon", str(EPSILON), sql,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert f"count over screenings, {YEAR};" in table.stdout
    # each node still answers a query naming its other year for that year
    named = sql.replace("WHERE", "WHERE academic_year = '2023-2024' AND")
    query, envelope = _query(fed, named, nodes=NODES[1:])

    async def older() -> Submitted:
        return await _submit(fed, envelope)

    body = _verified(fed, query, run(older))
    assert body["academic_year"] is None
    assert body["answered"] == sorted(NODES[1:])
    # the auditor agrees
    audited = _audit(fed, fed.coordinator_home, "years")
    assert audited.returncode == 0, (audited.stdout, audited.stderr)
