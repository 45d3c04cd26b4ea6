"""Manifest history (issue 11 item 3): an old log verifies after a later revocation; a
signature logged after the revocation does not; a bundle's manifest copies are checked.

The federation of ``test_federation.py`` (its builder and helpers, reused): a real
coordinator and three real node processes. The analyst's query is answered; the
province revokes the analyst (``pki revoke``, ``identity update-manifest`` on the
coordinator's home); the analyst's next query makes the running coordinator pick up
the new manifest, log it, and refuse. The coordinator's log is exported with the
authority's history and verified with the authority's newest manifest, in which the
analyst is revoked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_federation import (
    ANALYST,
    Federation,
    _cli,
    _failure,
    _query,
    _submit,
    _verified,
    run,
    running_federation,
)

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.core import Coordinator
from fedscreen.rpc.client import Submitted
from fedscreen.trust import authority


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("manifest-history")) as federation:
        yield federation


def _export(fed: Federation, name: str) -> Path:
    bundle = fed.root / name
    done = _cli(
        "audit", "export", "--home", str(fed.coordinator_home),
        "--manifests", str(fed.auth / "manifests"), "--out", str(bundle),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return bundle


def _verify(fed: Federation, bundle: Path) -> tuple[int, dict[str, Any]]:
    done = _cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"),
                "--json")  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def test_an_old_log_verifies_after_a_revocation_and_a_later_signature_fails(
    fed: Federation,
) -> None:
    query, envelope = _query(fed)

    async def ask() -> Submitted:
        return await _submit(fed, envelope)

    assert _verified(fed, query, run(ask))["answered"]
    revoked = _cli("pki", "revoke", "--dir", str(fed.auth), "--id", ANALYST)
    assert revoked.returncode == 0, revoked.stderr
    updated = _cli(
        "identity", "update-manifest", "--home", str(fed.coordinator_home),
        "--manifest", str(fed.auth / "manifest.json"),
    )  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    _, again = _query(fed)

    async def refused() -> Submitted:
        return await _submit(fed, again)

    _failure(refused)  # the coordinator picks up the revocation (and logs it) before refusing

    # the honest log: every entry before the revocation was signed by an active analyst
    code, report = _verify(fed, _export(fed, "honest.bundle"))
    assert code == 0, report
    (log,) = report["logs"]
    assert (log["requests"], log["releases"]) == (1, 1)
    history = json.loads((fed.root / "honest.bundle").read_text())["manifests"]
    assert len(history) == authority.current_manifest(fed.auth).version + 1

    # a dishonest coordinator logs a query the revoked analyst signed after the revocation
    forged_query, forged = make_query(fed.analyst.home, "SELECT COUNT(*) FROM screenings "
                                      "WHERE academic_year = '2024-2025'", epsilon=0.1,
                                      accuracy=None)  # fmt: skip
    coordinator = Coordinator.open(fed.coordinator_home)
    try:
        at = coordinator.log.size()
        coordinator.record(
            {"kind": "request", "query_id": forged_query.query_id, "envelope": forged.decode()}
        )
    finally:
        coordinator.close()
    code, report = _verify(fed, _export(fed, "forged.bundle"))
    assert code == 2, report
    assert report["index"] == at
    assert report["origin"] == "fedscreen.coordinator/coordinator"


def test_a_bundle_with_an_edited_manifest_copy_is_untrusted(fed: Federation) -> None:
    bundle = _export(fed, "copies.bundle")
    for field in ("manifest", "manifests"):
        doc = json.loads(bundle.read_text())
        copy = doc["manifest"] if field == "manifest" else doc["manifests"][0]
        body = json.loads(base64.b64decode(copy["envelope"]["payload"]))
        body["issued_at"] = "2020-01-01T00:00:00+00:00"  # one field, signature kept
        copy["envelope"]["payload"] = base64.b64encode(
            json.dumps(body, ensure_ascii=False).encode()
        ).decode()
        edited = fed.root / f"edited-{field}.bundle"
        edited.write_text(json.dumps(doc, ensure_ascii=False))
        code, report = _verify(fed, edited)
        assert code == 4, (field, report)
        assert "manifest copy" in report["reason"]
        assert report["valid"] is False
