"""Analysts fetch the newest version of a release (``Analyst.Fetch``, ``fedscreen query
--release``, ``fedscreen report run --include-late``).

A real coordinator (``coordinator.server.serve``) and two real node agents
(``node.agent.run_node``) run in one event loop on a background thread, on 127.0.0.1
with mutual TLS; the third node stays away, so every release first misses it. Its late
answer is then made in process from its own SQLite store (``localnode.answer_locally``:
signed and charged as its agent would) and published by the coordinator's core as the
next release version (``Coordinator.release(previous=...)``), beside the running
server, as ``fedscreen coordinator inbox`` does. The analyst's side (client, CLI) runs
in the test's thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from localnode import answer_locally
from reportplans import count_plan
from test_federation import _cli

from fedscreen.analyst.query import FetchedRelease, fetch_verified, make_query, verify_fetched
from fedscreen.cli.main import main
from fedscreen.coordinator.core import DATABASE_FILE, Coordinator, init_coordinator
from fedscreen.coordinator.releases import StoredRelease, newest_release
from fedscreen.coordinator.runtime import Listening
from fedscreen.coordinator.server import serve
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import VerificationError
from fedscreen.node.agent import run_node
from fedscreen.node.dial import Welcomed
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.protocol.query import new_query_id, verify_query
from fedscreen.report.files import csv_text, verify_run
from fedscreen.report.html import render_html
from fedscreen.report.late import check_later
from fedscreen.report.plan import PlannedQuery
from fedscreen.rpc.client import fetch_release, submit
from fedscreen.rpc.transport import RpcFailed
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

YEAR = "2024-2025"
ONLINE = ("130104", "130105")
LATE = "130107"
NODES = (*ONLINE, LATE)
#: synthetic students per node
STUDENTS = 200
SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"
#: the bound of every wait in these tests (s)
WAIT_S = 30.0


@dataclass
class Fed:
    auth: Path
    coordinator: Path
    alice: Path
    bob: Path
    auditor: Path
    nodes: dict[str, NodeConfig]
    address: str = ""


def _homes(root: Path) -> Fed:
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    for member, role in (("alice", "analyst"), ("bob", "analyst"), ("auditor-1", "auditor")):
        create_identity(root / member, member_id=member, role=role, name=member)
        issue_here(auth, root / member)
    nodes = {}
    for n, node_id in enumerate(NODES):
        config = init_home(root / node_id, node_id=node_id, name=f"县 {node_id}")
        issue_here(auth, config.home)
        write_export(generate(node_id, STUDENTS, YEAR, seed=n + 1), root / f"export-{node_id}")
        _, rejected = ingest_paths(config, [root / f"export-{node_id}"])
        assert not rejected, rejected
        nodes[node_id] = config
    # the late node is offline: the coordinator queues its queries (a later version may
    # add only a queued node's answer)
    authority.set_offline(auth, LATE, offline=True)
    text = authority.manifest_text(auth)
    for home in (root / "coord", root / "alice", root / "bob", root / "auditor-1"):
        update_manifest(home, text)
    for config in nodes.values():
        update_manifest(config.home, text)
    return Fed(auth, root / "coord", root / "alice", root / "bob", root / "auditor-1", nodes)


@contextlib.contextmanager
def _running(fed: Fed) -> Iterator[str]:
    """The coordinator and the online nodes, serving on a background thread's loop until
    the block ends; yields the coordinator's address once every online node is welcomed."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def federation() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        state["stop"] = (loop, stop)
        listening: asyncio.Future[Listening] = loop.create_future()
        server = asyncio.create_task(
            serve(fed.coordinator, "127.0.0.1:0", stop=stop, on_ready=listening.set_result)
        )
        address = (await asyncio.wait_for(listening, WAIT_S)).address
        welcomed: dict[str, asyncio.Future[Welcomed]] = {n: loop.create_future() for n in ONLINE}

        def welcome(node: str) -> Callable[[Welcomed], object]:
            return lambda w: welcomed[node].done() or welcomed[node].set_result(w)

        agents = [
            asyncio.create_task(
                run_node(fed.nodes[n].home, address, stop=stop, on_welcome=welcome(n))
            )
            for n in ONLINE
        ]
        await asyncio.wait_for(asyncio.gather(*welcomed.values()), WAIT_S)
        state["address"] = address
        ready.set()
        await asyncio.gather(server, *agents)

    def thread_main() -> None:
        try:
            asyncio.run(federation())
        except BaseException as exc:  # reported to the test's thread
            state["failed"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, name="federation", daemon=True)
    thread.start()
    try:
        assert ready.wait(WAIT_S), "the federation did not start in time"
        assert "failed" not in state, state.get("failed")
        yield str(state["address"])
    finally:
        if "stop" in state:
            loop, stop = state["stop"]  # type: ignore[misc]  # (loop, event), set above
            loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the federation did not stop in time"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    federation = _homes(tmp_path_factory.mktemp("fetch"))
    with _running(federation) as address:
        federation.address = address
        yield federation


