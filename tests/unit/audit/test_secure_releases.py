"""The auditor's checks of secure releases (issue 14, item 4): the coordinator's and the
second aggregator's logs agree.

Real homes (``securefed``): the county nodes answer a secure count through their own
request path; the real coordinator accepts it, makes its own partial
(``coordinator.partials.own_partial``) and logs the release; the second aggregator's
partial is made and logged by its real store (``aggregator.store.PartialStore``, the
use-once rule) in a real SQLite file. A dishonest aggregator's log is written as the
store writes it (``tlog.memberlog``, role ``aggregator``) with what the store would
refuse. Each history goes into a bundle and through ``fedscreen audit verify``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from localnode import answer_locally
from securefed import AGGREGATOR, COORDINATOR, NODES, SecureHomes, make_secure_homes

from fedscreen._util.sqlite import connect
from fedscreen.aggregator.home import CONFIG_FILE
from fedscreen.aggregator.store import PartialStore
from fedscreen.analyst.query import make_query
from fedscreen.audit.bundle import write_bundle
from fedscreen.cli.main import main
from fedscreen.coordinator.core import Coordinator, Release
from fedscreen.coordinator.core import export_log as coordinator_log
from fedscreen.coordinator.partials import own_partial
from fedscreen.crypto.envelope import Envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.protocol import secure
from fedscreen.protocol.answer import VerifiedAnswer
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import SecureOutcome
from fedscreen.tlog import memberlog
from fedscreen.tlog.export import LogExport
from fedscreen.trust.identity import load_identity

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
EPSILON = 0.5
REFUSAL = "the coordinator's deadline passed 1 s before the start"


@dataclass
class Fed:
    homes: SecureHomes
    aggregator: PartialStore

    @property
    def manifest(self) -> str:
        return str(self.homes.auth / "manifest.json")

    def key(self, home: Path) -> SigningKey:
        return load_identity(home).signing_key()


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    homes = make_secure_homes(tmp_path, students=80)
    # the aggregator's home as ``aggregator init`` leaves it (its identity is securefed's)
    (homes.aggregator / CONFIG_FILE).write_text(f'[aggregator]\nid = "{AGGREGATOR}"\n')
    store = PartialStore(
        connect(homes.aggregator / "aggregator.db"),
        member_id=AGGREGATOR,
        key=load_identity(homes.aggregator).signing_key(),
    )
    try:
        yield Fed(homes, store)
    finally:
        store.close()


def _query(fed: Fed, epsilon: float = EPSILON) -> tuple[SignedQuery, bytes]:
    return make_query(fed.homes.analyst, SQL, epsilon=epsilon, accuracy=None, secure=True)


def _given(fed: Fed, query: SignedQuery, answers: Sequence[VerifiedAnswer]) -> bytes:
    """The aggregator's partial through its real store (made, stored and logged once)."""
    key = fed.key(fed.homes.aggregator)
    digests = {a.node_id: secure.answer_digest(a) for a in answers}
    given = fed.aggregator.give(
        query_id=query.query_id,
        key=secure.partial_key(query.spec, answers[0].answer.epsilon, digests),
        nodes=digests,
        make=lambda: secure.aggregate(
            query, answers, me=AGGREGATOR, key=key, academic_year=None, min_nodes=3
        ),
        sign=lambda body: _signed(body, key, query),
    )
    _new_body(AGGREGATOR, query, given)
    return given


#: the partial bodies signed in these tests, per (member, query id): two draws of the
#: small discrete noise here give the same body about once in a hundred pairs, and the
#: same body twice is one partial, not fresh noise over answers summed before
_SIGNED: dict[tuple[str, str], set[str]] = {}


def _new_body(member: str, query: SignedQuery, raw: bytes) -> bool:
    """Record the body of partial ``raw``; False if ``member`` signed it for ``query`` before."""
    body = json.loads(Envelope.from_json(raw).unverified_payload())["partial"]
    seen = _SIGNED.setdefault((member, query.query_id), set())
    text = json.dumps(body, sort_keys=True)
    if text in seen:
        return False
    seen.add(text)
    return True


