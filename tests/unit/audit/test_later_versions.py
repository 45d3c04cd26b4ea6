"""The auditor's check of later release versions and of the node checkpoints a
coordinator relayed (issue 16, review findings F3 and F2).

A real coordinator and real node homes, in process. A later version of a release
(``release_version`` n + 1, ``supersedes``) is what ``coordinator inbox`` makes when an
offline node's answer or refusal arrives by file: version n's answers and the late one.
The coordinator here signs versions with its own key through ``Coordinator.release``
(what the inbox calls), honest ones and fabricated ones; ``fedscreen audit verify`` must
accept the first and exit 2 at the second. A node that keeps two histories (its home
copied) has the coordinator relay a checkpoint of each; every one relayed must be a
prefix of the node's own log (exit 3).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from countyhomes import county_homes
from localnode import answer_locally

from fedscreen.analyst.query import make_query
from fedscreen.audit import coordinatorlog
from fedscreen.cli.main import main
from fedscreen.coordinator import offline, runtime
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.quarantine import readmit, screen_answer
from fedscreen.coordinator.releases import StoredRelease, newest_release
from fedscreen.node.home import NodeConfig, load_config
from fedscreen.protocol.query import SignedQuery

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
ONLINE, LATE, THIRD = "130104", "130105", "130107"
COUNTIES = (ONLINE, LATE, THIRD)
QUEUED = offline.QUEUED


@dataclass
class Federation:
    root: Path
    auth: Path
    coordinator: Path
    analyst: Path
    nodes: dict[str, NodeConfig]


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    homes = county_homes(tmp_path, {code: 59 + 20 * n for n, code in enumerate(COUNTIES)})
    analyst = homes.analysts["analyst-1"]
    return Federation(tmp_path, homes.auth, homes.coordinator, analyst, homes.nodes)


def _audit(fed: Federation, capsys: pytest.CaptureFixture[str], *, nodes: bool = False) -> int:
    """``fedscreen audit export`` of the coordinator (and the nodes), then ``verify``."""
    homes = [fed.coordinator, *((c.home for c in fed.nodes.values()) if nodes else ())]
    bundle = fed.root / "bundle.json"
    bundle.unlink(missing_ok=True)
    args = [a for h in homes for a in ("--home", str(h))]
    assert main(["audit", "export", *args, "--out", str(bundle)]) == 0
    code = main(["audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json")])
    capsys.readouterr()
    return code


def _first_release(fed: Federation) -> tuple[SignedQuery, bytes, StoredRelease]:
    """A query the first county answers; the second's answer queued (it answers by file),
    the third not connected."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    core = Coordinator.open(fed.coordinator)
    try:
        accepted = core.accept(envelope, now_ms=query.issued_at_ms)
        core.release(
            accepted,
            {ONLINE: answer_locally(fed.nodes[ONLINE], envelope)},
            [LATE, THIRD],
            reasons={LATE: QUEUED, THIRD: "not connected"},
            targeted=COUNTIES,
            query_envelope=envelope,
        )
        stored = newest_release(core.conn, query.query_id)
    finally:
        core.close()
    assert stored is not None
    return accepted, envelope, stored


def _version(
    fed: Federation,
    query: SignedQuery,
    answers: dict[str, bytes],
    reasons: dict[str, str],
) -> int:
    """The coordinator signs the next version of the query's newest release."""
    core = Coordinator.open(fed.coordinator)
    try:
        previous = newest_release(core.conn, query.query_id)
        assert previous is not None
        release = core.release(
            query,
            answers,
            [n for n in COUNTIES if n not in answers],
            reasons=reasons,
            targeted=previous.targeted,
            query_envelope=previous.query_envelope,
            previous=previous,
        )
        return int(release.body["release_version"])
    finally:
        core.close()


def test_the_auditors_queued_reason_is_the_coordinators() -> None:
    """The auditor states the coordinator's texts itself (the roles never import each
    other): they must stay the same."""
    assert coordinatorlog.QUEUED_REASON == offline.QUEUED
    assert runtime.REASON_NOT_UNDERSTOOD.startswith(coordinatorlog.REFUSAL_PREFIX)
    assert runtime.node_refusal("stale: too old").startswith(coordinatorlog.REFUSAL_PREFIX)


