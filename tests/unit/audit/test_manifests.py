"""Each log entry is verified against the manifest in force when it was logged (issue 11).

Real homes in process: an authority, a coordinator that logs each manifest version it
starts using, an analyst whose queries it logs; then a revocation. The coordinator's
log is exported (``fedscreen audit export``) and verified (``fedscreen audit verify``)
against the authority's newest manifest, in which the analyst is revoked.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen._util.sqlite import transaction
from fedscreen.analyst.query import make_query
from fedscreen.audit.manifests import (
    Versions,
    check_not_revoked,
    in_force,
    iso_ms,
    known_versions,
)
from fedscreen.cli.main import main
from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import BundleUntrusted, EntryInvalid, UnknownMember, VerificationError
from fedscreen.node import store
from fedscreen.node.home import init_home
from fedscreen.tlog import memberlog
from fedscreen.trust import authority
from fedscreen.trust.history import read_history
from fedscreen.trust.identity import create_identity, issue_here, update_manifest
from fedscreen.trust.manifest import (
    Manifest,
    Member,
    manifest_entry,
    parse_manifest,
    sign_manifest,
)

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
ANALYST = "analyst-1"
#: how a query signed by no active analyst is refused
REFUSED = "signed by an active analyst|no signature from a trusted key"


@dataclasses.dataclass
class Fed:
    auth: Path
    coordinator: Path
    analyst: Path
    root: Path

    @property
    def manifest(self) -> str:
        return str(self.auth / "manifest.json")


@pytest.fixture
def fed(tmp_path: Path) -> Fed:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(tmp_path / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, tmp_path / "coord")
    create_identity(tmp_path / "analyst", member_id=ANALYST, role="analyst", name="A")
    issue_here(auth, tmp_path / "analyst")
    update_manifest(tmp_path / "coord", authority.manifest_text(auth))
    return Fed(auth, tmp_path / "coord", tmp_path / "analyst", tmp_path)


def _request(fed: Fed, *, forged: bool = False) -> None:
    """The analyst's query, accepted and logged; ``forged``: logged by the coordinator's
    key without the checks ``accept`` makes (a dishonest coordinator)."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        if forged:
            coordinator.record(
                {"kind": "request", "query_id": query.query_id, "envelope": envelope.decode()}
            )
        else:
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
    finally:
        coordinator.close()


def _revoke(fed: Fed) -> None:
    authority.revoke(fed.auth, ANALYST)
    update_manifest(fed.coordinator, authority.manifest_text(fed.auth))