def _signed(body: Mapping[str, Any], key: SigningKey, query: SignedQuery) -> bytes:
    envelope = secure.sign_partial(body, key, query_id=query.query_id, query_sha256=query.digest)
    return envelope.to_json().encode()


def _fresh(fed: Fed, home: Path, member: str, query: SignedQuery, answers: Any) -> bytes:
    """A partial with fresh noise, signed by ``member`` and stored nowhere: drawn again
    until its body differs from every one ``member`` signed for ``query`` (``_SIGNED``)."""
    key = fed.key(home)
    for _ in range(100):
        body = secure.aggregate(query, answers, me=member, key=key, academic_year=None, min_nodes=2)
        raw = _signed(body, key, query)
        if _new_body(member, query, raw):
            return raw
    raise AssertionError("100 draws of fresh noise gave no new partial")


def _log_partial(fed: Fed, query: SignedQuery, raw: bytes) -> None:
    """An entry as the aggregator's store writes it, of a partial it did not store."""
    with fed.aggregator.conn:
        memberlog.append(
            fed.aggregator.conn,
            member_id=AGGREGATOR,
            key=fed.key(fed.homes.aggregator),
            payload={"kind": "partial", "query_id": query.query_id, "partial": raw.decode()},
            role="aggregator",
        )


def _release(
    fed: Fed,
    query: SignedQuery,
    envelope: bytes,
    *,
    nodes: tuple[str, ...] = NODES,
    theirs: Any = _given,
    own: Any = None,
    failure: str | None = None,
) -> Release:
    """What the coordinator does for one secure query: accept, ask the nodes, make its
    own partial, get the aggregator's (``theirs(fed, query, answers)``), release."""
    coordinator = Coordinator.open(fed.homes.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        raw = {n: answer_locally(fed.homes.nodes[n], envelope) for n in nodes}
        missing = [n for n in NODES if n not in nodes]
        checked = coordinator.check_answers(accepted, raw, missing)
        answers = [a for _, (_, a) in sorted(checked.verified.items())]
        pair = (COORDINATOR, AGGREGATOR)
        if failure is not None:
            outcome = SecureOutcome(pair, failure=failure)
        else:
            mine = (own or _own)(coordinator, accepted, answers)
            partials = [
                (text.decode(), _verified(coordinator, member, text, accepted))
                for member, text in zip(pair, (mine, theirs(fed, accepted, answers)), strict=True)
            ]
            outcome = SecureOutcome(pair, (partials[0], partials[1]))
        return coordinator.release(accepted, raw, missing, checked=checked, secure=outcome)
    finally:
        coordinator.close()


def _own(coordinator: Coordinator, query: SignedQuery, answers: Any) -> bytes:
    own = own_partial(
        coordinator.conn,
        query,
        answers,
        member_id=coordinator.member_id,
        key=coordinator.key,
        policy=coordinator.policy,
        academic_year=None,
        now_ms=query.issued_at_ms,
    )
    _new_body(COORDINATOR, query, own)
    return own


def _verified(
    coordinator: Coordinator, member: str, text: bytes, query: SignedQuery
) -> secure.PartialBody:
    return secure.verify_partial(
        Envelope.from_json(text),
        manifest=coordinator.manifest,
        aggregator_id=member,
        expected_query=query,
    )


def _audit(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str], *, aggregator: bool = True,
    aggregator_log: LogExport | None = None,
) -> tuple[int, dict[str, Any], str]:  # fmt: skip
    """Bundle the coordinator's log (and the aggregator's), verify it through the CLI:
    exit code, the --json output and the text output (stdout and stderr)."""
    logs = [coordinator_log(fed.homes.coordinator)]
    if aggregator:
        logs.append(aggregator_log or fed.aggregator.export())
    bundle = tmp_path / "bundle.json"
    bundle.unlink(missing_ok=True)
    manifest = (fed.homes.auth / "manifest.json").read_text(encoding="utf-8")
    write_bundle(bundle, logs, manifest)
    code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest, "--json"])
    out = json.loads(capsys.readouterr().out)
    text_code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest])
    captured = capsys.readouterr()
    assert text_code == code
    return code, out, captured.out + captured.err


