"""``fedscreen audit ...``: export transparency logs and verify them offline."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from fedscreen.aggregator.home import is_aggregator_home
from fedscreen.aggregator.store import export_log as aggregator_log
from fedscreen.audit.bundle import read_bundle, write_bundle
from fedscreen.audit.parallel import in_processes
from fedscreen.audit.verify import LogReport, verify_bundle
from fedscreen.coordinator.core import CONFIG_FILE as COORDINATOR_CONFIG
from fedscreen.coordinator.core import export_log as coordinator_log
from fedscreen.errors import (
    VALID,
    AuditFailure,
    BundleError,
    BundleUntrusted,
    ConfigError,
    VerificationError,
)
from fedscreen.node.home import export_log as node_log
from fedscreen.tlog.export import Bundle, LogExport
from fedscreen.trust.certs import read_public_file
from fedscreen.trust.history import HISTORY_DIR, MAX_MANIFEST_BYTES
from fedscreen.trust.manifest import load_manifest, parse_manifest

VERIFY_HELP = """\
Verify an audit bundle offline against the federation manifest.

exit codes:
  0  valid: every signature, checkpoint root, the history and the ε sums check out
  2  an entry fails: its signature, its format, or its content (ε over budget,
     sums that do not add up, a manifest it logs that fails the authority's
     signature or chain, a query or release dated more than the freshness window
     after a known version revoked its signer; a secure release whose
     aggregator's partial that aggregator's log does not hold, a partial over
     fewer nodes than the catalogue's secure min_nodes, an answer summed into
     two different partials); the first bad index and the reason are printed
  3  the history is inconsistent: rollback, truncation, reordering, or a fork
     against the trusted checkpoint; the conflicting signed checkpoints are
     written as evidence files
  4  the bundle cannot be trusted: manifest or checkpoint signature invalid
     (any manifest copy the bundle carries is checked against your manifest's
     authority key), a broken manifest chain, two different manifests with one
     version number anywhere in the bundle (both places named), unknown key or
     member, malformed note or file

Each entry is checked against the manifest version in force when it was logged
(the logs record each version they start using), so an old log still verifies
after a later revocation.

