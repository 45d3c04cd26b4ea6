"""Audit bundles: a self-contained export of transparency logs for offline verification.

A bundle is one JSON file::

    {"format": "fedscreen-audit-bundle/2",
     "manifest": <manifest file, as written by the authority> | null,
     "manifests": [<manifest file>, ...],      (optional: the history, oldest first)
     "logs": [{"member_id": "130102", "origin": "fedscreen.node/130102",
               "entries": ["<base64 of each entry's exact bytes>", ...],
               "checkpoints": ["<signed note>", ...]}]}

Entries are kept as their exact bytes (base64), because their signatures and the
Merkle tree are over those bytes. Format 2 is format 1 whose coordinator logs may
hold unsigned answer entries (``tlog.entries``): an auditor of an earlier version,
which would take them for forgeries, refuses the file as of an unknown format
instead; both are read here. The manifest copies are not trusted: the
auditor verifies each against the authority key it pins
(``fedscreen.audit.manifests``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from fedscreen.crypto.envelope import parse_json
from fedscreen.errors import BundleError
from fedscreen.tlog.export import Bundle, LogExport

BUNDLE_FORMAT: Final = "fedscreen-audit-bundle/2"
#: the formats read: the current one, and the one before unsigned answer entries
READ_FORMATS: Final = frozenset({BUNDLE_FORMAT, "fedscreen-audit-bundle/1"})
#: refuse absurd bundles before parsing them (bytes)
MAX_BUNDLE_BYTES: Final = 4 << 30


def write_bundle(
    path: Path,
    logs: list[LogExport],
    manifest_text: str | None,
    *,
    history: Sequence[str | bytes] = (),
) -> None:
    """Write a bundle file (refuses to overwrite); ``history`` is the manifest versions
    to carry, oldest first."""
    data = {
        "format": BUNDLE_FORMAT,
        "manifest": json.loads(manifest_text) if manifest_text else None,
        "manifests": [json.loads(text) for text in history],
        "logs": [log.to_json() for log in logs],
    }
    with path.open("x", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)
        handle.write("\n")


def read_bundle(path: Path) -> Bundle:
    """Parse a bundle file; raises BundleError on anything malformed."""
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path}: larger than {MAX_BUNDLE_BYTES} bytes")
        data = parse_json(path.read_bytes())
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not JSON: {exc}") from None
    try:
        if not isinstance(data, dict) or data.get("format") not in READ_FORMATS:
            raise BundleError(f"{path}: not a {BUNDLE_FORMAT} file (nor of format 1)")
        if not isinstance(data["logs"], list):
            raise BundleError(f"{path}: logs must be a list")
        logs = []
        for raw in data["logs"]:
            if not isinstance(raw, dict):
                raise BundleError(f"{path}: each log must be an object")
            entries, notes = raw["entries"], raw["checkpoints"]
            if not _strings(entries) or not _strings(notes):
                raise BundleError(f"{path}: entries and checkpoints must be lists of strings")
            if not isinstance(raw["member_id"], str) or not isinstance(raw["origin"], str):
                raise BundleError(f"{path}: member_id and origin must be strings")
            decoded = tuple(base64.b64decode(e, validate=True) for e in entries)
            logs.append(LogExport(raw["member_id"], raw["origin"], decoded, tuple(notes)))
        manifest = data.get("manifest")
        history = data.get("manifests", [])
        if not isinstance(history, list) or not all(isinstance(m, dict) for m in history):
            raise BundleError(f"{path}: manifests must be a list of manifest files")
        return Bundle(
            tuple(logs),
            json.dumps(manifest) if manifest is not None else None,
            tuple(json.dumps(m, ensure_ascii=False) for m in history),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BundleError(f"{path}: malformed bundle: {exc!r}") from None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
