"""Honest coordinator histories verify (issue 11, item 2); dishonest ones still do not.

A real coordinator and real node homes, in process: an analyst resubmits a query id
that fewer nodes answer the second time, the coordinator stops between a request
and its release, a node's late answer is discarded, no node answers at all. Each
history is exported (``fedscreen audit export``) and verified (``fedscreen audit
verify``), and the report says what the auditor saw.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from countyhomes import county_homes
from localnode import answer_locally

from fedscreen._util.canonical import canonical_json
from fedscreen.analyst.query import make_query
from fedscreen.cli.main import main
from fedscreen.coordinator.core import Coordinator, Release
from fedscreen.crypto.envelope import RELEASE_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.node.home import NodeConfig
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import release_body
from fedscreen.trust import authority
from fedscreen.trust.manifest import sign_manifest

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
COUNTIES = ("130104", "130105", "130107")


@dataclass
class Federation:
    auth: Path
    coordinator: Path
    analyst: Path
    nodes: dict[str, NodeConfig]

    @property
    def manifest(self) -> str:
        return str(self.auth / "manifest.json")


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    homes = county_homes(tmp_path, {code: 59 + 20 * n for n, code in enumerate(COUNTIES)})
    return Federation(homes.auth, homes.coordinator, homes.analysts["analyst-1"], homes.nodes)


def _coordinator(fed: Federation, act: Callable[[Coordinator], Any]) -> Any:
    coordinator = Coordinator.open(fed.coordinator)
    try:
        return act(coordinator)
    finally:
        coordinator.close()


def _submit(
    fed: Federation, query: SignedQuery, envelope: bytes, answering: tuple[str, ...]
) -> Release:
    """What the server does for one submission: accept, ask the nodes, release."""

    def act(coordinator: Coordinator) -> Release:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {n: answer_locally(fed.nodes[n], envelope) for n in answering}
        missing = [n for n in COUNTIES if n not in answering]
        return coordinator.release(accepted, answers, missing)

    result: Release = _coordinator(fed, act)
    return result


def _audit(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], *, nodes: bool = False
) -> tuple[int, dict[str, Any], str]:
    """Export the coordinator's log (and the nodes'), verify it: exit code, the
    coordinator's report (--json) and the text output."""
    homes = [fed.coordinator, *((c.home for c in fed.nodes.values()) if nodes else ())]
    bundle = tmp_path / "bundle.json"
    bundle.unlink(missing_ok=True)
    args = [a for h in homes for a in ("--home", str(h))]
    assert main(["audit", "export", *args, "--out", str(bundle)]) == 0
    capsys.readouterr()
    code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest, "--json"])
    out = json.loads(capsys.readouterr().out)
    text_code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest])
    captured = capsys.readouterr()
    assert text_code == code
    if code:
        return code, out, captured.err
    report = next(r for r in out["logs"] if r["origin"].startswith("fedscreen.coordinator/"))
    return code, report, captured.out


def _counts(report: dict[str, Any]) -> dict[str, int]:
    keys = ("requests", "resubmissions", "releases", "partial_releases", "unreleased", "answers")
    return {k: report[k] for k in keys}