Secure releases are cross-checked against the second aggregator's log when the
bundle holds it (export the coordinator's home before the aggregator's); without
it the outcome is still 0, and the report says which releases were not
cross-checked and why.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands."""
    audit = sub.add_parser("audit", help="export and verify transparency logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    export = audit_sub.add_parser(
        "export",
        help="write node, coordinator and aggregator logs as one self-contained bundle",
    )
    export.add_argument(
        "--home",
        type=Path,
        required=True,
        action="append",
        help="a node, coordinator or aggregator home (repeat to bundle several logs: split "
        "views are then checked across them)",
    )
    export.add_argument("--out", type=Path, required=True, help="bundle file to create")
    export.add_argument(
        "--manifests",
        type=Path,
        action="append",
        default=[],
        help="a directory of manifest versions to carry too, e.g. the authority's "
        "AUTH/manifests (each home's own manifests/ and manifest.json are always carried)",
    )
    export.set_defaults(func=run_export)

    verify = audit_sub.add_parser(
        "verify",
        help="verify a bundle offline",
        description=VERIFY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--manifest", type=Path, required=True, help="your copy of the manifest")
    verify.add_argument("--trusted-checkpoint", type=Path, help="checkpoints verified last time")
    verify.add_argument("--save-checkpoint", type=Path, help="store the newly verified checkpoints")
    verify.add_argument(
        "--evidence-dir", type=Path, help="where to write evidence (default: the bundle's folder)"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=run_verify)


def run_export(args: argparse.Namespace) -> int:
    """``fedscreen audit export``."""
    logs: list[LogExport] = []
    manifest: str | None = None
    copies: list[bytes] = []
    for home in args.home:
        logs.append(_export_home(home))
        manifest_path = home / "manifest.json"
        if manifest_path.is_file():
            copies.append(manifest_path.read_bytes())
            if manifest is None:
                manifest = manifest_path.read_text(encoding="utf-8")
        copies.extend(_manifest_files(home / HISTORY_DIR))
    for directory in args.manifests:
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory of manifest versions")
        copies.extend(_manifest_files(directory))
    history = _history(copies)
    try:
        write_bundle(args.out, logs, manifest, history=[text for _, text in history])
    except FileExistsError:
        raise ConfigError(f"{args.out} exists; refusing to overwrite") from None
    for log in logs:
        print(f"{log.origin}: {len(log.entries)} entries, {len(log.checkpoints)} checkpoints")
    versions = f"versions {history[0][0]}..{history[-1][0]}" if history else "none"
    print(f"manifest history: {len(history)} files ({versions})")
    print(f"wrote {args.out}")
    return 0


def _manifest_files(directory: Path) -> list[bytes]:
    if not directory.is_dir():
        return []
    return [
        read_public_file(path, max_bytes=MAX_MANIFEST_BYTES)
        for path in sorted(directory.glob("*.json"))
    ]


def _history(copies: list[bytes]) -> list[tuple[int, bytes]]:
    """Distinct manifest files, oldest version first. Only sorted here, under the key
    each file names: the auditor verifies them against the key it pins."""
    found: dict[tuple[int, str], bytes] = {}
    for text in copies:
        manifest = parse_manifest(text)
        found.setdefault((manifest.version, manifest.digest), text)
    return [(version, text) for (version, _), text in sorted(found.items())]


def _export_home(home: Path) -> LogExport:
    if (home / COORDINATOR_CONFIG).is_file():
        return coordinator_log(home)
    if is_aggregator_home(home):
        return aggregator_log(home)
    return node_log(home)


def _read_trusted(path: Path | None) -> dict[str, str]:
    """origin -> note, from a saved checkpoint file (JSON map) or a single raw note."""
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        return {str(k): str(v) for k, v in data["checkpoints"].items()}
    origin = text.split("\n", 1)[0]
    return {origin: text}


def run_verify(args: argparse.Namespace) -> int:
    """``fedscreen audit verify``; returns the exit code of the outcome."""
    try:
        manifest = load_manifest(args.manifest)
        bundle: Bundle = read_bundle(args.bundle)
        trusted = _read_trusted(args.trusted_checkpoint)
        reports = verify_bundle(
            bundle, manifest, trusted=trusted, entries=in_processes(os.cpu_count() or 1)
        )
    except AuditFailure as failure:
        return _report_failure(args, failure)
    except (BundleError, VerificationError, OSError, ValueError, KeyError) as exc:
        return _report_failure(args, BundleUntrusted(str(exc)))
    if args.save_checkpoint:
        saved = {r.origin: r.latest_note for r in reports if r.latest_note}
        args.save_checkpoint.write_text(
            json.dumps({"checkpoints": saved}, ensure_ascii=False, indent=1) + "\n",
            encoding="utf-8",
        )
    if args.json:
        print(
            json.dumps(
                {"valid": True, "exit_code": VALID, "logs": [r.to_json() for r in reports]},
                ensure_ascii=False,
                indent=1,
            )
        )
    else:
        for report in reports:
            _print_report(report)
        print("\nVALID: every signature, checkpoint, the history and the ε sums check out")
    return VALID


def _print_report(report: LogReport) -> None:
    print(
        f"{report.origin}: {report.size} entries ({report.answers} answers, "
        f"{report.refusals} refusals), {report.checkpoints} signed checkpoints verified"
    )
    if summary := report.coordinator_summary():
        print(summary)
    for line in report.secure.lines() if report.secure else ():
        print(line)
    for index in report.lost_budget_entries:
        print(
            f"  WARNING: entry {index} is a node recover --accept-lost-budget: ε spent "
            "after the backup may be uncounted; the node's ε totals below are a lower "
            f"bound from entry {index} on"
        )
    is_ = "≥" if report.lost_budget_entries else "="  # a lower bound: said on every line
    for year, eps in sorted(report.node_epsilon.items()):
        print(f"  {year}: node spent ε{is_}{eps:g}")
        for (y, analyst), spent in sorted(report.analyst_epsilon.items()):
            if y == year:
                print(f"    {analyst}: ε{is_}{spent:g}")


def _report_failure(args: argparse.Namespace, failure: AuditFailure) -> int:
    written: list[str] = []
    if failure.evidence:
        directory = args.evidence_dir or args.bundle.parent
        directory.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^0-9A-Za-z_.-]", "_", failure.origin or "log")
        for n, note in enumerate(failure.evidence):
            path = directory / f"evidence-{stem}-{n}.note"
            path.write_text(note, encoding="utf-8")
            written.append(str(path))
    if args.json:
        print(
            json.dumps(
                {
                    "valid": False,
                    "exit_code": failure.exit_code,
                    "reason": str(failure),
                    "origin": failure.origin,
                    "index": failure.index,
                    "evidence": written,
                },
                ensure_ascii=False,
                indent=1,
            )
        )
    else:
        label = {2: "ENTRY INVALID", 3: "HISTORY INCONSISTENT", 4: "UNTRUSTED"}[failure.exit_code]
        where = f" (first bad index {failure.index})" if failure.index is not None else ""
        print(
            f"{label}{where}: {failure.origin + ': ' if failure.origin else ''}{failure}",
            file=sys.stderr,
        )
        for path in written:
            print(f"evidence: {path}", file=sys.stderr)
    return failure.exit_code
