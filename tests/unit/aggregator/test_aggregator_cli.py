"""``fedscreen aggregator …`` and the aggregator's log in audit bundles, run in process.

A home made by ``aggregator init`` and issued by ``pki issue`` (as an operator would),
a partial and a refusal made through the real request path, then ``aggregator status``,
``audit export --home AGG`` and ``audit verify``: the log verifies, and an altered entry
does not.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from aggregatorhelp import FOUR, node_answers, secure_query, work
from securefed import AGGREGATOR, SecureHomes, make_secure_homes

from fedscreen.aggregator.home import AggregatorHome
from fedscreen.aggregator.store import PartialStore
from fedscreen.aggregator.work import answer_request
from fedscreen.cli.main import main
from fedscreen.crypto.envelope import parse_json
from fedscreen.errors import QueryRefused
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> SecureHomes:
    return make_secure_homes(tmp_path_factory.mktemp("cli"), students=120, nodes=FOUR)


def test_init_issue_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth, home = tmp_path / "auth", tmp_path / "agg"
    assert main(["pki", "init", "--dir", str(auth), "--federation", "test"]) == 0
    argv = ["aggregator", "init", "--home", str(home), "--id", "stats-2", "--name", "省统计局"]
    assert main(argv) == 0
    assert main(argv) != 0  # never over an existing home
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["pki", "issue", "--dir", str(auth), "--home", str(home)]) == 0
    identity = load_identity(home)
    assert (identity.role, identity.member_id) == ("aggregator", "stats-2")
    assert identity.member_id in identity.manifest().active("aggregator")
    capsys.readouterr()
    assert main(["aggregator", "status", "--home", str(home), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status == {
        "aggregator_id": "stats-2", "log_size": 0, "partials_made": 0, "partials_given": 0,
        "refusals": 0, "last_refusal": None,
    }  # fmt: skip


def test_a_node_home_is_not_an_aggregator(
    homes: SecureHomes, capsys: pytest.CaptureFixture[str]
) -> None:
    node = next(iter(homes.nodes.values())).home
    assert main(["aggregator", "status", "--home", str(node)]) != 0
    assert "not an aggregator home" in capsys.readouterr().err


def _serve_two(homes: SecureHomes) -> None:
    """One partial and one refusal, through the real request path and store."""
    home = AggregatorHome.open(homes.aggregator)
    store = PartialStore.open(home)
    try:
        query, envelope = secure_query(homes)
        answers = node_answers(homes, query, envelope)
        now = int(time.time() * 1000)
        answer_request(work(query, envelope, answers[:3]), home=home, store=store, now_ms=now)
        with pytest.raises(QueryRefused):
            answer_request(work(query, envelope, answers[:2]), home=home, store=store, now_ms=now)
    finally:
        store.close()


def test_the_log_is_exported_and_verified(
    homes: SecureHomes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _serve_two(homes)
    capsys.readouterr()
    assert main(["aggregator", "status", "--home", str(homes.aggregator)]) == 0
    shown = capsys.readouterr().out
    assert "partials: 1 made, 1 given" in shown
    assert "refusals: 1" in shown
    assert "at least 3" in shown
    bundle = tmp_path / "agg.bundle"
    assert main(["audit", "export", "--home", str(homes.aggregator), "--out", str(bundle)]) == 0
    assert f"fedscreen.aggregator/{AGGREGATOR}" in capsys.readouterr().out
    manifest = homes.aggregator / "manifest.json"
    assert main(["audit", "verify", str(bundle), "--manifest", str(manifest), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (log,) = report["logs"]
    # the manifest version it started with, a partial and a refusal
    assert log["origin"] == f"fedscreen.aggregator/{AGGREGATOR}"
    assert log["size"] == 3

    # a partial entry altered inside: its signature no longer verifies
    data = json.loads(bundle.read_text(encoding="utf-8"))
    entries = data["logs"][0]["entries"]
    raw = base64.b64decode(entries[1])
    entries[1] = base64.b64encode(raw.replace(b'"sig":"', b'"sig":"A', 1)).decode()
    altered = tmp_path / "altered.bundle"
    altered.write_text(json.dumps(data), encoding="utf-8")
    assert main(["audit", "verify", str(altered), "--manifest", str(manifest)]) != 0


def test_a_newer_manifest_in_the_home_is_used_and_logged_without_restart(
    tmp_path: Path,
) -> None:
    homes = make_secure_homes(tmp_path, students=60, nodes=FOUR[:3])
    home = AggregatorHome.open(homes.aggregator)
    store = PartialStore.open(home)
    try:
        query, envelope = secure_query(homes)
        answers = node_answers(homes, query, envelope)
        now = int(time.time() * 1000)
        # the first request logs the manifest in force, then its partial
        answer_request(work(query, envelope, answers), home=home, store=store, now_ms=now)
        assert store.status().log_size == 2
        # the province admits another analyst: version + 1, installed in the home only
        create_identity(tmp_path / "bob", member_id="bob", role="analyst", name="Bob")
        issue_here(homes.auth, tmp_path / "bob")
        newer = authority.manifest_text(homes.auth)
        update_manifest(homes.aggregator, newer)
        for config in homes.nodes.values():
            update_manifest(config.home, newer)
        update_manifest(homes.analyst, newer)
        query, envelope = secure_query(homes)
        answers = node_answers(homes, query, envelope)
        answer_request(work(query, envelope, answers), home=home, store=store, now_ms=now)
        assert store.status().log_size == 4  # the newer manifest, then the partial
        logged = parse_json(base64.b64decode(parse_json(store.export().entries[2])["payload"]))
        assert logged["kind"] == "manifest"
        assert logged["version"] == load_identity(homes.aggregator).manifest().version
    finally:
        store.close()