def late_version(fed: Fed, query_id: str) -> StoredRelease:
    """The late node answers ``query_id`` from its store, and the coordinator's core
    publishes the next version of its release with that answer; returns the new version."""
    core = Coordinator.open(fed.coordinator)
    try:
        stored = newest_release(core.conn, query_id)
        assert stored is not None
        query = verify_query(
            Envelope.from_json(stored.query_envelope), manifest=core.manifest, now_ms=0,
            window_ms=2**62,
        )  # fmt: skip
        answers = {**stored.answers, LATE: answer_locally(fed.nodes[LATE], stored.query_envelope)}
        core.release(
            query, answers, [n for n in stored.targeted if n not in answers],
            eligible=stored.eligible, academic_year=stored.academic_year,
            targeted=stored.targeted, query_envelope=stored.query_envelope, previous=stored,
        )  # fmt: skip
        newest = newest_release(core.conn, query_id)
    finally:
        core.close()
    assert newest is not None
    assert newest.release_version == stored.release_version + 1
    return newest


def _ask(fed: Fed, home: Path, epsilon: float = 0.1) -> str:
    """A query from the analyst in ``home``, released without the late node; its id."""
    query, envelope = make_query(home, SQL, epsilon=epsilon, accuracy=None)
    submitted = asyncio.run(submit(home, fed.address, envelope, deadline_ms=5_000))
    assert submitted.missing == (LATE,)
    return query.query_id


def _fetch_failure(fed: Fed, home: Path, query_id: str) -> RpcFailed:
    with pytest.raises(RpcFailed) as failed:
        asyncio.run(fetch_release(home, fed.address, query_id))
    return failed.value


# ---------------------------------------------------------------- the Fetch RPC


def test_fetch_returns_the_newest_version_to_the_querys_own_analyst(fed: Fed) -> None:
    query_id = _ask(fed, fed.alice)
    first = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    assert first.verified.release.release_version == 1
    assert first.verified.release.supersedes is None
    assert first.verified.release.missing == (LATE,)
    before = first.release_envelope
    second = late_version(fed, query_id)
    fetched = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    release = fetched.verified.release
    assert release.release_version == 2
    assert release.answered == NODES
    assert release.missing == ()
    assert fetched.release_envelope == second.envelope
    # version 2 names version 1, byte for byte
    assert release.supersedes == hashlib.sha256(before).hexdigest()
    assert set(fetched.answers) == set(NODES)


def test_another_analyst_an_unknown_id_and_a_malformed_id_get_the_same_not_found(
    fed: Fed,
) -> None:
    query_id = _ask(fed, fed.alice)
    texts = []
    for home, asked in (
        (fed.bob, query_id),
        (fed.alice, new_query_id()),
        (fed.alice, "x" * 1_000),
        (fed.alice, "\x1b[2J" + query_id),
    ):
        failure = _fetch_failure(fed, home, asked)
        assert failure.code is grpc.StatusCode.NOT_FOUND
        texts.append(failure.details)
    assert texts[0] == f"no release of query {query_id} for analyst bob"
    assert texts[2] == texts[3] == "no release of query (invalid id) for analyst alice"
    # an id past the small-request limit is refused before any handler reads it
    failure = _fetch_failure(fed, fed.alice, "x" * 10_000)
    assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # an auditor may not fetch releases at all
    failure = _fetch_failure(fed, fed.auditor, query_id)
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED


