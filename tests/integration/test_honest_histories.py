"""An honest coordinator's log verifies after an analyst resubmits a query id (issue 11).

The same federation as ``test_federation.py`` (its builder and helpers, reused):
a real coordinator and three real node processes. The analyst submits a query,
one node dies, the analyst submits the same signed query again: the coordinator
logs a second request, the two answers it got and a partial release. The
exported logs must verify, and the auditor says what it saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_federation import (
    NODES,
    Federation,
    _cli,
    _query,
    _submit,
    _verified,
    run,
    running_federation,
)

from fedscreen.rpc.client import Submitted


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("histories")) as federation:
        yield federation


def test_a_resubmitted_query_id_after_a_node_died_verifies(fed: Federation) -> None:
    query, envelope = _query(fed)

    async def first() -> Submitted:
        return await _submit(fed, envelope)

    assert _verified(fed, query, run(first))["answered"] == sorted(NODES)
    victim = NODES[1]
    fed.kill_node(victim)

    async def again() -> Submitted:
        return await _submit(fed, envelope, deadline_ms=5_000)

    replay = run(again)
    assert replay.missing == (victim,)
    assert _verified(fed, query, replay)["answered"] == sorted(set(NODES) - {victim})

    bundle = fed.root / "histories.bundle"
    homes = [fed.coordinator_home, *(fed.node_home(n) for n in NODES)]
    args = [a for h in homes for a in ("--home", str(h))]
    exported = _cli("audit", "export", *args, "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    manifest = str(fed.auth / "manifest.json")
    done = _cli("audit", "verify", str(bundle), "--manifest", manifest, "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    logs = json.loads(done.stdout)["logs"]
    coordinator = next(r for r in logs if r["origin"].startswith("fedscreen.coordinator/"))
    assert coordinator["requests"] == 2
    assert coordinator["resubmissions"] == 1
    assert coordinator["releases"] == 2
    assert coordinator["partial_releases"] == 1
    assert coordinator["unreleased"] == 0
    assert coordinator["answers"] == 2 * len(NODES) - 1
    text = _cli("audit", "verify", str(bundle), "--manifest", manifest)
    assert text.returncode == 0, text.stderr
    assert "2 requests (1 resubmitted query ids), 2 releases (1 partial)" in text.stdout
    fed.start_node(victim)
