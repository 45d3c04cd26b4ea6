"""``fedscreen identity ...``: a member's own keys, request and issued certificate.

Every member (node, coordinator, analyst, auditor) creates its keys where it
runs with ``identity init``; only ``request.json`` (public) goes to the
authority. Nothing here prints a private key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedscreen.crypto.signing import public_key_id
from fedscreen.errors import ConfigError, UnknownMember
from fedscreen.trust.certs import certificate_not_after, read_public_file
from fedscreen.trust.history import MAX_MANIFEST_BYTES
from fedscreen.trust.identity import (
    CA_FILE,
    CERT_FILE,
    MANIFEST_FILE,
    SIGNING_KEY_FILE,
    check_update,
    create_identity,
    install_issued,
    load_identity,
    update_manifest,
)
from fedscreen.trust.manifest import ROLES, show_id


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``identity`` and its subcommands."""
    parser = sub.add_parser("identity", help="a member's keys, certificate request and certificate")
    id_sub = parser.add_subparsers(dest="identity_command", required=True, metavar="SUBCOMMAND")

    init = id_sub.add_parser(
        "init", help="create this member's signing and TLS keys and its certificate request"
    )
    init.add_argument("--home", type=Path, required=True, help="the member's home directory")
    init.add_argument("--id", dest="member_id", required=True, help="member id, e.g. 130102")
    init.add_argument("--role", required=True, choices=ROLES)
    init.add_argument("--name", required=True, help="display name, e.g. 长安区")
    init.add_argument("--level", default="", help="county, city, university, school, province")
    init.add_argument(
        "--scope",
        default="",
        help="an analyst's scope (required for an analyst): province, city:<4 digits>, "
        "county:<6 digits> or node:<node id>; a node's place: county:<code> or province "
        "(`node init` sets it)",
    )
    init.set_defaults(func=run_init)

    install = id_sub.add_parser(
        "install", help="install the certificate, CA and manifest the authority issued"
    )
    install.add_argument("--home", type=Path, required=True)
    install.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help=f"directory holding {CERT_FILE}, {CA_FILE} and {MANIFEST_FILE}",
    )
    install.set_defaults(func=run_install)

    update = id_sub.add_parser(
        "update-manifest", help="install a newer signed manifest (e.g. after a revocation)"
    )
    update.add_argument("--home", type=Path, required=True)
    update.add_argument("--manifest", type=Path, required=True, help="the new manifest.json")
    update.add_argument(
        "--accept-own-revocation",
        action="store_true",
        help="install it even if it revokes this member (which then must stop serving)",
    )
    update.set_defaults(func=run_update_manifest)

    show = id_sub.add_parser("show", help="this member's id, key id and certificate status")
    show.add_argument("--home", type=Path, required=True)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen identity init``."""
    adopting = (args.home / SIGNING_KEY_FILE).is_file()
    if args.role == "analyst" and not args.scope:
        # every analyst's reach is chosen, never defaulted to the widest
        raise ConfigError(
            "an analyst needs --scope: province, city:<4 digits>, county:<6 digits> or "
            "node:<node id>"
        )
    identity = create_identity(
        args.home,
        member_id=args.member_id,
        role=args.role,
        name=args.name,
        level=args.level,
        scope=args.scope,
    )
    print(f"created {identity.role} {identity.member_id} ({identity.name}) in {identity.home}")
    if identity.scope:
        print(f"  scope                {identity.scope}")
    adopted = " (the existing signing.key)" if adopting else ""
    print(f"  signing key id       {identity.key_id}{adopted}")
    print(f"  certificate request  {identity.request_path}")
    print(f"  request fingerprint  {identity.request_fingerprint()}")
    print("private keys (signing.key, tls.key) are 0600 and never leave this directory")
    print(
        "next: send request.json to the province authority and read it the fingerprint; it runs "
        f"`fedscreen pki issue --dir AUTH --home {identity.home}` (same machine) or "
        "`fedscreen pki issue --dir AUTH --request request.json --out DIR`, "
        f"and you run `fedscreen identity install --home {identity.home} --from DIR`"
    )
    return 0


def run_install(args: argparse.Namespace) -> int:
    """``fedscreen identity install``."""
    source: Path = args.source
    manifest = install_issued(
        args.home,
        read_public_file(source / CERT_FILE),
        read_public_file(source / CA_FILE),
        read_public_file(source / MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES),
    )
    print(
        f"installed the certificate; manifest version {manifest.version} of {manifest.federation!r}"
    )
    return 0


def run_update_manifest(args: argparse.Namespace) -> int:
    """``fedscreen identity update-manifest``: exit 2, nothing installed, if the manifest
    revokes this member itself (unless ``--accept-own-revocation``: installed, exit 0 with
    a warning on stderr — the flag says the operator means it)."""
    text = read_public_file(args.manifest, max_bytes=MAX_MANIFEST_BYTES)
    identity = load_identity(args.home)
    manifest = check_update(args.home, text)
    active = identity.member_id in manifest.active(identity.role)
    shown = show_id(identity.member_id)
    if not active and not args.accept_own_revocation:
        print(
            f"error: manifest version {manifest.version} revokes this {identity.role} "
            f"({shown}) itself; not installed. A revoked member must stop serving; pass "
            "--accept-own-revocation only to retire this home",
            file=sys.stderr,
        )
        return 2
    manifest = update_manifest(args.home, text)
    print(f"installed manifest version {manifest.version}")
    if not active:
        print(
            f"warning: {shown} is not an active member in this manifest; it must stop serving",
            file=sys.stderr,
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    """``fedscreen identity show``."""
    identity = load_identity(args.home)
    doc: dict[str, object] = {
        "id": identity.member_id,
        "role": identity.role,
        "name": identity.name,
        "level": identity.level,
        "scope": identity.scope,
        "signing_key_id": identity.key_id,
        "issued": identity.is_issued,
    }
    if identity.is_issued:
        doc["certificate_not_after"] = certificate_not_after(identity.cert_path).isoformat()
        manifest = identity.manifest()
        doc["manifest_version"] = manifest.version
        # compare these with what `fedscreen pki init` printed at the authority
        doc["ca_sha256"] = manifest.ca_sha256
        doc["authority_key_id"] = public_key_id(manifest.authority_key)
        try:
            manifest.member(identity.member_id, role=identity.role)
            doc["status"] = "active"
        except UnknownMember:
            doc["status"] = "not an active member"
    else:
        doc["request_fingerprint"] = identity.request_fingerprint()
    if args.json:
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        for key, value in doc.items():
            print(f"{key:22} {value}")
    return 0