def test_a_resubmitted_query_id_that_fewer_nodes_answer_verifies(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    first = _submit(fed, query, envelope, COUNTIES)
    # the same signed query again: the nodes answer from their stores, one node does not
    second = _submit(fed, query, envelope, COUNTIES[:2])
    assert first.missing == ()
    assert second.missing == (COUNTIES[2],)
    code, report, text = _audit(fed, tmp_path, capsys, nodes=True)
    assert code == 0, report
    assert _counts(report) == {
        "requests": 2,
        "resubmissions": 1,
        "releases": 2,
        "partial_releases": 1,
        "unreleased": 0,
        "answers": 5,
    }
    assert (
        "2 requests (1 resubmitted query ids), 2 releases (1 partial), 0 requests without a release"
    ) in text
    # and a third time, by all nodes again (more nodes than the time before)
    _submit(fed, query, envelope, COUNTIES)
    code, report, _ = _audit(fed, tmp_path, capsys, nodes=True)
    assert code == 0, report
    assert (report["requests"], report["resubmissions"], report["releases"]) == (3, 2, 3)


def test_a_request_without_a_release_and_a_release_nobody_answered_verify(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    # the coordinator logs the request, then stops before it releases (it crashed)
    _coordinator(fed, lambda c: c.accept(envelope, now_ms=query.issued_at_ms))
    # the analyst resubmits to the restarted coordinator: released this time
    _submit(fed, query, envelope, COUNTIES)
    # a query no node answers is released empty
    other, other_envelope = make_query(
        fed.analyst,
        "SELECT grade_band, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "GROUP BY grade_band",
        epsilon=0.2,
        accuracy=None,
    )
    nobody = _submit(fed, other, other_envelope, ())
    assert nobody.body["answered"] == []
    assert nobody.missing == COUNTIES
    # and one that never got a release at all
    third, third_envelope = make_query(fed.analyst, SQL, epsilon=0.1, accuracy=None)
    _coordinator(fed, lambda c: c.accept(third_envelope, now_ms=third.issued_at_ms))
    code, report, text = _audit(fed, tmp_path, capsys)
    assert code == 0, report
    assert _counts(report) == {
        "requests": 4,
        "resubmissions": 1,
        "releases": 2,
        "partial_releases": 1,
        "unreleased": 2,
        "answers": 3,
    }
    assert "2 requests without a release" in text


def test_a_partial_release_and_a_discarded_late_answer_verify(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    release = _submit(fed, query, envelope, COUNTIES[1:])
    assert release.missing == (COUNTIES[0],)
    # the slow node answers (and charges) after the release: the coordinator discards it
    answer_locally(fed.nodes[COUNTIES[0]], envelope)
    code, report, _ = _audit(fed, tmp_path, capsys, nodes=True)
    assert code == 0, report
    assert _counts(report) == {
        "requests": 1,
        "resubmissions": 0,
        "releases": 1,
        "partial_releases": 1,
        "unreleased": 0,
        "answers": 2,
    }


# ------------------------------------------------------------- dishonest coordinators


def _verified(coordinator: Coordinator, query: SignedQuery, raw: bytes, node: str) -> Any:
    return verify_answer(
        Envelope.from_json(raw),
        manifest=coordinator.manifest,
        node_id=node,
        expected_query=query,
        public=False,
    )


def _forged_release(coordinator: Coordinator, query: SignedQuery, answers: dict[str, bytes]) -> str:
    """A release the coordinator signs for ``answers`` (correctly combined)."""
    verified = {n: (raw, _verified(coordinator, query, raw, n)) for n, raw in answers.items()}
    body = release_body(
        coordinator_id=coordinator.member_id,
        query=query,
        answers=verified,
        missing=[n for n in COUNTIES if n not in answers],
        targeted=list(COUNTIES),
        threshold=coordinator.policy.limits.publication_threshold,
        public=False,
        academic_year=None if query.spec.years else "2024-2025",
    )
    return sign_envelope(
        payload_type=RELEASE_V1, payload=canonical_json(body), key=coordinator.key
    ).to_json()


def _log_answer(coordinator: Coordinator, query: SignedQuery, node: str, raw: bytes) -> None:
    coordinator._append(
        {"kind": "answer", "query_id": query.query_id, "node": node, "envelope": raw.decode()}
    )


def _log_release(coordinator: Coordinator, query: SignedQuery, signed: str) -> None:
    coordinator._append({"kind": "release", "query_id": query.query_id, "envelope": signed})


def test_a_release_of_answers_not_logged_with_it_is_caught(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resubmission released with the first round's answers (logged before, but not
    with this release) is not what an honest coordinator logs."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    first = _submit(fed, query, envelope, COUNTIES)

    def act(coordinator: Coordinator) -> None:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        _log_release(coordinator, accepted, _forged_release(coordinator, accepted, first.answers))

    _coordinator(fed, act)
    code, _, err = _audit(fed, tmp_path, capsys)
    assert code == 2
    assert "the release names other answers than the ones logged with it" in err


def test_a_release_naming_more_answers_than_logged_with_it_is_caught(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)

    def act(coordinator: Coordinator) -> None:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {n: answer_locally(fed.nodes[n], envelope) for n in COUNTIES}
        for n in COUNTIES[:2]:
            _log_answer(coordinator, accepted, n, answers[n])
        _log_release(coordinator, accepted, _forged_release(coordinator, accepted, answers))

    _coordinator(fed, act)
    code, _, err = _audit(fed, tmp_path, capsys)
    assert code == 2
    assert "the release names other answers than the ones logged with it" in err


@pytest.mark.parametrize("case", ["no request", "answers without release", "wrong signer"])
def test_other_dishonest_histories_are_caught(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    first = _submit(fed, query, envelope, COUNTIES)

    def act(coordinator: Coordinator) -> None:
        if case == "no request":
            # a second release of the query, although it was requested once
            for n in COUNTIES:
                _log_answer(coordinator, query, n, first.answers[n])
            _log_release(coordinator, query, _forged_release(coordinator, query, first.answers))
        elif case == "answers without release":
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
            _log_answer(coordinator, query, COUNTIES[0], first.answers[COUNTIES[0]])
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
        else:
            # one node's answer logged as another's
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
            _log_answer(coordinator, query, COUNTIES[1], first.answers[COUNTIES[0]])
            _log_release(coordinator, query, _forged_release(coordinator, query, {}))

    _coordinator(fed, act)
    code, _, err = _audit(fed, tmp_path, capsys)
    assert code == 2, err
    expected = {
        "no request": "that was not requested",
        "answers without release": "answers logged without their release",
        "wrong signer": "entry 7:",  # after the manifest entry the coordinator logs first
    }[case]
    assert expected in err


# ------------------------------------------ signatures dated after a known revocation


def _revoked_minutes_ago(fed: Federation, member_id: str, minutes: int) -> None:
    """The authority revokes ``member_id`` in a version dated ``minutes`` ago, which only
    the auditor holds (its --manifest): no member's home hears of it, so the
    coordinator's log never records it."""
    revoked = authority.revoke(fed.auth, member_id)
    issued = (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="seconds")
    key = SigningKey.load(fed.auth / authority.AUTHORITY_KEY_FILE)
    signed = sign_manifest(dataclasses.replace(revoked, issued_at=issued), key=key)
    Path(fed.manifest).write_text(signed, encoding="utf-8")


@pytest.mark.parametrize(("member", "index"), [("analyst-1", 1), ("coordinator", 5)])
def test_a_signature_dated_after_a_known_revocation_fails(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str, index: int
) -> None:
    """The analyst's query (issued_at_ms) or the coordinator's release (released_at) is
    dated more than the freshness window (5 min) after the version revoking its
    signer was issued: refused, although the log never recorded that version."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    _submit(fed, query, envelope, COUNTIES)  # manifest, request, 3 answers, release
    _revoked_minutes_ago(fed, member, minutes=10)
    code, out, err = _audit(fed, tmp_path, capsys)
    assert code == 2, out
    assert out["index"] == index
    what = "a query" if member == "analyst-1" else "a release"
    assert f"entry {index}: {what} by '{member}' is dated more than the freshness window" in err


@pytest.mark.parametrize("member", ["analyst-1", "coordinator"])
def test_a_signature_within_the_freshness_window_of_a_revocation_verifies(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str
) -> None:
    """Clocks differ: a signature dated less than the window after the revocation was
    issued may have been made before the signer could know of it."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    _submit(fed, query, envelope, COUNTIES)
    _revoked_minutes_ago(fed, member, minutes=3)
    code, report, _ = _audit(fed, tmp_path, capsys)
    assert code == 0, report
    assert (report["requests"], report["releases"]) == (1, 1)