def test_a_release_of_someone_elses_query_is_refused_by_the_analyst(fed: Fed) -> None:
    mine, theirs = _ask(fed, fed.alice), _ask(fed, fed.bob)
    got = asyncio.run(fetch_release(fed.bob, fed.address, theirs))
    manifest = load_identity(fed.alice).manifest()
    with pytest.raises(VerificationError, match="signed by bob, not by alice"):
        verify_fetched(got, manifest=manifest, analyst="alice", query_id=theirs)
    # bob's release passed off as the answer to alice's query id
    with pytest.raises(VerificationError, match="signed by bob"):
        verify_fetched(got, manifest=manifest, analyst="alice", query_id=mine)
    own = asyncio.run(fetch_release(fed.alice, fed.address, mine))
    with pytest.raises(VerificationError, match="not " + theirs):
        verify_fetched(own, manifest=manifest, analyst="alice", query_id=theirs)
    # the coordinator's word on the version must be the signed release's
    with pytest.raises(VerificationError, match="calls it version 3"):
        verify_fetched(
            replace(own, release_version=3), manifest=manifest, analyst="alice", query_id=mine
        )
    # another release under alice's own query does not verify either
    with pytest.raises(VerificationError):
        verify_fetched(
            replace(own, release_envelope=got.release_envelope, answers=got.answers),
            manifest=manifest, analyst="alice", query_id=mine,
        )  # fmt: skip


# ---------------------------------------------------------------- fedscreen query --release


def test_query_release_prints_the_version_and_the_nodes_still_missing(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    query_id = _ask(fed, fed.alice)
    base = ["query", "--home", str(fed.alice), "--coordinator", fed.address]
    assert main([*base, "--release", query_id]) == 0
    out = capsys.readouterr().out
    assert f"release of query {query_id} by alice" in out
    assert "release version 1\n" in out
    assert f"still missing (1 of 3 nodes):\n  {LATE}: offline: queued for the node's next" in out
    stored = late_version(fed, query_id)
    assert main([*base, "--release", query_id]) == 0
    out = capsys.readouterr().out
    assert "release version 2, superseding an earlier version (release SHA-256 " in out
    assert "every node asked has answered (3 of 3)" in out
    assert main([*base, "--release", query_id, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["release_version"] == 2
    assert doc["release"]["release_version"] == 2
    assert doc["release"]["supersedes"] != stored.digest  # it names version 1, not itself


def test_query_release_refusals_are_clear(fed: Fed, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["query", "--home", str(fed.bob), "--coordinator", fed.address]
    query_id = _ask(fed, fed.alice)
    assert main([*base, "--release", query_id]) == 1
    err = capsys.readouterr().err
    assert f"NOT_FOUND: no release of query {query_id} for analyst bob" in err
    assert "Traceback" not in err
    assert main([*base, "--release", query_id, "--epsilon", "0.1"]) == 1
    assert "--epsilon ask a new query" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*base, "--release", query_id, SQL])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main([*base, SQL])  # a new query needs its ε
    assert exited.value.code == 2
    assert "--epsilon --accuracy" in capsys.readouterr().err


# ---------------------------------------------------------------- report run --include-late


def _report_args(fed: Fed, plan: Path, out: Path) -> list[str]:
    return ["report", "run", str(plan), "--home", str(fed.alice), "--coordinator", fed.address,
            "--out", str(out)]  # fmt: skip


def _rewrite(out: Path, model: dict[str, Any]) -> None:
    """``model`` as the report in ``out``, with its HTML and CSV."""
    (out / "report.json").write_text(json.dumps(model), encoding="utf-8")
    (out / "report.html").write_text(render_html(model), encoding="utf-8", newline="")
    (out / "report.csv").write_text(csv_text(model), encoding="utf-8", newline="")


def _model(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "report.json").read_text(encoding="utf-8")))