def _audit(
    fed: Fed, capsys: pytest.CaptureFixture[str], *extra: str, name: str = "bundle.json"
) -> tuple[int, dict[str, Any]]:
    bundle = fed.root / name
    assert (
        main(["audit", "export", "--home", str(fed.coordinator), "--out", str(bundle), *extra]) == 0
    )
    capsys.readouterr()
    code = main(["audit", "verify", str(bundle), "--manifest", fed.manifest, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _logged_versions(fed: Fed) -> list[int]:
    coordinator = Coordinator.open(fed.coordinator)
    try:
        payloads = [json.loads(_payload(raw)) for raw in coordinator.export().entries]
    finally:
        coordinator.close()
    return [p["version"] for p in payloads if p["kind"] == "manifest"]


def _payload(raw: bytes) -> bytes:
    return base64.b64decode(json.loads(raw)["payload"])


def test_the_coordinator_logs_each_version_once(fed: Fed) -> None:
    current = authority.current_manifest(fed.auth).version
    _request(fed)
    _request(fed)  # a restart: the version is not logged again
    assert _logged_versions(fed) == [current]
    _revoke(fed)
    with pytest.raises(VerificationError, match=REFUSED):
        _request(fed)  # refused (revoked); the newer manifest was picked up and logged
    assert _logged_versions(fed) == [current, current + 1]


def test_an_old_log_verifies_after_a_later_revocation(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    _request(fed)
    _revoke(fed)
    code, out = _audit(fed, capsys)
    assert code == 0, out
    assert out["logs"][0]["requests"] == 1


def test_a_signature_logged_after_the_revocation_fails(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    _request(fed)
    _revoke(fed)
    _request(fed, forged=True)  # opening the coordinator logs the revocation first
    code, out = _audit(fed, capsys)
    assert code == 2, out
    assert out["index"] == 3  # manifest, request, manifest (revocation), forged request
    assert re.search(REFUSED, out["reason"])


def test_the_bundle_carries_the_history_and_a_tampered_copy_is_untrusted(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    _request(fed)
    _revoke(fed)
    history = fed.auth / "manifests"
    code, out = _audit(fed, capsys, "--manifests", str(history))
    assert code == 0, out
    bundle = json.loads((fed.root / "bundle.json").read_text())
    versions = [parse_manifest(json.dumps(m)).version for m in bundle["manifests"]]
    assert versions == list(range(authority.current_manifest(fed.auth).version + 1))
    # one member's name edited in an old copy: its signature no longer holds
    old = bundle["manifests"][1]
    payload = json.loads(base64.b64decode(old["envelope"]["payload"]))
    payload["issued_at"] = "2020-01-01T00:00:00+00:00"
    old["envelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    tampered = fed.root / "tampered.json"
    tampered.write_text(json.dumps(bundle))
    code = main(["audit", "verify", str(tampered), "--manifest", fed.manifest])
    assert code == 4
    assert "manifest copy #1 in the bundle" in capsys.readouterr().err


def test_a_copy_from_another_authority_or_a_second_version_n_is_untrusted(fed: Fed) -> None:
    pinned = authority.current_manifest(fed.auth)
    other = SigningKey.generate()
    foreign = sign_manifest(dataclasses.replace(pinned, authority_key=other.public_key), key=other)
    with pytest.raises(BundleUntrusted, match="another authority"):
        known_versions(pinned, [foreign])
    key = SigningKey.load(fed.auth / authority.AUTHORITY_KEY_FILE)
    second = sign_manifest(
        dataclasses.replace(pinned, issued_at="2030-01-01T00:00:00+00:00"), key=key
    )
    with pytest.raises(
        BundleUntrusted, match=f"two different manifests claim version {pinned.version}"
    ):
        known_versions(pinned, [second])


def _versions(fed: Fed) -> list[tuple[Any, bytes]]:
    return read_history(
        fed.auth / "manifests", authority_key=authority.current_manifest(fed.auth).authority_key
    )


def _entry(index: int, text: bytes, owner: str = "coordinator") -> bytes:
    pinned = parse_manifest(text)
    body = {
        **manifest_entry(text, authority_key=pinned.authority_key),
        "index": index,
        "node_id": owner,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_manifest_entries_must_verify_go_forward_and_chain(fed: Fed) -> None:
    _revoke(fed)
    history = _versions(fed)
    pinned = history[-1][0]
    versions = known_versions(pinned, [t for _, t in history])
    owner = pinned.member("coordinator")
    request = b'{"kind":"request"}'
    # in force: versions switch at their entries
    payloads = [_entry(0, history[-2][1]), request, _entry(2, history[-1][1]), request]
    schedule = in_force(versions, payloads, owner=owner, origin="o")
    assert schedule.switches == {0, 2}
    assert schedule.at(1).version == pinned.version - 1
    assert schedule.at(3).version == pinned.version
    assert schedule.at(1).member(ANALYST)  # active then; revoked in the newest
    # the same version again (a member that logs at each start) changes nothing
    again = [_entry(0, history[-1][1]), request, _entry(2, history[-1][1]), request]
    schedule = in_force(versions, again, owner=owner, origin="o")
    assert schedule.switches == {0, 2}
    assert schedule.at(3).version == pinned.version
    # going back
    backwards = [_entry(0, history[-1][1]), _entry(1, history[-2][1])]
    with pytest.raises(EntryInvalid, match="went back") as caught:
        in_force(versions, backwards, owner=owner, origin="o")
    assert caught.value.index == 1
    # a manifest not signed by the pinned authority, logged in an entry
    other = SigningKey.generate()
    foreign = sign_manifest(
        dataclasses.replace(pinned, authority_key=other.public_key), key=other
    ).encode()
    with pytest.raises(EntryInvalid, match="another authority"):
        in_force(versions, [_entry(0, foreign)], owner=owner, origin="o")
    # another index or owner
    with pytest.raises(EntryInvalid, match="says it is entry"):
        in_force(versions, [request, _entry(0, history[-1][1])], owner=owner, origin="o")


def test_entries_after_the_owner_was_revoked_fail(fed: Fed) -> None:
    authority.revoke(fed.auth, "coordinator")
    history = _versions(fed)
    versions = known_versions(history[-1][0], [t for _, t in history])
    owner = history[-2][0].member("coordinator")
    payloads = [_entry(0, history[-2][1]), b"{}", _entry(2, history[-1][1]), b"{}"]
    with pytest.raises(EntryInvalid, match="revoked coordinator") as caught:
        in_force(versions, payloads, owner=owner, origin="o")
    assert caught.value.index == 3


def test_a_log_without_manifest_entries_is_checked_against_every_known_version(fed: Fed) -> None:
    # logs made before manifest entries existed: any member active in some known version
    _revoke(fed)
    history = _versions(fed)
    versions = known_versions(history[-1][0], [t for _, t in history])
    owner = history[-1][0].member("coordinator")
    schedule = in_force(versions, [b"{}", b"{}"], owner=owner, origin="o")
    assert schedule.at(1).member(ANALYST).id == ANALYST
    # only the newest version known: the revoked analyst is not admitted
    alone = known_versions(history[-1][0], [])
    with pytest.raises(UnknownMember, match="not an active member"):
        in_force(alone, [b"{}"], owner=owner, origin="o").at(0).member(ANALYST)


# ------------------------------------------- one digest per version, across the bundle


def test_two_logs_holding_two_different_versions_n_are_untrusted(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authority signed two versions N (two copies of its directory each revoked
    someone); the coordinator logged one, a node the other. Each log verifies on its
    own; together they are exit 4, naming both places."""
    create_identity(fed.root / "a2", member_id="analyst-2", role="analyst", name="B")
    issue_here(fed.auth, fed.root / "a2")
    config = init_home(fed.root / "node", node_id="130104", name="长安区")
    issue_here(fed.auth, config.home)
    pinned = fed.root / "pinned.json"
    pinned.write_bytes((fed.auth / "manifest.json").read_bytes())
    shutil.copytree(fed.auth, fed.root / "auth2")
    first = authority.revoke(fed.auth, ANALYST)
    second = authority.revoke(fed.root / "auth2", "analyst-2")
    assert first.version == second.version
    assert first.digest != second.digest
    update_manifest(fed.coordinator, authority.manifest_text(fed.auth))
    Coordinator.open(fed.coordinator).close()  # logs the version it starts with
    text = authority.manifest_text(fed.root / "auth2")
    conn = store.connect(config.database)
    try:  # what the node's worker does when it adopts a version
        with transaction(conn):
            memberlog.append_manifest(
                conn,
                member_id=config.node_id,
                key=config.signing_key(),
                entry=manifest_entry(text, authority_key=second.authority_key),
            )
    finally:
        conn.close()

    def verify(*homes: Path, copies: bool = True) -> tuple[int, str]:
        bundle = fed.root / "bundle.json"
        bundle.unlink(missing_ok=True)
        args = [a for home in homes for a in ("--home", str(home))]
        assert main(["audit", "export", *args, "--out", str(bundle)]) == 0
        if not copies:  # only the logs: the conflict is between them
            data = json.loads(bundle.read_text(encoding="utf-8"))
            data.update(manifest=None, manifests=[])
            bundle.write_text(json.dumps(data), encoding="utf-8")
        capsys.readouterr()
        code = main(["audit", "verify", str(bundle), "--manifest", str(pinned)])
        return code, capsys.readouterr().err

    assert verify(fed.coordinator)[0] == 0
    assert verify(config.home)[0] == 0
    code, err = verify(fed.coordinator, config.home)
    assert code == 4, err  # the coordinator's home copy against the node's entry
    assert f"two different manifests claim version {first.version}" in err
    assert "entry 0 of fedscreen.node/130104" in err
    code, err = verify(fed.coordinator, config.home, copies=False)
    assert code == 4, err
    assert (
        f"two different manifests claim version {first.version}: entry 0 of "
        "fedscreen.coordinator/coordinator and entry 0 of fedscreen.node/130104"
    ) in err


def test_a_logged_version_n_other_than_the_auditors_is_untrusted(fed: Fed) -> None:
    pinned = authority.current_manifest(fed.auth)
    key = SigningKey.load(fed.auth / authority.AUTHORITY_KEY_FILE)
    other = sign_manifest(
        dataclasses.replace(pinned, issued_at="2030-01-01T00:00:00+00:00"), key=key
    ).encode()
    versions = known_versions(pinned, [])
    owner = pinned.member("coordinator")
    with pytest.raises(BundleUntrusted, match="the auditor's --manifest and entry 0 of o"):
        in_force(versions, [_entry(0, other)], owner=owner, origin="o")


def test_an_altered_manifest_inside_a_log_entry_is_that_entry_invalid(
    fed: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    """The entry is signed by the log's owner, so the fault is the entry's: exit 2 at its
    index (a manifest copy the bundle carries, signed by no one else, is exit 4)."""
    text = authority.manifest_text(fed.auth)
    envelope = json.loads(text)
    payload = json.loads(base64.b64decode(envelope["envelope"]["payload"]))
    payload["issued_at"] = "2020-01-01T00:00:00+00:00"
    envelope["envelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    coordinator = Coordinator.open(fed.coordinator)
    try:
        entry = manifest_entry(text, authority_key=coordinator.manifest.authority_key)
        coordinator.record({**entry, "manifest": json.dumps(envelope)})
    finally:
        coordinator.close()
    code, out = _audit(fed, capsys)
    assert code == 2, out
    assert out["index"] == 1
    assert "entry 1:" in out["reason"]


# ------------------------------------------------------------- re-keyed in place


def test_a_member_rekeyed_in_place_signs_on_with_its_new_key(fed: Fed) -> None:
    """``pki issue --replace`` gives the coordinator a new key in the next version: the
    entry logging that version, and those after it, are signed with the new key;
    an entry signed with the old key after that version is refused."""
    history = _versions(fed)
    old = history[-1][0]
    new_key = SigningKey.generate().public_key
    key = SigningKey.load(fed.auth / authority.AUTHORITY_KEY_FILE)
    members = tuple(
        dataclasses.replace(m, signing_key=new_key) if m.id == "coordinator" else m
        for m in old.members
    )
    rekeyed = sign_manifest(
        dataclasses.replace(
            old, version=old.version + 1, members=members, previous_sha256=old.digest
        ),
        key=key,
    ).encode()
    versions = known_versions(parse_manifest(rekeyed), [history[-1][1]])
    was, now = old.member("coordinator"), parse_manifest(rekeyed).member("coordinator")
    payloads = [_entry(0, history[-1][1]), b"{}", _entry(2, rekeyed), b"{}"]
    schedule = in_force(versions, payloads, owner=now, origin="o", signers=[was, was, now, now])
    assert schedule.at(3).version == old.version + 1
    with pytest.raises(EntryInvalid, match="revoked coordinator's key") as caught:
        in_force(versions, payloads, owner=now, origin="o", signers=[was, was, now, was])
    assert caught.value.index == 3


# ---------------------------------------------------- signatures dated after revocation

_MINUTE = 60_000
_WINDOW = 5 * _MINUTE


def _timeline(flags: list[bool], gaps: list[int]) -> tuple[Versions, Member]:
    """Version 0 lists the member; version i (1..) lists it iff ``flags[i-1]``, issued
    ``gaps`` minutes after the version before (from 2026-01-01T00:00Z)."""
    member = Member("a", "analyst", "A", SigningKey.generate().public_key, "00" * 32)
    authority_key = SigningKey.generate().public_key
    start = datetime(2026, 1, 1, tzinfo=UTC)
    by_version, minutes = {}, 0
    for version, (listed, gap) in enumerate(zip([True, *flags], [0, *gaps], strict=True)):
        minutes += gap
        issued = (start + timedelta(minutes=minutes)).isoformat(timespec="seconds")
        members = (member,) if listed else ()
        by_version[version] = Manifest("f", version, issued, authority_key, members)
    return Versions(authority_key, by_version), member


def _issued(versions: Versions, version: int) -> int:
    return iso_ms(versions.by_version[version].issued_at)


@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=6),
    data=st.data(),
)
def test_revocation_by_time_invariants(flags: list[bool], data: st.DataObject) -> None:
    gaps = data.draw(st.lists(st.integers(0, 20), min_size=len(flags), max_size=len(flags)))
    versions, member = _timeline(flags, gaps)
    at_ms = _issued(versions, 0) + data.draw(st.integers(-10, 200)) * _MINUTE // 2

    def refused() -> bool:
        try:
            check_not_revoked(
                versions, member, since=0, at_ms=at_ms, window_ms=_WINDOW, what="a query"
            )
        except VerificationError:
            return True
        return False

    revoking = [v for v, listed in enumerate(flags, 1) if not listed]
    if not revoking or at_ms <= _issued(versions, revoking[0]) + _WINDOW:
        # never revoked, or signed before anyone could know of it (clocks differ)
        assert not refused()
    elif not flags[-1] and _issued(versions, len(flags)) + _WINDOW < at_ms:
        # revoked and never re-admitted, long before it signed
        assert refused()
