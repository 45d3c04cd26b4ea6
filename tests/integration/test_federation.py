"""The federation end to end: a real coordinator and three real nodes, each its own process.

Everything is real: ``fedscreen coordinator serve`` and ``fedscreen node serve``
processes on 127.0.0.1 (the coordinator picks its port and writes it to a ready
file), mutual TLS with the federation's CA, SQLite files, synthetic screenings.
The analyst, auditor and intruders are in-process ``grpc.aio`` clients, each
scenario in its own ``asyncio.run`` bounded by :data:`SCENARIO_TIMEOUT_S`.

The module's tests share one federation and run in file order; a test that
restarts a node leaves it running normally again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from logentries import verified_entries

from fedscreen.analyst.query import make_query, verify_release
from fedscreen.coordinator.core import init_coordinator
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused
from fedscreen.node import store
from fedscreen.node.agent import NodeLimits, backoff_ms
from fedscreen.node.home import init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.requests import handle_query
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.query import SignedQuery, new_query_id, sign_query, verify_query
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc import transport
from fedscreen.rpc.client import Submitted, submit
from fedscreen.rpc.transport import RpcFailed
from fedscreen.synth import generate, write_export
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import parse_and_verify_note
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED
from fedscreen.trust import authority
from fedscreen.trust.identity import (
    Identity,
    create_identity,
    issue_here,
    load_identity,
    update_manifest,
)
from fedscreen.trust.manifest import Manifest
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

SRC = Path(__file__).resolve().parents[2] / "src"
CLI = [sys.executable, "-m", "fedscreen.cli.main"]
TESTNODE = Path(__file__).resolve().parents[1] / "testnode.py"
YEAR = "2024-2025"
COORDINATOR = "coordinator"
NODES = ("130104", "130105", "130107")
ANALYST = "alice"
AUDITOR = "auditor-1"
#: synthetic students per node
STUDENTS = 400
SQL = (
    "SELECT grade_band, sex, COUNT(*) FROM screenings "
    f"WHERE academic_year = '{YEAR}' AND phq9_total >= 10 GROUP BY grade_band, sex"
)
EPSILON = 0.1
#: bound on waiting for a process to be ready (s)
READY_TIMEOUT_S = 30.0
#: bound on one in-process scenario (s)
SCENARIO_TIMEOUT_S = 30.0
#: bound on one CLI run (s)
PROCESS_TIMEOUT_S = 30.0
#: how long a stalling node holds its answer back (ms)
STALL_MS = 2_500

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """One async scenario in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)

    return asyncio.run(bounded())


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), path) if p)}
    env.update(extra)
    return env