def test_report_include_late_replaces_a_release_by_its_later_version_and_verifies(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    run = _report_args(fed, count_plan(tmp_path / "plan.toml", [0.1, 0.1]), out)
    verify = ["report", "verify", str(out), "--manifest", str(fed.auth / "manifest.json")]
    assert main(run) == 0
    first = _model(out)
    partial = {"version": 1, "answered": 2, "targeted": 3}
    assert first["release_versions"] == {"q0": partial, "q1": partial}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<code>q0</code> version 1 (2 of 3 nodes answered)" in html
    assert main(verify) == 0
    # a report written before release versions (no release_versions, no line in the
    # HTML) still verifies while each of its releases is a first one
    old = tmp_path / "old"
    shutil.copytree(out, old)
    _rewrite(old, {k: v for k, v in first.items() if k != "release_versions"})
    assert main(["report", "verify", str(old), *verify[3:]]) == 0
    capsys.readouterr()
    # without --include-late a finished report is refused, as before
    assert main(run) == 1
    assert "already holds a report" in capsys.readouterr().err
    # nothing later yet: nothing is written
    written = (out / "report.json").read_bytes()
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert "q0: no later version (version 1, 2/3 nodes)" in said
    assert "no release has a later version" in said
    assert (out / "report.json").read_bytes() == written
    # the late node answers q0's query; q1 stays as it was
    version1 = (out / "releases" / "q0.json").read_bytes()
    q1 = (out / "releases" / "q1.json").read_bytes()
    late_version(fed, first["releases"]["q0"])
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert "q0: version 1 → 2 (now 3/3 nodes)" in said
    assert "q1: no later version (version 1, 2/3 nodes)" in said
    assert "1 of 2 releases replaced by a later version" in said
    model = _model(out)
    assert model["release_versions"] == {
        "q0": {**partial, "version": 2, "answered": 3},
        "q1": partial,
    }
    assert {n["id"]: n["answered"] for n in model["nodes"]}[LATE] == 1
    assert (out / "releases" / "q1.json").read_bytes() == q1
    # the report it replaced is kept by its digest (a city report may compare with it)
    kept = out / "superseded" / f"report-{hashlib.sha256(written).hexdigest()}.json"
    assert kept.read_bytes() == written
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<code>q0</code> version 2 (3 of 3 nodes answered)" in html
    assert "1 of them a later version" in html
    assert main(verify) == 0
    assert "VALID" in capsys.readouterr().out
    # ... but not once a release is a later version
    _rewrite(old, {k: v for k, v in model.items() if k != "release_versions"})
    shutil.copy(out / "releases" / "q0.json", old / "releases" / "q0.json")
    assert main(["report", "verify", str(old), *verify[3:]]) == 2
    assert "release_versions" in capsys.readouterr().err
    # an auditor finds both versions in the coordinator's verified log (separate
    # processes: the bundle's verification forks workers, this process runs a server)
    bundle = tmp_path / "coordinator.bundle"
    exported = _cli("audit", "export", "--home", str(fed.coordinator), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    audited = _cli(*verify, "--bundle", str(bundle))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "every release is in the coordinator's log" in audited.stdout
    # the version the report states must be the release's
    stated = _model(out)
    stated["release_versions"]["q0"]["version"] = 1
    (out / "report.json").write_text(json.dumps(stated), encoding="utf-8")
    assert main(verify) == 2
    assert "release_versions" in capsys.readouterr().err
    (out / "report.json").write_text(json.dumps(model), encoding="utf-8")
    # an edited release file, or the version-1 file put back under the version-2 report
    version2 = (out / "releases" / "q0.json").read_bytes()
    doc = json.loads(version2)
    doc["answers"].pop(LATE)
    (out / "releases" / "q0.json").write_text(json.dumps(doc), encoding="utf-8")
    assert main(verify) == 2
    assert "other answers than those delivered" in capsys.readouterr().err
    (out / "releases" / "q0.json").write_bytes(version1)
    assert main(verify) == 2
    capsys.readouterr()
    # (as a regeneration stopped between the release files and the report would leave
    # it): --include-late fetches version 2 again and writes the report again
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert "the report's files do not match its releases" in said
    assert "q0: version 1 → 2 (now 3/3 nodes)" in said
    assert (out / "releases" / "q0.json").read_bytes() == version2
    assert main(verify) == 0


def test_a_later_version_must_extend_the_stored_release(fed: Fed) -> None:
    # q0 of a report: its stored release (version 1), then versions 2 and 3 by the core
    query_id = _ask(fed, fed.alice)
    manifest = load_identity(fed.alice).manifest()
    fetched1 = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    query = make_plan_query(fetched1)
    stored = verify_run(query, fetched1.query_envelope, fetched1.release_envelope,
                        fetched1.answers, manifest=manifest, where="q0")  # fmt: skip
    assert check_later(stored, fetched1) is False  # the same release: nothing later
    late_version(fed, query_id)
    fetched2 = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    assert check_later(stored, fetched2) is True
    release2 = fetched2.verified.release

    def altered(**changes: Any) -> FetchedRelease:
        verified = replace(fetched2.verified, release=replace(release2, **changes))
        return replace(fetched2, verified=verified)

    with pytest.raises(VerificationError, match="does not supersede the stored version 1"):
        check_later(stored, altered(supersedes="00" * 32))
    with pytest.raises(VerificationError, match="asked other nodes"):
        check_later(stored, altered(targeted=ONLINE))
    with pytest.raises(VerificationError, match="another year or from another coordinator"):
        check_later(stored, altered(academic_year="2023-2024"))
    with pytest.raises(VerificationError, match="does not keep"):
        check_later(stored, altered(answers=release2.answers[1:]))
    # version 3 (a second late answer made again) has no chain to version 1 to show:
    # accepted on the same query, nodes and kept answers
    assert check_later(stored, altered(release_version=3, supersedes="11" * 32)) is True
    # the stored version is 2 now: version 1 is older, another version 2 is not it
    newer = verify_run(query, fetched2.query_envelope, fetched2.release_envelope,
                       fetched2.answers, manifest=manifest, where="q0")  # fmt: skip
    with pytest.raises(VerificationError, match="older than the stored version 2"):
        check_later(newer, fetched1)
    with pytest.raises(VerificationError, match="another release of the stored version 2"):
        check_later(newer, replace(fetched2, release_envelope=fetched1.release_envelope))
    # another query's release (a signed query of bob's): refused before anything else
    other = asyncio.run(fetch_verified(fed.bob, fed.address, _ask(fed, fed.bob)))
    with pytest.raises(VerificationError, match="answers another signed query"):
        check_later(stored, other)


def make_plan_query(fetched: FetchedRelease) -> PlannedQuery:
    """The plan query ``fetched`` answers (its SQL as the analyst signed it)."""
    query = fetched.query
    return PlannedQuery(name="q0", sql=SQL, spec=query.spec, epsilon=query.epsilon,
                        accuracy=query.accuracy, public=False, cost=0.1, cells=2)  # fmt: skip


def test_include_late_keeps_a_release_the_coordinator_does_not_keep(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    run = _report_args(fed, count_plan(tmp_path / "plan.toml", [0.1]), out)
    assert main(run) == 0
    written = (out / "report.json").read_bytes()
    # as a release made before the coordinator kept its releases
    query_id = _model(out)["releases"]["q0"]
    conn = sqlite3.connect(fed.coordinator / DATABASE_FILE)
    try:
        with conn:
            conn.execute("DELETE FROM release_store WHERE query_id = ?", (query_id,))
    finally:
        conn.close()
    capsys.readouterr()
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert "q0: the coordinator keeps no version of this release; kept as it is" in said
    assert (out / "report.json").read_bytes() == written
    # another analyst cannot regenerate alice's report
    bob = [*run[:4], str(fed.bob), *run[5:], "--include-late"]
    assert main(bob) == 1
    assert "is alice's report; only its analyst can fetch its releases" in capsys.readouterr().err
    # nor is a directory without a finished report regenerated
    assert main([*run[:-1], str(tmp_path / "empty"), "--include-late"]) == 1
    assert "holds no finished report" in capsys.readouterr().err
