"""``fedscreen pki ...``: the province authority's commands (CA, issuing, manifest).

Members make their own keys (``fedscreen identity init``); the authority only
verifies their ``request.json`` and signs. On one machine (a demo, a test) the
authority reads the request from the member's home and installs the result
there (``--home``). In a real deployment the request and the issued files
travel between machines: ``fedscreen pki issue --request request.json --out
DIR`` writes ``tls.pem``, ``ca.pem`` and ``manifest.json`` into ``DIR``, which
goes back to the member, who runs ``fedscreen identity install --from DIR``.
Compare the request fingerprint with the member over a second channel (the
phone) and pass it as ``--expect-fingerprint``.

Nothing here prints a private key: only public key ids and certificate hashes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedscreen._util.files import write_new_file
from fedscreen.cli.output import table
from fedscreen.crypto.signing import public_key_id
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.trust import authority, certs
from fedscreen.trust.authority import MANIFESTS_DIR
from fedscreen.trust.history import read_history
from fedscreen.trust.identity import (
    CA_FILE,
    CERT_FILE,
    MANIFEST_FILE,
    REQUEST_FILE,
    install_issued,
    load_identity,
)
from fedscreen.trust.manifest import Member
from fedscreen.trust.scope import node_place


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki`` and its subcommands."""
    parser = sub.add_parser("pki", help="the province authority: federation CA and manifest")
    pki_sub = parser.add_subparsers(dest="pki_command", required=True, metavar="SUBCOMMAND")

    init = pki_sub.add_parser(
        "init", help="create the federation CA, the manifest-signing key and manifest version 0"
    )
    init.add_argument("--dir", type=Path, required=True, help="authority directory to create")
    init.add_argument("--federation", required=True, help="federation name, e.g. 河北省")
    init.add_argument(
        "--validity-days", type=int, default=certs.DEFAULT_CA_VALIDITY_DAYS, help="CA lifetime"
    )
    init.set_defaults(func=run_init)

    issue = pki_sub.add_parser(
        "issue",
        help="verify a member's request, issue its certificate, sign a new manifest",
        description="Either --home (request and result in the member's home on this machine) "
        "or --request FILE --out DIR (the files travel between machines).",
    )
    issue.add_argument("--dir", type=Path, required=True, help="authority directory")
    source = issue.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", type=Path, help="member home holding request.json")
    source.add_argument("--request", type=Path, help="a member's request.json")
    issue.add_argument("--out", type=Path, help="with --request: directory for the issued files")
    issue.add_argument(
        "--expect-fingerprint",
        help="the request fingerprint the member read out (at least 16 hex digits)",
    )
    issue.add_argument(
        "--replace", action="store_true", help="re-issue an active member (new keys or renewal)"
    )
    issue.add_argument(
        "--validity-days",
        type=int,
        default=certs.DEFAULT_LEAF_VALIDITY_DAYS,
        help="certificate lifetime",
    )
    issue.set_defaults(func=run_issue)

    revoke = pki_sub.add_parser("revoke", help="sign a new manifest version revoking a member")
    revoke.add_argument("--dir", type=Path, required=True, help="authority directory")
    revoke.add_argument("--id", dest="member_id", required=True, help="member id")
    revoke.set_defaults(func=run_revoke)

    scope = pki_sub.add_parser(
        "scope", help="sign a new manifest version changing an analyst's scope (or a node's place)"
    )
    scope.add_argument("--dir", type=Path, required=True, help="authority directory")
    scope.add_argument("--id", dest="member_id", required=True, help="member id")
    scope.add_argument(
        "--scope",
        required=True,
        help="province, city:<4 digits>, county:<6 digits> or node:<node id>",
    )
    scope.set_defaults(func=run_scope)

    link = pki_sub.add_parser(
        "link",
        help="sign a new manifest version marking a node offline (queries by file) or online",
    )
    link.add_argument("--dir", type=Path, required=True, help="authority directory")
    link.add_argument("--id", dest="member_id", required=True, help="the node's member id")
    mode = link.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--offline", action="store_true", help="no network path: its queries go by file"
    )
    mode.add_argument("--online", action="store_true", help="it dials the coordinator again")
    link.set_defaults(func=run_link)

    manifest = pki_sub.add_parser("manifest", help="show the current manifest's members")
    manifest.add_argument("--dir", type=Path, required=True, help="authority directory")
    manifest.add_argument("--json", action="store_true", help="print JSON")
    manifest.set_defaults(func=run_manifest)

    history = pki_sub.add_parser(
        "history",
        help="verify the chain of every manifest version signed and list them",
        description="Every version names its predecessor's digest. Hand the auditor "
        "AUTH/manifests (`fedscreen audit export --manifests AUTH/manifests`).",
    )
    history.add_argument("--dir", type=Path, required=True, help="authority directory")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(func=run_history)


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen pki init``."""
    auth = authority.init_authority(
        args.dir, federation=args.federation, validity_days=args.validity_days
    )
    print(f"created the authority of federation {auth.federation!r} in {args.dir}")
    print(f"  CA certificate      {args.dir / authority.CA_CERT_FILE}")
    print(f"  CA sha256           {auth.ca_sha256}")
    print(f"  manifest key id     {auth.authority_key_id}")
    print("  manifest version    0 (no members)")
    keys = f"{authority.CA_KEY_FILE}, {authority.AUTHORITY_KEY_FILE}"
    print(f"private keys ({keys}) are 0600; keep them offline")
    print("next: members run `fedscreen identity init`, then `fedscreen pki issue`")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """``fedscreen pki issue``."""
    out: Path | None = args.out
    if args.home is not None:
        if out is not None:
            raise ConfigError("--out goes with --request; with --home the files go to the home")
        load_identity(args.home)  # fail before issuing if it is not a member home
        request_path = args.home / REQUEST_FILE
    else:
        if out is None:
            raise ConfigError("--request needs --out DIR for the issued files")
        request_path = args.request
        _check_out_dir(out)
    request = certs.read_request(request_path)
    claimed = certs.verify_request(request)
    fingerprint = claimed.fingerprint
    cert_pem, member = authority.issue(
        args.dir,
        request,
        validity_days=args.validity_days,
        replace=args.replace,
        expect_fingerprint=args.expect_fingerprint,
    )
    auth = authority.load_authority(args.dir)
    manifest_text = authority.manifest_text(args.dir)
    version = authority.current_manifest(args.dir).version
    print(f"issued {member.role} {member.id} ({member.name})")
    if member.role in ("analyst", "node"):
        print(f"  {'scope' if member.role == 'analyst' else 'place':19} {_placement(member)}")
    if member.scope != claimed.scope:
        print(
            f"  (the request claims {claimed.scope or 'no scope'}; the manifest keeps "
            f"{member.scope or 'none'}: `fedscreen pki scope` changes it)"
        )
    print(f"  request fingerprint {fingerprint}")
    print(f"  signing key id      {member.key_id}")
    print(f"  certificate sha256  {member.tls_sha256}")
    print(f"  manifest version    {version}")
    if out is None:
        install_issued(args.home, cert_pem, auth.ca_pem, manifest_text)
        print(f"installed {CERT_FILE}, {CA_FILE} and {MANIFEST_FILE} in {args.home}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_new_file(out / CERT_FILE, cert_pem, mode=0o644)
        write_new_file(out / CA_FILE, auth.ca_pem, mode=0o644)
        write_new_file(out / MANIFEST_FILE, manifest_text.encode(), mode=0o644)
        print(f"wrote {CERT_FILE}, {CA_FILE} and {MANIFEST_FILE} to {out}")
        print(f"next: the member runs `fedscreen identity install --home HOME --from {out}`")
    print("distribute the new manifest to every member (`fedscreen identity update-manifest`)")
    return 0


def _check_out_dir(out: Path) -> None:
    """Refuse before issuing if the output files exist, so nothing is issued twice."""
    for name in (CERT_FILE, CA_FILE, MANIFEST_FILE):
        if (out / name).exists():
            raise ConfigError(f"{out / name} already exists; choose an empty --out directory")


def _placement(member: Member) -> str:
    """An analyst's scope or a node's kind and place, as the authority should read it."""
    if member.role == "analyst":
        return member.scope or "province (no scope named: every node)"
    return f"{member.level or 'county'} node at {node_place(member)}"


def run_link(args: argparse.Namespace) -> int:
    """``fedscreen pki link``."""
    manifest = authority.set_offline(args.dir, args.member_id, offline=args.offline)
    how = (
        "offline: its queries are queued for `fedscreen coordinator outbox`"
        if args.offline
        else "online: it answers over its stream"
    )
    print(f"{args.member_id}: {how}; manifest version {manifest.version}")
    print("install it at the coordinator (`fedscreen identity update-manifest`)")
    return 0


def run_scope(args: argparse.Namespace) -> int:
    """``fedscreen pki scope``."""
    manifest = authority.set_scope(args.dir, args.member_id, args.scope)
    print(f"{args.member_id}: scope {args.scope}; manifest version {manifest.version}")
    print("install it at the coordinator (`fedscreen identity update-manifest`), which pushes it")
    print("down every node's stream; offline members install it the same way")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """``fedscreen pki revoke``."""
    manifest = authority.revoke(args.dir, args.member_id)
    print(f"revoked {args.member_id}; manifest version {manifest.version}")
    print(
        f"distribute {args.dir / authority.MANIFEST_FILE} to every member "
        "(`fedscreen identity update-manifest`)"
    )
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    """``fedscreen pki manifest``."""
    manifest = authority.current_manifest(args.dir)
    if args.json:
        doc = {
            "federation": manifest.federation,
            "version": manifest.version,
            "issued_at": manifest.issued_at,
            "ca_sha256": manifest.ca_sha256,
            "authority_key_id": public_key_id(manifest.authority_key),
            "members": [{**m.to_json(), "key_id": m.key_id} for m in manifest.members],
        }
        print(json.dumps(doc, indent=1, ensure_ascii=False))
        return 0
    print(
        f"federation {manifest.federation!r}  manifest version {manifest.version}  "
        f"issued {manifest.issued_at}"
    )
    print(f"CA sha256 {manifest.ca_sha256}")
    rows = [
        (
            m.id,
            m.role,
            m.name,
            m.level,
            m.scope or "province"
            if m.role == "analyst"
            else node_place(m)
            if m.role == "node"
            else "",
            m.key_id,
            m.tls_sha256[:16],
            "revoked" if m.revoked else "active (offline)" if m.offline else "active",
        )
        for m in manifest.members
    ]
    table(("id", "role", "name", "level", "scope", "key id", "cert sha256", "status"), rows)
    return 0


def run_history(args: argparse.Namespace) -> int:
    """``fedscreen pki history``: exit 0 if the whole chain verifies (else an error, 1)."""
    current = authority.current_manifest(args.dir)
    history = [
        m for m, _ in read_history(args.dir / MANIFESTS_DIR, authority_key=current.authority_key)
    ]
    if not history or history[-1].digest != current.digest:
        raise VerificationError(
            f"{args.dir / MANIFESTS_DIR} does not end with the current manifest"
        )
    docs = [
        {
            "version": m.version,
            "issued_at": m.issued_at,
            "sha256": m.digest,
            "previous_sha256": m.previous_sha256,
            "active": sum(1 for x in m.members if not x.revoked),
            "revoked": sum(1 for x in m.members if x.revoked),
        }
        for m in history
    ]
    if args.json:
        print(json.dumps(docs, indent=1, ensure_ascii=False))
        return 0
    rows = [
        (d["version"], d["issued_at"], m.digest[:16], (m.previous_sha256 or "-")[:16],
         d["active"], d["revoked"])
        for d, m in zip(docs, history, strict=True)
    ]  # fmt: skip
    table(("version", "issued", "sha256", "previous sha256", "active", "revoked"), rows)
    print(f"the chain of {len(history)} versions verifies; the newest is the current manifest")
    return 0
