"""A county re-keyed (revoked, then re-added under its id with a new key): its logs under
either key verify, and the coordinator's evidence about it is checked with the key in
force (issue 11, the trust testers' T5).

The federation of ``test_coordinator_histories`` (real coordinator core, real node
homes, in process). The county's old home keeps the log it signed with its old key;
its new home starts a fresh log under the new key. Both are exported with the
authority's manifest history, as an auditor of a re-keyed federation must.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from exportrows import screening_row, write_csv
from test_coordinator_histories import COUNTIES, SQL, Federation, _submit, fed

from fedscreen.analyst.query import make_query
from fedscreen.audit.bundle import read_bundle
from fedscreen.cli.main import main
from fedscreen.coordinator.core import Coordinator
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.rollback import guarded, recover
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here, update_manifest

__all__ = ["fed"]  # the fixture, reused

REKEYED = COUNTIES[0]


def _rekey(fed: Federation, root: Path) -> NodeConfig:
    """The province revokes the county's key and issues it a new home and key; every
    member (the new home too) is handed the newest manifest."""
    authority.revoke(fed.auth, REKEYED)
    config = init_home(root / f"{REKEYED}-rekeyed", node_id=REKEYED, name=REKEYED)
    issue_here(fed.auth, config.home)
    rows = [screening_row(i, county_code=REKEYED, sex="F" if i % 3 else "M") for i in range(1, 70)]
    ingest_paths(config, [write_csv(root / "rekeyed.csv", rows)])
    text = authority.manifest_text(fed.auth)
    for home in (fed.coordinator, fed.analyst, config.home, *(c.home for c in fed.nodes.values())):
        update_manifest(home, text)
    return config


def _verify(
    fed: Federation, root: Path, capsys: pytest.CaptureFixture[str], *homes: Path, history: bool
) -> tuple[int, dict[str, Any]]:
    bundle = root / "bundle.json"
    bundle.unlink(missing_ok=True)
    args = [a for home in homes for a in ("--home", str(home))]
    if history:
        args += ["--manifests", str(fed.auth / "manifests")]
    assert main(["audit", "export", *args, "--out", str(bundle)]) == 0
    capsys.readouterr()
    code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _latest_note(home: Path, root: Path) -> str:
    path = root / f"{home.name}.bundle"
    assert main(["audit", "export", "--home", str(home), "--out", str(path)]) == 0
    return read_bundle(path).logs[0].checkpoints[-1]


def test_a_rekeyed_countys_old_and_new_logs_verify(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = fed.nodes[REKEYED]
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    _submit(fed, query, envelope, COUNTIES)  # answered under the old key
    fed.nodes[REKEYED] = _rekey(fed, tmp_path)
    code, out = _verify(fed, tmp_path, capsys, old.home, fed.coordinator, history=True)
    assert code == 0, out
    # without the history, the old home's own manifest copy names the old key
    code, out = _verify(fed, tmp_path, capsys, old.home, history=False)
    assert code == 0, out
    # answered under the new key; both of the county's logs in one bundle, no split view
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.4, accuracy=None)
    release = _submit(fed, query, envelope, COUNTIES)
    assert REKEYED in release.answers
    homes = [fed.coordinator, old.home, *(c.home for c in fed.nodes.values())]
    code, out = _verify(fed, tmp_path, capsys, *homes, history=True)
    assert code == 0, out
    origins = [log["origin"] for log in out["logs"]]
    assert origins.count(f"fedscreen.node/{REKEYED}") == 2
    coordinator = next(log for log in out["logs"] if log["member_id"] == "coordinator")
    assert (coordinator["requests"], coordinator["releases"]) == (2, 2)


def test_quarantine_evidence_signed_under_the_old_and_the_new_key_verifies(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a coordinator that kept the old key's checkpoint logged at the county's first
    answer under its new key: the evidence is the county's, under its two keys."""
    old = fed.nodes[REKEYED]
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    _submit(fed, query, envelope, COUNTIES)
    held = _latest_note(old.home, tmp_path)
    fed.nodes[REKEYED] = new = _rekey(fed, tmp_path)
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.4, accuracy=None)
    _submit(fed, query, envelope, COUNTIES)
    presented = _latest_note(new.home, tmp_path)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        coordinator.record(
            {
                "kind": "quarantine",
                "node": REKEYED,
                "reason": "its log forked",
                "held_checkpoint": held,
                "presented_checkpoint": presented,
            }
        )
        coordinator.record({"kind": "readmit", "node": REKEYED, "reason": "re-keyed"})
    finally:
        coordinator.close()
    code, out = _verify(fed, tmp_path, capsys, fed.coordinator, history=True)
    assert code == 0, out
    assert (out["logs"][0]["quarantines"], out["logs"][0]["readmissions"]) == (1, 1)


def test_a_rollback_recorded_under_the_old_key_verifies_after_the_rekey(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old log holds a ``node recover`` entry whose checkpoints the old key signed."""
    old = fed.nodes[REKEYED]
    backup = tmp_path / "backup.db"
    _submit(fed, *make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None), COUNTIES)
    with guarded(old) as conn:  # the node's checkpoint file follows its log
        target = sqlite3.connect(backup)
        try:
            conn.backup(target)
        finally:
            target.close()
    _submit(fed, *make_query(fed.analyst, SQL, epsilon=0.4, accuracy=None), COUNTIES)
    with guarded(old):
        pass
    conn = store.connect(old.database)
    source = sqlite3.connect(backup)
    try:  # the database put back from the backup
        source.backup(conn)
    finally:
        source.close()
        conn.close()
    recover(old, reason="restored from a backup", at="2026-12-06T21:00:00+00:00")
    fed.nodes[REKEYED] = _rekey(fed, tmp_path)
    code, out = _verify(fed, tmp_path, capsys, old.home, history=True)
    assert code == 0, out
    assert out["logs"][0]["rollbacks"] == 1
