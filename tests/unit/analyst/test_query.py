"""The analyst's side: a signed query knows its digest; a bad release is a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedscreen._util.canonical import canonical_json
from fedscreen.analyst.query import make_query, verify_release
from fedscreen.coordinator.core import init_coordinator
from fedscreen.crypto.envelope import RELEASE_V1, Envelope, sign_envelope
from fedscreen.errors import VerificationError
from fedscreen.protocol.query import verify_query
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path]:
    """An analyst's home and a coordinator's home of one federation."""
    auth, analyst, coordinator = tmp_path / "auth", tmp_path / "analyst", tmp_path / "coord"
    authority.init_authority(auth, federation="test")
    create_identity(analyst, member_id="alice", role="analyst", name="Alice")
    init_coordinator(coordinator, member_id="coordinator", name="省平台")
    for home in (analyst, coordinator):
        issue_here(auth, home)
    text = authority.manifest_text(auth)
    for home in (analyst, coordinator):
        update_manifest(home, text)
    return analyst, coordinator


def test_the_signed_query_carries_the_digest_every_verifier_computes(
    homes: tuple[Path, Path],
) -> None:
    analyst, _ = homes
    query, envelope = make_query(analyst, SQL, epsilon=0.1, accuracy=None)
    manifest = load_identity(analyst).manifest()
    verified = verify_query(Envelope.from_json(envelope), manifest=manifest, now_ms=0,
                            window_ms=2**62)  # fmt: skip
    assert verified == query
    assert len(query.digest) == 64


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"query_id": "x"},
        {"answers": "none"},
        {"answers": [{"node_id": 7}], "per_node": {}, "threshold": 10},
    ],
)
def test_a_well_signed_malformed_release_is_a_verification_error(
    homes: tuple[Path, Path], body: Any
) -> None:
    analyst, coordinator = homes
    query, _ = make_query(analyst, SQL, epsilon=0.1, accuracy=None)
    if isinstance(body, dict):
        body = {**body, "query_id": query.query_id}
    key = load_identity(coordinator).signing_key()
    release = sign_envelope(payload_type=RELEASE_V1, payload=canonical_json(body), key=key)
    with pytest.raises(VerificationError, match="malformed release"):
        verify_release(
            release.to_json().encode(),
            manifest=load_identity(analyst).manifest(),
            query=query,
            answers={},
        )
