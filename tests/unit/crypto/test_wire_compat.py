"""What is signed stays what it was: envelopes and a manifest signed by fedscreen before
the package layout change (``tests/data/wire/pre-layout.json``) verify and are
reproduced byte for byte. A payload type is part of what DSSE signs, so renaming a
module must never rename one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedscreen.crypto import envelope
from fedscreen.crypto.envelope import Envelope, sign_envelope, verify_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.trust.manifest import Manifest, Member, parse_manifest, sign_manifest

KNOWN = Path(__file__).resolve().parents[2] / "data" / "wire" / "pre-layout.json"


@pytest.fixture(scope="module")
def known() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(KNOWN.read_text(encoding="utf-8"))
    return data


def test_payload_types_are_pinned(known: dict[str, Any]) -> None:
    assert len(known["payload_types"]) == 6
    for name, value in known["payload_types"].items():
        assert getattr(envelope, name) == value, name


def test_envelopes_signed_before_verify_and_are_reproduced(known: dict[str, Any]) -> None:
    key = SigningKey(bytes.fromhex(known["member_seed_hex"]))
    for name, text in known["envelopes"].items():
        payload_type = getattr(envelope, name)
        parsed = Envelope.from_json(text)
        payload = verify_envelope(
            parsed, expected_payload_type=payload_type, trusted_keys={key.key_id: key.public_key}
        )
        assert payload == b'{"k":1}'
        again = sign_envelope(payload_type=payload_type, payload=payload, key=key).to_json()
        assert again == text, name


def test_a_manifest_signed_before_loads_and_is_reproduced(known: dict[str, Any]) -> None:
    authority = SigningKey(bytes.fromhex(known["authority_seed_hex"]))
    manifest = parse_manifest(known["manifest"], authority_key=authority.public_key)
    assert manifest.version == 3
    assert manifest.active("node") == ("130102",)
    assert manifest.coordinator() == "coordinator"
    node = manifest.member("130102", role="node")
    assert isinstance(node, Member)
    rebuilt = Manifest(
        federation=manifest.federation,
        version=manifest.version,
        issued_at=manifest.issued_at,
        authority_key=manifest.authority_key,
        members=manifest.members,
        ca_sha256=manifest.ca_sha256,
    )
    assert sign_manifest(rebuilt, key=authority) == known["manifest"]
