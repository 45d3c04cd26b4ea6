"""The coordinator's side of offline nodes, in process: queue, outbox, inbox, versions.

Real homes (authority, coordinator, analyst, two county nodes with synthetic rows, one
of them offline), real signatures and SQLite; the node answers the outbox through
``node.offline.answer_outbox`` as ``fedscreen node answer-file`` does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from offlinefed import OFFLINE, ONLINE, SQL, Fed, ask, make_fed, trip

from fedscreen.analyst.query import make_query
from fedscreen.coordinator import offline
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.inbox import import_answers
from fedscreen.coordinator.offline import (
    NO_SECURE,
    QUEUED,
    make_outbox,
    queue_offline,
    queued_counts,
)
from fedscreen.coordinator.releases import newest_release
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node import offline as node_offline
from fedscreen.node.offline import answer_outbox
from fedscreen.protocol.query import SignedQuery, verify_query
from fedscreen.protocol.release import parse_release
from fedscreen.trust import authority
from fedscreen.trust.identity import update_manifest

DAY_MS = 86_400_000


@pytest.fixture
def fed(tmp_path: Path) -> Fed:
    return make_fed(tmp_path)


def _ask(fed: Fed, core: Coordinator, *, secure: bool = False) -> tuple[str, dict[str, str]]:
    return ask(fed, core, secure=secure)


def _trip(fed: Fed, core: Coordinator, name: str, *, later_ms: int = 0) -> str:
    return str(trip(fed, core, name, later_ms=later_ms))


def test_a_late_answer_makes_the_next_release_version(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        query_id, why = _ask(fed, core)
        assert why == {OFFLINE: QUEUED}
        assert queued_counts(fed.coordinator) == {OFFLINE: 1}
        first = newest_release(core.conn, query_id)
        assert first is not None
        assert first.release_version == 1
        assert first.missing == (OFFLINE,)
        done = import_answers(core, Path(_trip(fed, core, "a.json")).read_bytes())
        assert done.released == [(query_id, 2)]
        second = newest_release(core.conn, query_id)
        assert second is not None
        assert second.missing == ()
        body = parse_release(json.loads(_payload(second.envelope)))
        assert (body.release_version, body.supersedes) == (2, first.digest)
        assert queued_counts(fed.coordinator) == {}
        # the same file again changes nothing
        again = import_answers(core, Path(fed.root / "a.json").read_bytes())
        assert again.released == []
        assert [w for _, w in again.unchanged]
        assert newest_release(core.conn, query_id) == second
    finally:
        core.close()


def test_a_refusal_makes_a_version_saying_why_the_node_is_missing(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        query_id, _ = _ask(fed, core)
        # carried to the node 31 days later: past the catalogue's 30-day window
        path = _trip(fed, core, "late.json", later_ms=31 * DAY_MS)
        done = import_answers(core, Path(path).read_bytes())
        assert [q for q, _ in done.refused] == [query_id]
        assert done.refused[0][1].startswith("refused: stale:")
        newest = newest_release(core.conn, query_id)
        assert newest is not None
        assert newest.release_version == 2
        assert newest.missing == (OFFLINE,)
        assert newest.reasons[OFFLINE].startswith("refused: stale:")
        assert queued_counts(fed.coordinator) == {}
    finally:
        core.close()


def test_a_resubmitted_query_is_queued_again(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        _query, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None)
        accepted = core.accept(envelope, now_ms=int(time.time() * 1000))
        queue_offline(core, accepted, envelope, [OFFLINE], academic_year=None)
        core.conn.execute("UPDATE offline_queue SET settled_ms = 1, outcome = 'answered'")
        core.conn.commit()
        assert queued_counts(fed.coordinator) == {}
        queue_offline(core, accepted, envelope, [OFFLINE], academic_year=None)
        assert queued_counts(fed.coordinator) == {OFFLINE: 1}
    finally:
        core.close()


def test_secure_queries_are_not_queued(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        _query, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None, secure=True)
        accepted = _parse(core, envelope)
        why = queue_offline(core, accepted, envelope, [ONLINE, OFFLINE], academic_year=None)
        assert why == {OFFLINE: NO_SECURE}
        assert queued_counts(fed.coordinator) == {}
    finally:
        core.close()


def test_an_outbox_is_only_for_an_active_offline_node(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        with pytest.raises(ConfigError, match="not marked offline"):
            make_outbox(core, ONLINE)
        with pytest.raises(ConfigError, match="not an active member"):
            make_outbox(core, "999999")
    finally:
        core.close()


def test_an_answer_file_for_an_outbox_never_made_is_refused(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        _ask(fed, core)
        path = Path(_trip(fed, core, "a.json"))
        core.conn.execute("DELETE FROM offline_outbox")
        core.conn.commit()
        size = core.log.size()
        with pytest.raises(VerificationError, match="did not make"):
            import_answers(core, path.read_bytes())
        assert core.log.size() == size
    finally:
        core.close()


def _parse(core: Coordinator, envelope: bytes) -> SignedQuery:
    """A signed query without the coordinator's early checks (a secure query needs an
    aggregator in the manifest for ``accept``; queueing does not)."""
    return verify_query(
        Envelope.from_json(envelope), manifest=core.manifest, now_ms=int(time.time() * 1000)
    )


def _payload(envelope: bytes) -> bytes:
    return Envelope.from_json(envelope).unverified_payload()


def test_an_outbox_and_an_answer_file_stay_within_the_file_limit(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries that do not fit wait for the next outbox; answers that do not fit are not
    made (nor charged) and come with the next one."""
    core = Coordinator.open(fed.coordinator)
    try:
        ids = [_ask(fed, core)[0] for _ in range(6)]
        full, count = make_outbox(core, OFFLINE)
        assert count == 6
        monkeypatch.setattr(offline, "MAX_FILE_BYTES", len(full) - 1)
        trimmed, count = make_outbox(core, OFFLINE)
        assert 0 < count < 6
        assert len(trimmed) < len(full)
        # the node: one answer fills its file; the others are deferred, uncharged
        monkeypatch.setattr(node_offline, "ANSWER_BYTES", 1)
        out = fed.root / "first.json"
        done = answer_outbox(fed.nodes[OFFLINE].home, full, out)
        assert len(done.answered) == 1
        assert done.deferred == ids[1:]
        imported = import_answers(core, out.read_bytes())
        assert imported.released == [(ids[0], 2)]
        assert queued_counts(fed.coordinator) == {OFFLINE: 5}
    finally:
        core.close()


def test_an_outbox_from_a_size_the_log_never_had_is_refused(fed: Fed) -> None:
    core = Coordinator.open(fed.coordinator)
    try:
        _ask(fed, core)
        for size in (-5, core.log.size() + 1, 10**20):
            with pytest.raises(ConfigError, match="--from-size"):
                make_outbox(core, OFFLINE, from_size=size)
    finally:
        core.close()


def test_queries_queued_before_a_node_went_online_are_named(fed: Fed) -> None:
    """Back online, a node answers no outbox: its queued queries are not carried any more,
    and the province is told to ask them again."""
    core = Coordinator.open(fed.coordinator)
    try:
        _ask(fed, core)
        authority.set_offline(fed.auth, OFFLINE, offline=False)
        update_manifest(fed.coordinator, authority.manifest_text(fed.auth))
        with pytest.raises(ConfigError, match="1 queries queued while it was offline"):
            make_outbox(core, OFFLINE)
    finally:
        core.close()
