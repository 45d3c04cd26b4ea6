"""Manifest versions form a hash chain (issue 11 item 3): verified, and any break refused."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError
from fedscreen.trust import authority
from fedscreen.trust.history import read_history, version_name
from fedscreen.trust.identity import create_identity, install_issued, update_manifest
from fedscreen.trust.manifest import (
    Manifest,
    Member,
    check_chain,
    manifest_entry,
    parse_manifest,
    sign_manifest,
    verify_history,
)

KEY = SigningKey.generate()
OTHER = SigningKey.generate()


def _member(n: int) -> Member:
    return Member(
        id=f"m{n}",
        role="analyst",
        name=f"member {n}",
        signing_key=SigningKey.generate().public_key,
        tls_sha256="ab" * 32,
    )


MEMBERS = tuple(_member(n) for n in range(8))


def _version(
    version: int, previous: Manifest | None, *, linked: bool = True, key: SigningKey = KEY
) -> Manifest:
    return Manifest(
        federation="河北省",
        version=version,
        issued_at=f"2026-01-01T00:00:{version:02d}+00:00",
        authority_key=key.public_key,
        members=MEMBERS[: version % len(MEMBERS)],
        ca_sha256="cd" * 32,
        previous_sha256=previous.digest if previous is not None and linked else None,
    )


def chain(length: int, *, legacy: int = 0) -> list[str]:
    """Signed files of versions 0..length-1; the first ``legacy`` carry no link."""
    texts: list[str] = []
    previous: Manifest | None = None
    for version in range(length):
        manifest = _version(version, previous, linked=version >= legacy)
        texts.append(sign_manifest(manifest, key=KEY))
        previous = parse_manifest(texts[-1])
    return texts


@st.composite
def shuffled_chain(draw: st.DrawFn) -> tuple[int, list[str]]:
    length = draw(st.integers(1, 7))
    return length, draw(st.permutations(chain(length)))


@settings(max_examples=30, deadline=None)
@given(shuffled_chain())
def test_a_valid_chain_verifies_in_any_file_order(drawn: tuple[int, list[str]]) -> None:
    length, shuffled = drawn
    manifests = verify_history(shuffled, KEY.public_key)
    assert [m.version for m in manifests] == list(range(length))
    assert manifests[0].previous_sha256 is None
    for previous, manifest in itertools.pairwise(manifests):
        assert manifest.previous_sha256 == previous.digest
        assert previous.digest == hashlib.sha256(previous.payload()).hexdigest()


@st.composite
def tampered(draw: st.DrawFn) -> list[str]:
    """A valid chain with one break: a gap, a fork, a renumbered or reordered version,
    a duplicate, a foreign signature or a flipped byte."""
    length = draw(st.integers(3, 7))
    texts = chain(length)
    k = draw(st.integers(1, length - 2))
    how = draw(st.sampled_from(["gap", "fork", "renumber", "swap", "dup", "foreign", "byte"]))
    manifests = [parse_manifest(t) for t in texts]
    if how == "gap":
        del texts[k]
    elif how == "fork":
        # another version k, properly linked to k-1 and signed: version k+1 no longer chains
        other = dataclasses.replace(manifests[k], issued_at="2027-01-01T00:00:00+00:00")
        texts[k] = sign_manifest(other, key=KEY)
    elif how == "renumber":
        bumped = dataclasses.replace(manifests[k], version=k + 1)
        texts[k] = sign_manifest(bumped, key=KEY)
    elif how == "swap":
        # versions k and k+1 exchange their contents (each re-signed under the other number)
        a = dataclasses.replace(manifests[k + 1], version=k)
        b = dataclasses.replace(manifests[k], version=k + 1)
        texts[k], texts[k + 1] = sign_manifest(a, key=KEY), sign_manifest(b, key=KEY)
    elif how == "dup":
        texts.append(texts[k])
    elif how == "foreign":
        texts[k] = sign_manifest(
            dataclasses.replace(manifests[k], authority_key=OTHER.public_key), key=OTHER
        )
    else:
        outer = json.loads(texts[k])
        sig = outer["envelope"]["signatures"][0]
        sig["sig"] = ("A" if sig["sig"][0] != "A" else "B") + sig["sig"][1:]
        texts[k] = json.dumps(outer)
    return texts


@settings(max_examples=120, deadline=None)
@given(tampered())
def test_any_tampering_reordering_or_gap_is_refused(texts: list[str]) -> None:
    with pytest.raises(VerificationError):
        verify_history(texts, KEY.public_key)


def test_legacy_versions_are_accepted_only_as_the_start_of_a_history() -> None:
    # files signed before the chain existed (no previous_sha256), then linked ones
    texts = chain(5, legacy=3)
    assert [m.version for m in verify_history(texts, KEY.public_key)] == [0, 1, 2, 3, 4]
    assert "previous_sha256" not in parse_manifest(texts[1]).payload().decode()
    # an unlinked version after a linked one breaks the chain
    manifests = [parse_manifest(t) for t in chain(4)]
    unlinked = dataclasses.replace(manifests[3], previous_sha256=None)
    with pytest.raises(VerificationError, match="does not name its predecessor"):
        check_chain([*manifests[:3], unlinked])


def test_version_zero_names_no_predecessor_and_links_are_hex() -> None:
    for previous in ("ab" * 32, "AB" * 32, "x"):
        body = _version(0 if previous == "ab" * 32 else 1, None)
        bad = dataclasses.replace(body, previous_sha256=previous)
        with pytest.raises(VerificationError, match=r"predecessor|hex"):
            parse_manifest(sign_manifest(bad, key=KEY))
    with pytest.raises(VerificationError, match="empty"):
        verify_history([], KEY.public_key)


def test_the_digest_is_over_the_signed_bytes_verbatim() -> None:
    text = chain(2)[1]
    parsed = parse_manifest(text)
    signed = base64.b64decode(json.loads(text)["envelope"]["payload"])
    assert parsed.payload() == signed
    assert parsed.digest == hashlib.sha256(signed).hexdigest()


def test_a_manifest_log_entry_carries_the_file_verbatim() -> None:
    text = chain(3)[2]
    entry = manifest_entry(text.encode(), authority_key=KEY.public_key)
    assert entry == {"kind": "manifest", "version": 2, "manifest": text}
    with pytest.raises(VerificationError):
        manifest_entry(text, authority_key=OTHER.public_key)


def test_the_authority_chains_every_version_it_signs(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    for member_id in ("ana", "bob"):
        home = tmp_path / member_id
        create_identity(home, member_id=member_id, role="analyst", name=member_id)
        authority.issue(auth, home / "request.json")
    authority.revoke(auth, "ana")
    history = read_history(
        auth / authority.MANIFESTS_DIR, authority_key=authority.current_manifest(auth).authority_key
    )
    assert [m.version for m, _ in history] == [0, 1, 2, 3]
    texts = [t for _, t in history]
    assert [m.version for m in verify_history(texts, history[0][0].authority_key)] == [0, 1, 2, 3]
    assert history[-1][0] == authority.current_manifest(auth)
    # a gap in the authority's own history is refused
    (auth / authority.MANIFESTS_DIR / version_name(1)).unlink()
    with pytest.raises(VerificationError):
        read_history(auth / authority.MANIFESTS_DIR, authority_key=history[0][0].authority_key)


def test_update_manifest_refuses_a_rollback_or_a_fork(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    home = tmp_path / "ana"
    ident = create_identity(home, member_id="ana", role="analyst", name="Ana")
    cert_pem, _ = authority.issue(auth, ident.request_path)
    ca_pem = authority.load_authority(auth).ca_pem
    install_issued(home, cert_pem, ca_pem, authority.manifest_text(auth))
    v1 = authority.manifest_text(auth)
    other = tmp_path / "bob"
    create_identity(other, member_id="bob", role="analyst", name="Bob")
    authority.issue(auth, other / "request.json")
    v2 = authority.manifest_text(auth)
    # a version 2 that does not chain from the installed version 1 (signed by the authority)
    key = SigningKey.load(auth / authority.AUTHORITY_KEY_FILE)
    forged = dataclasses.replace(parse_manifest(v2), previous_sha256="00" * 32)
    with pytest.raises(VerificationError, match="does not chain from version 1"):
        update_manifest(home, sign_manifest(forged, key=key))
    assert update_manifest(home, v2).version == 2
    with pytest.raises(VerificationError, match="refusing to roll back"):
        update_manifest(home, v1)
    # every installed version is kept in the home's history
    kept = read_history(home / "manifests", authority_key=key.public_key, contiguous=False)
    assert [m.version for m, _ in kept] == [1, 2]