def _log(out: dict[str, Any], role: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        r for r in out["logs"] if r["origin"].startswith(f"fedscreen.{role}/")
    )
    return found


def test_honest_secure_releases_are_cross_checked_against_the_aggregators_log(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query, envelope = _query(fed)
    first = _release(fed, query, envelope)
    # the analyst resubmits the same signed query: the same answers, the same partials
    again = _release(fed, query, envelope)
    assert again.body["secure"]["partials"] == first.body["secure"]["partials"]
    # the same question under a new query id: the same answers, the same partial bodies
    # (their noise drawn once), signed for the new id
    asked, asked_envelope = _query(fed)
    anew = _release(fed, asked, asked_envelope)
    assert anew.body["province"] == first.body["province"]
    # a second query the aggregator refused: released without figures
    other, other_envelope = _query(fed, epsilon=0.25)
    fed.aggregator.refuse(other.query_id, REFUSAL)
    empty = _release(fed, other, other_envelope, failure=f"{AGGREGATOR}: {REFUSAL}")
    assert empty.body["province"] == []

    code, out, text = _audit(fed, tmp_path, capsys)
    assert code == 0, out
    assert _log(out, "coordinator")["secure"] == {
        "releases": 4,
        "cross_checked": {AGGREGATOR: 3},
        "without_figures": {f"{AGGREGATOR}: {REFUSAL}": 1},
        "unchecked": {},
    }
    assert _log(out, "aggregator")["secure"] == {
        "partials": 2,
        "bodies": 1,
        "checked_against_requests": 2,
        "unchecked": {},
    }
    assert _log(out, "aggregator")["refusals"] == 1
    assert (
        f"4 secure releases (3 cross-checked against {AGGREGATOR}'s log, "
        f"1 without figures: {AGGREGATOR}: {REFUSAL})"
    ) in text
    assert "2 secure partials (1 sums, 1 signed again for a resubmitted query id)" in text
    assert "WARNING" not in text


def test_audit_export_of_both_homes_is_cross_checked(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit export --home COORD --home AGG`` (the coordinator's first: no snapshot tail)."""
    query, envelope = _query(fed)
    _release(fed, query, envelope)
    bundle = tmp_path / "exported.json"
    homes = ["--home", str(fed.homes.coordinator), "--home", str(fed.homes.aggregator)]
    assert main(["audit", "export", *homes, "--out", str(bundle)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(bundle), "--manifest", fed.manifest]) == 0
    text = capsys.readouterr().out
    assert f"1 secure releases (1 cross-checked against {AGGREGATOR}'s log)" in text
    assert "1 verified against the coordinator's logged request" in text


def test_without_the_aggregators_log_the_releases_are_reported_unchecked(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 (an honest coordinator cannot hand over another department's log), and the
    report says the secure releases were not cross-checked, and why."""
    query, envelope = _query(fed)
    _release(fed, query, envelope)
    code, out, text = _audit(fed, tmp_path, capsys, aggregator=False)
    assert code == 0, out
    report = _log(out, "coordinator")["secure"]
    assert report["cross_checked"] == {}
    assert report["unchecked"] == {f"no log of {AGGREGATOR} in the bundle": 1}
    warning = f"WARNING: 1 secure releases not cross-checked: no log of {AGGREGATOR} in the bundle"
    assert warning in text


def test_a_release_after_the_end_of_the_aggregators_log_is_reported_unchecked(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The aggregator's log exported before the coordinator's last release (a snapshot
    taken earlier) is no disagreement; a gap before a release it holds is."""
    query, envelope = _query(fed)
    _release(fed, query, envelope)
    snapshot = fed.aggregator.export()
    later, later_envelope = _query(fed, epsilon=0.25)
    _release(fed, later, later_envelope)
    code, out, text = _audit(fed, tmp_path, capsys, aggregator_log=snapshot)
    assert code == 0, out
    assert _log(out, "coordinator")["secure"]["unchecked"] == {
        f"released after the end of {AGGREGATOR}'s log": 1
    }
    assert f"released after the end of {AGGREGATOR}'s log" in text
    # the other way round: the aggregator's log ends after the coordinator's
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 0, out


def test_a_release_whose_partial_the_aggregator_did_not_log_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The aggregator signs a partial with fresh noise and logs another one for the same
    query (or none, before one it logged): the logs disagree, exit 2 at the release."""

    def unlogged(fed: Fed, query: SignedQuery, answers: Any) -> bytes:
        _given(fed, query, answers)  # logged (and stored): the one the log shows
        return _fresh(fed, fed.homes.aggregator, AGGREGATOR, query, answers)

    query, envelope = _query(fed)
    release = _release(fed, query, envelope, theirs=unlogged)
    code, out, text = _audit(fed, tmp_path, capsys)
    assert code == 2
    assert out["origin"] == f"fedscreen.coordinator/{COORDINATOR}"
    index = out["index"]
    assert f"entry {index}: the release's partial from {AGGREGATOR} is not in" in out["reason"]
    assert release.body["query_id"] == query.query_id
    assert f"ENTRY INVALID (first bad index {index})" in text


def test_a_release_partial_reencoded_by_the_coordinator_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The aggregator's envelope as the release carries it must be the logged bytes: one
    re-encoded (its signature still verifies) is not what the aggregator logged."""

    def reencoded(fed: Fed, query: SignedQuery, answers: Any) -> bytes:
        logged = _given(fed, query, answers)
        return json.dumps(json.loads(logged), indent=1).encode()

    query, envelope = _query(fed)
    release = _release(fed, query, envelope, theirs=reencoded)
    assert release.body["secure"]["partials"][1] not in _aggregator_texts(fed)
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 2, out
    assert f"the release's partial from {AGGREGATOR} is not in" in out["reason"]


def test_an_unlogged_partial_before_a_logged_one_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def unlogged(fed: Fed, query: SignedQuery, answers: Any) -> bytes:
        return _fresh(fed, fed.homes.aggregator, AGGREGATOR, query, answers)

    first, first_envelope = _query(fed)
    _release(fed, first, first_envelope, theirs=unlogged)
    second, second_envelope = _query(fed, epsilon=0.25)
    _release(fed, second, second_envelope)
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 2
    assert "is not in" in out["reason"]
    assert out["origin"].startswith("fedscreen.coordinator/")


def test_an_answer_summed_into_two_partials_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The use-once rule in the aggregator's log: the same answers, fresh noise again."""
    query, envelope = _query(fed)
    _release(fed, query, envelope)
    answers = _verified_answers(fed, query, envelope)
    _log_partial(fed, query, _fresh(fed, fed.homes.aggregator, AGGREGATOR, query, answers))
    code, out, text = _audit(fed, tmp_path, capsys)
    assert code == 2, out
    assert out["origin"] == f"fedscreen.aggregator/{AGGREGATOR}"
    assert "use-once" in out["reason"]
    assert out["index"] == len(fed.aggregator.export().entries) - 1
    assert "ENTRY INVALID" in text


def test_a_partial_over_too_few_nodes_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewer answers than the catalogue's secure.min_nodes: in the aggregator's log, and
    in a release (both partials over two counties)."""
    query, envelope = _query(fed)
    answers = _verified_answers(fed, query, envelope)[:2]
    _log_partial(fed, query, _fresh(fed, fed.homes.aggregator, AGGREGATOR, query, answers))
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 2
    assert out["origin"].startswith("fedscreen.aggregator/")
    assert "fewer than the catalogue's minimum of 3" in out["reason"]


def test_a_release_over_too_few_nodes_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def own(coordinator: Coordinator, query: SignedQuery, answers: Any) -> bytes:
        return _fresh(fed, fed.homes.coordinator, COORDINATOR, query, answers)

    def theirs(fed: Fed, query: SignedQuery, answers: Any) -> bytes:
        return _fresh(fed, fed.homes.aggregator, AGGREGATOR, query, answers)

    query, envelope = _query(fed)
    release = _release(fed, query, envelope, nodes=NODES[:2], own=own, theirs=theirs)
    assert len(release.body["answered"]) == 2
    code, out, _ = _audit(fed, tmp_path, capsys, aggregator=False)
    assert code == 2
    assert out["origin"].startswith("fedscreen.coordinator/")
    assert out["index"] == len(coordinator_log(fed.homes.coordinator).entries) - 1
    # check_release refuses it (protocol: the catalogue's or a county's minimum), or the
    # auditor's own count does
    assert re.search(r"minimum|fewer than 3", out["reason"]), out


def test_a_coordinator_partial_with_fresh_noise_over_the_same_answers_fails(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The use-once rule in the coordinator's log: a resubmitted query released with a
    coordinator partial whose noise was drawn again."""

    def own(coordinator: Coordinator, query: SignedQuery, answers: Any) -> bytes:
        return _fresh(fed, fed.homes.coordinator, COORDINATOR, query, answers)

    query, envelope = _query(fed)
    _release(fed, query, envelope, own=own)
    second = _release(fed, query, envelope, own=own)
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 2, out
    assert out["origin"] == f"fedscreen.coordinator/{COORDINATOR}"
    assert "use-once" in out["reason"]
    assert second.body["secure"]["partials"][1] in _aggregator_texts(fed)


def test_a_partial_for_a_request_the_coordinator_never_logged(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the last partial whose request the coordinator's log holds: not cross-checked
    (the coordinator's log may end earlier); before one: the logs disagree (exit 2)."""
    query, envelope = _query(fed)
    _release(fed, query, envelope)
    # the aggregator sums answers to a query the coordinator never logged a request of
    unseen, unseen_envelope = _query(fed, epsilon=0.25)
    _given(fed, unseen, _verified_answers(fed, unseen, unseen_envelope))
    code, out, text = _audit(fed, tmp_path, capsys)
    assert code == 0, out
    assert _log(out, "aggregator")["secure"]["unchecked"] == {
        "logged after the end of the coordinator's log": 1
    }
    assert "WARNING: 1 secure partials not cross-checked: logged after the end of" in text
    later, later_envelope = _query(fed, epsilon=0.125)
    _release(fed, later, later_envelope)
    code, out, _ = _audit(fed, tmp_path, capsys)
    assert code == 2, out
    assert out["origin"] == f"fedscreen.aggregator/{AGGREGATOR}"
    assert "holds no secure request" in out["reason"]


def _aggregator_texts(fed: Fed) -> list[str]:
    rows = fed.aggregator.conn.execute("SELECT envelope FROM partial_given").fetchall()
    return [bytes(envelope).decode() for (envelope,) in rows]


def _verified_answers(fed: Fed, query: SignedQuery, envelope: bytes) -> list[VerifiedAnswer]:
    """The nodes' (stored) answers to ``query``, verified as the coordinator verifies them."""
    coordinator = Coordinator.open(fed.homes.coordinator)
    try:
        raw = {n: answer_locally(fed.homes.nodes[n], envelope) for n in NODES}
        checked = coordinator.check_answers(query, raw, [])
    finally:
        coordinator.close()
    return [a for _, (_, a) in sorted(checked.verified.items())]
