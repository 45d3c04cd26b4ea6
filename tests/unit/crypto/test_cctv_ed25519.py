"""Ed25519 edge cases from C2SP CCTV (tests/vectors/cctv-ed25519/), verdict pinned.

Verifiers differ on low-order and non-canonical points (CCTV's ed25519 README).
fedscreen verifies with libsodium, whose verdict on these 914 vectors is pinned
here, case by case, so a signer and an auditor using fedscreen.crypto.signing
agree, and a change of library or build that moves any case fails this test.

libsodium does NOT reject all 914. It rejects every vector flagged low_order_A,
low_order_R, non_canonical_A, non_canonical_R, low_order_residue or reencoded_k
(871), and accepts the 43 whose flags are only low_order_component_A/_R (points
with a low-order and a prime-order component, which a blocklist cannot catch:
42 cases) or empty (one ordinary valid signature, number 305). That is the
partition CCTV describes for ed25519-dalek's verify_strict().
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedscreen.crypto.signing import check_public_key, verify_signature
from fedscreen.errors import VerificationError

# Copied unchanged from C2SP/CCTV ed25519/; source, commit and licence in
# tests/vectors/README.md.
CCTV = Path(__file__).resolve().parents[2] / "vectors" / "cctv-ed25519" / "ed25519vectors.json"
CASES = 914  # the file at the recorded commit
ACCEPTED = 43  # how many of them libsodium accepts (see the module docstring)
# Flags a case may carry and still verify: mixed-order points, not blocklistable.
MIXED_ORDER = {"low_order_component_A", "low_order_component_R"}
# Flags that make libsodium reject a case.
REJECTED_FLAGS = {
    "low_order_A",
    "low_order_R",
    "non_canonical_A",
    "non_canonical_R",
    "low_order_residue",
    "reencoded_k",
}


def _load() -> list[dict[str, Any]]:
    """The vector file; if it is missing, the calling test fails (never skips)."""
    if not CCTV.is_file():
        pytest.fail(
            f"CCTV Ed25519 vectors missing: {CCTV} (see tests/vectors/README.md)", pytrace=False
        )
    cases: list[dict[str, Any]] = json.loads(CCTV.read_text(encoding="utf-8"))
    return cases


def _flags(case: dict[str, Any]) -> set[str]:
    return set(case["flags"] or ())  # the file has "flags": null for no flags


def _accepted(case: dict[str, Any]) -> bool:
    return _flags(case) <= MIXED_ORDER


def _case_params() -> list[Any]:
    if not CCTV.is_file():
        return [pytest.param(None, id="vectors-missing")]
    cases = json.loads(CCTV.read_text(encoding="utf-8"))
    return [pytest.param(c, id=f"n{c['number']}") for c in cases] or [
        pytest.param(None, id="vectors-empty")
    ]


def test_cctv_vectors_are_complete() -> None:
    cases = _load()
    assert len(cases) == CASES
    assert [c["number"] for c in cases] == list(range(CASES))
    for case in cases:
        assert len(bytes.fromhex(case["key"])) == 32
        assert len(bytes.fromhex(case["sig"])) == 64
        assert _flags(case) <= MIXED_ORDER | REJECTED_FLAGS
    # Every kind of edge case is present.
    assert set().union(*(_flags(c) for c in cases)) == MIXED_ORDER | REJECTED_FLAGS
    assert sum(_accepted(c) for c in cases) == ACCEPTED
    assert [c["number"] for c in cases if not _flags(c)] == [305]


@pytest.mark.parametrize("case", _case_params())
def test_edge_case_verdict(case: dict[str, Any] | None) -> None:
    if case is None:
        _load()
        pytest.fail(f"no cases in {CCTV}", pytrace=False)
    key, sig = bytes.fromhex(case["key"]), bytes.fromhex(case["sig"])
    message = case["msg"].encode("utf-8")
    if _accepted(case):
        verify_signature(key, message, sig)
    else:
        with pytest.raises(VerificationError):
            verify_signature(key, message, sig)


def test_only_prime_order_keys_are_admitted() -> None:
    """The authority admits a key only if ``check_public_key`` passes: exactly the CCTV
    keys with no low-order, mixed-order or non-canonical A. So no admitted key can make
    libsodium accept a signature that a strict verifier refuses."""
    bad_key = {"low_order_A", "low_order_component_A", "non_canonical_A"}
    refused = 0
    for case in _load():
        key = bytes.fromhex(case["key"])
        if _flags(case) & bad_key:
            refused += 1
            with pytest.raises(VerificationError, match="prime order"):
                check_public_key(key)
        else:
            check_public_key(key)
            # and under an admitted key libsodium accepts only what the strict rule does
            if _accepted(case):
                assert not _flags(case) & {"low_order_component_A"}
    assert refused > 100