def test_honest_later_versions_verify(fed: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    query, envelope, first = _first_release(fed)
    late = answer_locally(fed.nodes[LATE], envelope)
    # version 2 adds the late answer; another query's version 2 states the node's refusal
    assert _version(fed, query, {**first.answers, LATE: late}, {THIRD: "not connected"}) == 2
    assert _audit(fed, capsys, nodes=True) == 0
    other, _, second = _first_release(fed)
    refusal = runtime.node_refusal("stale: the query is older than the node accepts")
    assert _version(fed, other, dict(second.answers), {LATE: refusal, THIRD: "not connected"}) == 2
    assert _audit(fed, capsys, nodes=True) == 0


def test_a_version_that_drops_an_answer_is_caught(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope, _ = _first_release(fed)
    late = answer_locally(fed.nodes[LATE], envelope)
    _version(fed, query, {LATE: late}, {ONLINE: "no answer", THIRD: "not connected"})
    assert _audit(fed, capsys) == 2


def test_a_version_that_swaps_an_answer_is_caught(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope, first = _first_release(fed)
    # the node's answer given again from its store: another signed envelope of it
    again = answer_locally(fed.nodes[ONLINE], envelope)
    assert again != first.answers[ONLINE]
    late = answer_locally(fed.nodes[LATE], envelope)
    _version(fed, query, {ONLINE: again, LATE: late}, {THIRD: "not connected"})
    assert _audit(fed, capsys) == 2


@pytest.mark.parametrize(
    "reasons",
    [
        {LATE: QUEUED, THIRD: "not connected"},  # nothing changes
        {LATE: "whatever the coordinator likes", THIRD: "not connected"},
        {LATE: QUEUED, THIRD: "refused: budget: exhausted"},  # a node that was not queued
    ],
    ids=["nothing-new", "made-up-reason", "not-queued"],
)
def test_a_version_adding_no_answer_and_no_refusal_is_caught(
    fed: Federation, capsys: pytest.CaptureFixture[str], reasons: dict[str, str]
) -> None:
    query, _, first = _first_release(fed)
    _version(fed, query, dict(first.answers), reasons)
    assert _audit(fed, capsys) == 2


def test_a_version_adding_a_node_that_was_not_queued_is_caught(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a queued node's late answer fills a later version: THIRD was not connected."""
    query, envelope, first = _first_release(fed)
    third = answer_locally(fed.nodes[THIRD], envelope)
    _version(fed, query, {**first.answers, THIRD: third}, {LATE: QUEUED})
    assert _audit(fed, capsys) == 2


def test_a_version_stating_another_population_is_caught(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    """A later version adds answers, never eligible students to the nodes asked."""
    query, envelope, first = _first_release(fed)
    late = answer_locally(fed.nodes[LATE], envelope)
    core = Coordinator.open(fed.coordinator)
    try:
        previous = newest_release(core.conn, query.query_id)
        assert previous is not None
        core.release(
            query, {**first.answers, LATE: late}, [THIRD], reasons={THIRD: "not connected"},
            targeted=previous.targeted, query_envelope=previous.query_envelope,
            previous=previous, eligible={ONLINE: 100, LATE: 99_900},
        )  # fmt: skip
    finally:
        core.close()
    assert _audit(fed, capsys) == 2


def _fork(config: NodeConfig, where: Path) -> NodeConfig:
    """A second copy of the node's home: a node keeping two histories."""
    shutil.copytree(config.home, where)
    fork = load_config(where)
    assert fork.database.is_relative_to(where)
    return fork


def _release(fed: Federation, answers: dict[str, bytes], query: SignedQuery, env: bytes) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        accepted = core.accept(env, now_ms=query.issued_at_ms)
        missing = [n for n in COUNTIES if n not in answers]
        core.release(accepted, answers, missing, query_envelope=env)
    finally:
        core.close()


def test_every_relayed_checkpoint_is_checked_against_the_nodes_log(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    """The coordinator relays a checkpoint of the node's other history, then a larger one of
    the history the node exports: the smaller one is not a prefix of the node's log."""
    fork = _fork(fed.nodes[LATE], fed.root / "fork")
    first, first_env = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    _, second_env = make_query(fed.analyst, SQL, epsilon=0.2, accuracy=None)
    third, third_env = make_query(fed.analyst, SQL, epsilon=0.1, accuracy=None)
    _release(fed, {LATE: answer_locally(fork, first_env)}, first, first_env)
    answer_locally(fed.nodes[LATE], second_env)  # the exported history at the same size
    _release(fed, {LATE: answer_locally(fed.nodes[LATE], third_env)}, third, third_env)
    assert _audit(fed, capsys) == 0  # alone, the coordinator's log shows no contradiction
    assert _audit(fed, capsys, nodes=True) == 3


def test_two_relayed_checkpoints_of_one_size_are_a_split_view(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    fork = _fork(fed.nodes[LATE], fed.root / "fork")
    first, first_env = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    second, second_env = make_query(fed.analyst, SQL, epsilon=0.2, accuracy=None)
    _release(fed, {LATE: answer_locally(fork, first_env)}, first, first_env)
    _release(fed, {LATE: answer_locally(fed.nodes[LATE], second_env)}, second, second_env)
    assert _audit(fed, capsys) == 3


def test_a_quarantine_sets_earlier_checkpoints_apart_only_for_a_node_that_recorded_it(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    """The coordinator quarantines a node whose checkpoint contradicts one it holds, then
    readmits it. What it relayed before is excused only when the node's own log records
    its rollback (``node recover``, ``test_rollback_online``); a node exporting the other
    history, with no rollback recorded (a whole home restored, or two histories kept), is
    a split view."""
    fork = _fork(fed.nodes[LATE], fed.root / "fork")
    queries = [make_query(fed.analyst, SQL, epsilon=e, accuracy=None) for e in (0.3, 0.2, 0.1)]
    (first, first_env), (_, second_env), (third, third_env) = queries
    core = Coordinator.open(fed.coordinator)
    try:

        def screened(answer: bytes) -> str | None:
            return screen_answer(core, core.book, node_id=LATE, envelope=answer, proof=(),
                                 sent_size=0, now_ms=first.issued_at_ms)  # fmt: skip

        answer = answer_locally(fed.nodes[LATE], first_env)
        assert screened(answer) is None
        accepted = core.accept(first_env, now_ms=first.issued_at_ms)
        core.release(accepted, {LATE: answer}, [ONLINE, THIRD], query_envelope=first_env)
        # the other history at the same size: quarantined, logged with its evidence
        reason = screened(answer_locally(fork, second_env))
        assert reason is not None
        assert reason.startswith("quarantined")
        readmit(core, node_id=LATE, reason="investigated", now_ms=third.issued_at_ms)
        answer = answer_locally(fork, third_env)
        assert screened(answer) is None
        accepted = core.accept(third_env, now_ms=third.issued_at_ms)
        core.release(accepted, {LATE: answer}, [ONLINE, THIRD], query_envelope=third_env)
    finally:
        core.close()
    assert _audit(fed, capsys) == 0  # the quarantine is disclosed in the coordinator's log
    fed.nodes[LATE] = fork  # the node exports the other history, no rollback recorded
    assert _audit(fed, capsys, nodes=True) == 3