def wait_until(what: str, done: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> float:
    """Wait (bounded, looking every 50 ms) until ``done()``; returns the seconds it took."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The JSON a process writes to its ready file, once written (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")


@dataclass
class Federation:
    """Homes, identities and the running processes of the test federation."""

    root: Path
    auth: Path
    manifest: Manifest
    coordinator_home: Path
    analyst: Identity
    auditor: Identity
    #: "alice" again, but issued by another federation's CA
    outsider: Identity
    address: str = ""
    coordinator: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ready_files: dict[str, Path] = field(default_factory=dict)
    started: int = 0

    @property
    def coordinator_log(self) -> Path:
        return self.root / "coordinator.log"

    def node_home(self, node_id: str) -> Path:
        return self.root / node_id

    def start_coordinator(self, listen: str = "127.0.0.1:0") -> None:
        ready = self.root / "coordinator.ready"
        ready.unlink(missing_ok=True)
        with self.coordinator_log.open("ab") as log:
            self.coordinator = subprocess.Popen(
                [*CLI, "coordinator", "serve", "--home", str(self.coordinator_home),
                 "--listen", listen, "--ready-file", str(ready)],
                stdout=log, stderr=subprocess.STDOUT, env=_env(),
            )  # fmt: skip
        self.address = str(_wait_for_file(ready, self.coordinator, self.coordinator_log)["address"])

    def session_of(self, node_id: str) -> int:
        """How many sessions the node's current process has had welcomed."""
        return int(json.loads(self.ready_files[node_id].read_text(encoding="utf-8"))["session"])

    def start_node(self, node_id: str, *, delay_ms: int = 0, skew_ms: int = 0) -> None:
        """Start a node process and wait until the coordinator has welcomed it."""
        self.started += 1
        ready = self.root / f"{node_id}.{self.started}.ready"
        # an answer delay or a clock skew is injected by tests/testnode.py, never read from
        # the environment
        serve = [*CLI, "node", "serve"]
        if delay_ms or skew_ms:
            serve = [sys.executable, str(TESTNODE), str(delay_ms), str(skew_ms)]
        log_path = self.root / f"{node_id}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*serve, "--home", str(self.node_home(node_id)),
                 "--coordinator", self.address, "--ready-file", str(ready)],
                stdout=log, stderr=subprocess.STDOUT, env=_env(),
            )  # fmt: skip
        self.nodes[node_id] = proc
        self.ready_files[node_id] = ready
        _wait_for_file(ready, proc, log_path)

    def kill_node(self, node_id: str) -> None:
        """SIGKILL: no goodbye on the stream, as when a machine dies."""
        proc = self.nodes.pop(node_id)
        proc.kill()
        proc.wait(timeout=READY_TIMEOUT_S)

    def restart_node(self, node_id: str, *, delay_ms: int = 0, skew_ms: int = 0) -> None:
        self.kill_node(node_id)
        self.start_node(node_id, delay_ms=delay_ms, skew_ms=skew_ms)

    def refusals(self, node_id: str) -> int:
        conn = self.db(node_id)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM query_refusal").fetchone()[0])
        finally:
            conn.close()

    def stop_all(self) -> None:
        procs = [*self.nodes.values(), *([self.coordinator] if self.coordinator else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.nodes.clear()

    def db(self, node_id: str) -> sqlite3.Connection:
        return store.connect(load_config(self.node_home(node_id)).database)

    def charges(self, node_id: str) -> int:
        conn = self.db(node_id)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM ledger_charge").fetchone()[0])
        finally:
            conn.close()

    def answered(self, node_id: str, query_id: str) -> bool:
        conn = self.db(node_id)
        try:
            row = conn.execute(
                "SELECT 1 FROM query_request WHERE query_id = ?", (query_id,)
            ).fetchone()
        finally:
            conn.close()
        return row is not None


def _issue(auth: Path, home: Path) -> Identity:
    issue_here(auth, home)
    return load_identity(home)


@contextlib.contextmanager
def running_federation(root: Path) -> Iterator[Federation]:
    """The test federation in ``root``, its coordinator and nodes running; stopped on exit."""
    auth = root / "auth"
    authority.init_authority(auth, federation="河北省")
    authority.init_authority(root / "other-auth", federation="another federation")
    init_coordinator(root / "coord", member_id=COORDINATOR, name="河北省协调服务")
    _issue(auth, root / "coord")
    for n, node_id in enumerate(NODES):
        config = init_home(root / node_id, node_id=node_id, name=f"县 {node_id}")
        _issue(auth, root / node_id)
        write_export(generate(node_id, STUDENTS, YEAR, seed=n + 1), root / f"export-{node_id}")
        _, rejected = ingest_paths(config, [root / f"export-{node_id}"])
        assert not rejected, rejected
    create_identity(root / ANALYST, member_id=ANALYST, role="analyst", name="Alice")
    create_identity(root / AUDITOR, member_id=AUDITOR, role="auditor", name="稽核")
    outsider = create_identity(root / "outsider", member_id=ANALYST, role="analyst", name="A")
    for home in (root / ANALYST, root / AUDITOR):
        _issue(auth, home)
    _issue(root / "other-auth", root / "outsider")
    # everyone holds the final manifest, which lists every member
    text = authority.manifest_text(auth)
    for home in (root / "coord", *(root / n for n in NODES), root / ANALYST, root / AUDITOR):
        update_manifest(home, text)
    federation = Federation(
        root=root,
        auth=auth,
        manifest=authority.current_manifest(auth),
        coordinator_home=root / "coord",
        analyst=load_identity(root / ANALYST),
        auditor=load_identity(root / AUDITOR),
        outsider=outsider,
    )
    try:
        federation.start_coordinator()
        for node_id in NODES:
            federation.start_node(node_id)
        yield federation
    finally:
        federation.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("federation")) as federation:
        yield federation


def _query(
    fed: Federation, sql: str = SQL, *, nodes: tuple[str, ...] = ()
) -> tuple[SignedQuery, bytes]:
    return make_query(fed.analyst.home, sql, epsilon=EPSILON, accuracy=None, nodes=nodes)


async def _submit(fed: Federation, envelope: bytes, *, deadline_ms: int = 10_000) -> Submitted:
    return await submit(fed.analyst.home, fed.address, envelope, deadline_ms=deadline_ms)


def _verified(fed: Federation, query: SignedQuery, submitted: Submitted) -> dict[str, Any]:
    return verify_release(
        submitted.release_envelope, manifest=fed.manifest, query=query, answers=submitted.answers
    ).body


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )


# ---------------------------------------------------------------- queries


def test_query_end_to_end_combines_every_node(fed: Federation) -> None:
    done = _cli(
        "query", "--home", str(fed.analyst.home), "--coordinator", fed.address,
        "--epsilon", str(EPSILON), "--format", "json", SQL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["verified"] is True
    body = output["release"]
    assert body["answered"] == sorted(NODES)
    assert body["missing"] == []
    assert body["coverage"] == 1.0
    assert [a["epsilon"] for a in body["answers"]] == [EPSILON] * len(NODES)
    # counts add up: each provincial cell is the sum of the nodes' noisy cells
    for i, cell in enumerate(body["province"]):
        assert cell["nodes"] == len(NODES)
        assert cell["value"] == sum(body["per_node"][n][i]["value"] for n in NODES)
        assert cell["lower"] <= cell["value"] <= cell["upper"]

    table = _cli(
        "query", "--home", str(fed.analyst.home), "--coordinator", fed.address,
        "--epsilon", str(EPSILON), "--nodes", ",".join(NODES[:2]), SQL,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "answered: 2 of 2 nodes (100% of the nodes asked" in table.stdout
    assert "Province (combined)" in table.stdout
    assert NODES[2] not in table.stdout


def test_replayed_query_gets_the_stored_answer_without_a_second_charge(fed: Federation) -> None:
    # a question not asked before (an identical one would be served from the store anyway)
    query, envelope = _query(fed, SQL.replace(">= 10", ">= 15"))
    before = {n: fed.charges(n) for n in NODES}

    async def scenario() -> tuple[Submitted, Submitted]:
        first = await _submit(fed, envelope)
        return first, await _submit(fed, envelope)

    first, replay = run(scenario)
    assert {n: fed.charges(n) for n in NODES} == {n: before[n] + 1 for n in NODES}
    bodies = []
    for submitted in (first, replay):
        body = _verified(fed, query, submitted)
        assert body["missing"] == []
        bodies.append(body)
    # the same noisy values, not a fresh draw an analyst could average
    assert bodies[0]["per_node"] == bodies[1]["per_node"]
    assert bodies[0]["province"] == bodies[1]["province"]


def test_stalled_node_is_missing_and_its_late_answer_is_discarded(fed: Federation) -> None:
    slow = NODES[2]
    fed.restart_node(slow, delay_ms=STALL_MS)
    query, envelope = _query(fed)

    async def scenario() -> tuple[Submitted, float]:
        started = time.monotonic()
        submitted = await _submit(fed, envelope, deadline_ms=1_000)
        return submitted, time.monotonic() - started

    submitted, elapsed = run(scenario)
    assert elapsed < STALL_MS / 1000
    assert submitted.missing == (slow,)
    body = _verified(fed, query, submitted)
    assert body["missing"] == [slow]
    assert body["missing_reasons"] == {slow: "no answer before the deadline"}
    assert body["answered"] == sorted(NODES[:2])
    assert body["coverage"] == pytest.approx(2 / 3)
    # the slow node did answer (and charged), but after the release: it is discarded
    deadline = time.monotonic() + READY_TIMEOUT_S
    discarded = f"discarded a late or unrequested reply from node {slow} for query {query.query_id}"
    while discarded not in fed.coordinator_log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, "the late answer never reached the coordinator"
        time.sleep(0.1)
    assert fed.answered(slow, query.query_id)
    charged = fed.charges(slow)

    # restarted without the stall, the node reconnects; asked again, it answers from its store
    fed.restart_node(slow)

    async def again() -> Submitted:
        return await _submit(fed, envelope)

    replay = run(again)
    assert replay.missing == ()
    assert _verified(fed, query, replay)["answered"] == sorted(NODES)
    assert fed.charges(slow) == charged


def test_node_killed_mid_query_gives_a_partial_release(fed: Federation) -> None:
    victim = NODES[0]
    # the victim answers (and charges) at once but holds the answer back long enough to die
    fed.restart_node(victim, delay_ms=60_000)
    query, envelope = _query(fed)

    async def scenario() -> tuple[Submitted, float]:
        started = time.monotonic()
        pending = asyncio.create_task(_submit(fed, envelope, deadline_ms=20_000))
        while not fed.answered(victim, query.query_id):
            assert not pending.done()
            await asyncio.sleep(0.05)
        fed.kill_node(victim)
        submitted = await pending
        return submitted, time.monotonic() - started

    submitted, elapsed = run(scenario)
    # released when the link dropped, not at the 20 s deadline
    assert elapsed < 10
    assert submitted.missing == (victim,)
    body = _verified(fed, query, submitted)
    assert body["answered"] == sorted(NODES[1:])
    assert body["missing"] == [victim]
    assert body["missing_reasons"] == {victim: "link lost"}

    fed.start_node(victim)
    fresh, fresh_envelope = _query(fed)

    async def after() -> Submitted:
        return await _submit(fed, fresh_envelope)

    assert _verified(fed, fresh, run(after))["answered"] == sorted(NODES)


def test_nodes_redial_a_restarted_coordinator(fed: Federation) -> None:
    assert fed.coordinator is not None
    sessions = {n: fed.session_of(n) for n in NODES}
    # a clean stop (SIGTERM) ends every node stream; the nodes keep redialling while it is down
    fed.coordinator.send_signal(signal.SIGTERM)
    assert fed.coordinator.wait(timeout=READY_TIMEOUT_S) == 0
    time.sleep(1.0)
    fed.start_coordinator(listen=fed.address)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while any(fed.session_of(n) <= sessions[n] for n in NODES):
        assert time.monotonic() < deadline, "the nodes did not come back"
        time.sleep(0.1)
    query, envelope = _query(fed)

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    assert _verified(fed, query, run(scenario))["answered"] == sorted(NODES)


def test_node_with_a_skewed_clock_shows_its_offset_and_says_why_it_refuses(
    fed: Federation,
) -> None:
    skewed = NODES[1]
    # 20 s ahead: more than the coordinator's default wait (10 s), within the tolerance
    # (60 s). The node reads the coordinator's deadline through its offset and answers.
    fed.restart_node(skewed, skew_ms=20_000)
    query, envelope = _query(fed)

    async def ask(envelope: bytes = envelope) -> Submitted:
        return await _submit(fed, envelope, deadline_ms=0)

    assert _verified(fed, query, run(ask))["answered"] == sorted(NODES)

    # 120 s ahead: outside the tolerance (but inside the 5 min freshness window, so only
    # the clock check can refuse it). Both ends see the offset; the refusal says why.
    fed.restart_node(skewed, skew_ms=120_000)
    coordinator = _cli(
        "coordinator", "status", "--home", str(fed.coordinator_home), "--coordinator", fed.address
    )
    assert coordinator.returncode == 1, coordinator.stdout + coordinator.stderr
    row = next(line for line in coordinator.stdout.splitlines() if line.startswith(skewed))
    assert " connected " in row, coordinator.stdout
    assert "+120." in row, coordinator.stdout
    assert "(ahead) !" in row, coordinator.stdout
    other = next(line for line in coordinator.stdout.splitlines() if line.startswith(NODES[0]))
    assert "!" not in other, coordinator.stdout
    assert f" county county:{NODES[0]} " in other, coordinator.stdout  # its kind and place
    assert "s ago" in other, coordinator.stdout  # its newest budget statement
    node = _cli("node", "status", "--home", str(fed.node_home(skewed)))
    assert node.returncode == 0, node.stderr
    assert "clock offset +120." in node.stdout
    assert "REFUSING EVERY QUERY" in node.stdout
    offset = json.loads(fed.ready_files[skewed].read_text(encoding="utf-8"))["clock_offset_ms"]
    assert 119_000 <= offset <= 121_000

    refusals = fed.refusals(skewed)
    query, envelope = _query(fed)
    body = _verified(fed, query, run(lambda: ask(envelope)))
    assert body["missing"] == [skewed]
    reason = body["missing_reasons"][skewed]
    assert reason.startswith("refused: stale: clock offset +120."), reason
    assert "exceeds the tolerance of ±60 s" in reason
    # recorded in the node's own log, not only sent
    assert fed.refusals(skewed) == refusals + 1
    node_log = (fed.root / f"{skewed}.log").read_text(encoding="utf-8")
    assert "EVERY QUERY WILL BE REFUSED" in node_log
    assert f"node {skewed}: clock offset +120." in fed.coordinator_log.read_text(encoding="utf-8")

    fed.restart_node(skewed)
    fresh, fresh_envelope = _query(fed)
    assert _verified(fed, fresh, run(lambda: ask(fresh_envelope)))["answered"] == sorted(NODES)


def test_backoff_grows_with_jitter_and_stays_bounded() -> None:
    limits = NodeLimits(backoff_initial_ms=500, backoff_max_ms=30_000)
    for attempt in range(40):
        ceiling = min(30_000, 500 * 2**attempt)
        delays = {backoff_ms(attempt, limits=limits) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        if attempt >= 3:
            assert len(delays) > 1  # jittered, so nodes restarted together spread out


# ---------------------------------------------------------------- who may connect


async def _submit_with(credentials: grpc.ChannelCredentials, address: str) -> None:
    options = [("grpc.ssl_target_name_override", COORDINATOR)]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        with transport.rpc_errors("submit"):
            await pb_grpc.AnalystStub(channel).Submit(pb.SubmitRequest(), timeout=5)


def _failure(scenario: Callable[[], Awaitable[Any]]) -> RpcFailed:
    async def expect() -> RpcFailed:
        with pytest.raises(RpcFailed) as info:
            await scenario()
        return info.value

    return run(expect)


def test_client_without_a_certificate_is_refused(fed: Federation) -> None:
    ca = fed.analyst.tls_files()[2]
    err = _failure(lambda: _submit_with(grpc.ssl_channel_credentials(ca), fed.address))
    assert err.code is grpc.StatusCode.UNAVAILABLE


def test_client_with_another_federations_certificate_is_refused(fed: Federation) -> None:
    cert, key, _ = fed.outsider.tls_files()
    ca = fed.analyst.tls_files()[2]
    credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    assert _failure(lambda: _submit_with(credentials, fed.address)).code is (
        grpc.StatusCode.UNAVAILABLE
    )


def test_members_in_the_wrong_role_are_refused(fed: Federation) -> None:
    node = load_identity(fed.node_home(NODES[0]))
    _, envelope = _query(fed)

    async def node_submits() -> None:
        await submit(node.home, fed.address, envelope)

    async def auditor_submits() -> None:
        await submit(fed.auditor.home, fed.address, envelope)

    async def analyst_opens_a_node_link() -> None:
        # no Hello: the server refuses on the certificate alone, and a write racing that
        # refusal would make the gRPC client report INTERNAL instead of its status
        await _hello_as(fed.analyst, fed.address, None)

    async def node_reads_the_audit_log() -> None:
        async with transport.channel(node, fed.address, peer_id=COORDINATOR) as channel:
            with transport.rpc_errors("checkpoint"):
                await pb_grpc.AuditStub(channel).GetCheckpoint(pb.CheckpointRequest(), timeout=5)

    for scenario in (node_submits, auditor_submits, analyst_opens_a_node_link,
                     node_reads_the_audit_log):  # fmt: skip
        assert _failure(scenario).code is grpc.StatusCode.PERMISSION_DENIED, scenario.__name__


def test_node_cannot_introduce_itself_as_another_node(fed: Federation) -> None:
    node = load_identity(fed.node_home(NODES[0]))

    async def impersonate() -> None:
        await _hello_as(node, fed.address, NODES[1])

    assert _failure(impersonate).code is grpc.StatusCode.INVALID_ARGUMENT


async def _hello_as(identity: Identity, address: str, node_id: str | None) -> None:
    """Open a node link as ``identity`` and introduce itself as ``node_id`` (None: say nothing)."""
    async with transport.channel(identity, address, peer_id=COORDINATOR) as channel:
        # write/read rather than a request iterator: a request iterator still running
        # when the call fails makes gRPC report INTERNAL instead of the server's status
        call = pb_grpc.NodeLinkStub(channel).Connect(timeout=5)
        try:
            if node_id is not None:
                await call.write(pb.NodeMessage(hello=pb.Hello(node_id=node_id)))
                await call.done_writing()
            await call.read()
        except grpc.RpcError:
            pass  # the write or the read may be the one that sees the refusal
        # the call's final status is the server's verdict, whichever step noticed it first
        code = await call.code()
        if code is not grpc.StatusCode.OK:
            raise RpcFailed(code, await call.details() or "", what="connect")
            await call.read()


def test_query_signed_by_a_non_analyst_is_refused_by_coordinator_and_node(
    fed: Federation,
) -> None:
    for signer_home in (fed.node_home(NODES[1]), fed.auditor.home):
        signer = load_identity(signer_home)
        forged = SignedQuery(
            query_id=new_query_id(),
            analyst=signer.member_id,
            issued_at_ms=int(time.time() * 1000),
            spec=parse_sql(SQL),
            epsilon=EPSILON,
            accuracy=None,
            nodes=(),
        )
        envelope = sign_query(forged, key=signer.signing_key()).to_json().encode()

        async def relay(envelope: bytes = envelope) -> None:
            await _submit(fed, envelope)

        # the coordinator refuses it early ...
        assert _failure(relay).code is grpc.StatusCode.UNAUTHENTICATED
        # ... and a node given it anyway (as a dishonest coordinator would) refuses it too
        node_id = NODES[1]
        config = load_config(fed.node_home(node_id))
        conn = store.connect(config.database)
        try:
            charges = fed.charges(node_id)
            refusals = conn.execute("SELECT COUNT(*) FROM query_refusal").fetchone()[0]
            node_manifest = load_identity(config.home).manifest()
            with pytest.raises(QueryRefused, match="not a valid analyst query"):
                handle_query(config, config.policy(), node_manifest, envelope, conn=conn)
            assert conn.execute("SELECT COUNT(*) FROM query_refusal").fetchone()[0] == refusals + 1
            assert fed.charges(node_id) == charges
        finally:
            conn.close()


def test_health_reports_serving(fed: Federation) -> None:
    async def scenario() -> list[int]:
        async with transport.channel(fed.auditor, fed.address, peer_id=COORDINATOR) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return [
                (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
                for name in (
                    "",
                    "fedscreen.v1.NodeLink",
                    "fedscreen.v1.Analyst",
                    "fedscreen.v1.Audit",
                )
            ]

    assert run(scenario) == [health_pb2.HealthCheckResponse.SERVING] * 4


# ---------------------------------------------------------------- logs


def test_audit_service_serves_a_verifiable_log(fed: Federation) -> None:
    coordinator = fed.manifest.member(COORDINATOR)
    origin = f"fedscreen.coordinator/{COORDINATOR}"

    async def scenario() -> tuple[str, list[bytes], list[bytes], list[bytes], str]:
        async with transport.channel(fed.auditor, fed.address, peer_id=COORDINATOR) as channel:
            stub = pb_grpc.AuditStub(channel)
            await _submit(fed, _query(fed)[1])  # every node answers: the log ends with it
            with transport.rpc_errors("audit"):
                first = (await stub.GetCheckpoint(pb.CheckpointRequest(), timeout=5)).note
                size = parse_and_verify_note(
                    first, verifiers={origin: coordinator.signing_key}
                ).size
                entries = [
                    e.data
                    async for e in stub.GetEntries(pb.EntriesRequest(start=0, end=size), timeout=5)
                ]
                inclusion = await stub.GetInclusionProof(
                    pb.InclusionRequest(index=size - 1, size=size), timeout=5
                )
                # one more query grows the log; the new head must extend the old one
                await _submit(fed, _query(fed)[1])
                second = (await stub.GetCheckpoint(pb.CheckpointRequest(), timeout=5)).note
                new_size = parse_and_verify_note(
                    second, verifiers={origin: coordinator.signing_key}
                ).size
                consistency = await stub.GetConsistencyProof(
                    pb.ConsistencyRequest(size1=size, size2=new_size), timeout=5
                )
        return first, entries, list(inclusion.hashes), list(consistency.hashes), second

    first_note, entries, inclusion, consistency, second_note = run(scenario)
    keys = {origin: coordinator.signing_key}
    first = parse_and_verify_note(first_note, verifiers=keys)
    second = parse_and_verify_note(second_note, verifiers=keys)
    assert len(entries) == first.size
    assert merkle.root_from_leaf_hashes(merkle.leaf_hash(e) for e in entries) == first.root
    merkle.verify_inclusion(
        leaf_hash=merkle.leaf_hash(entries[-1]),
        index=first.size - 1,
        size=first.size,
        proof=inclusion,
        root=first.root,
    )
    merkle.verify_consistency(
        size1=first.size, size2=second.size, root1=first.root, root2=second.root, proof=consistency
    )
    # the log holds the analyst's request, every node's answer verbatim, and the release
    logged = verified_entries(entries, coordinator.signing_key, unsigned=COORDINATOR_UNSIGNED)
    assert [e["kind"] for e in logged[-len(NODES) - 2 :]] == [
        "request",
        *["answer"] * len(NODES),
        "release",
    ]
    request = verify_query(
        Envelope.from_json(logged[-len(NODES) - 2]["envelope"].encode()),
        manifest=fed.manifest, now_ms=0, window_ms=2**62,
    )  # fmt: skip
    for entry in logged[-len(NODES) - 1 : -1]:
        answer = Envelope.from_json(entry["envelope"].encode())
        verify_answer(answer, manifest=fed.manifest, node_id=entry["node"],
                      expected_query=request, public=False)  # fmt: skip


def _tamper(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` with one byte of one entry changed."""
    doc = json.loads(bundle.read_text(encoding="utf-8"))
    entries = doc["logs"][0]["entries"]
    raw = bytearray(base64.b64decode(entries[len(entries) // 2]))
    at = raw.index(b'"payload"') + len(b'"payload":"') + 4
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")
    entries[len(entries) // 2] = base64.b64encode(bytes(raw)).decode()
    out.write_text(json.dumps(doc), encoding="utf-8")
    return out


def test_exported_logs_verify_and_a_tampered_one_does_not(fed: Federation) -> None:
    manifest = str(fed.auth / "manifest.json")
    coordinator = fed.root / "coordinator.bundle"
    exports = [
        ("coordinator", "export", "--home", str(fed.coordinator_home), "--out", str(coordinator))
    ]
    bundles = [coordinator]
    for node_id in NODES:
        bundles.append(fed.root / f"{node_id}.bundle")
        exports.append(
            ("audit", "export", "--home", str(fed.node_home(node_id)), "--out", str(bundles[-1]))
        )
    # processes in parallel: each pays the interpreter's start-up
    with ThreadPoolExecutor(max_workers=len(exports)) as pool:
        for done in pool.map(lambda args: _cli(*args), exports):
            assert done.returncode == 0, done.stderr
        tampered = [_tamper(b, b.with_suffix(".tampered")) for b in bundles]
        verifications = list(
            pool.map(lambda b: _cli("audit", "verify", str(b), "--manifest", manifest, "--json"),
                     [*bundles, *tampered])
        )  # fmt: skip
    for bundle, done in zip([*bundles, *tampered], verifications, strict=True):
        if bundle.suffix == ".tampered":
            # exit 2: an entry's signature fails
            assert done.returncode == 2, (bundle.name, done.stdout, done.stderr)
        else:
            assert done.returncode == 0, (bundle.name, done.stdout, done.stderr)
            assert json.loads(done.stdout)["valid"] is True
