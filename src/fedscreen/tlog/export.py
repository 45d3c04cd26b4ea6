"""Logs as exported for auditors, and a bundle of them: plain data for the offline verifier.

Reading and writing bundle files is ``fedscreen.audit.bundle``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = ["Bundle", "LogExport"]


@dataclass(frozen=True)
class LogExport:
    """One member's log as exported for auditors: the exact entry bytes and its checkpoints."""

    member_id: str
    origin: str
    entries: tuple[bytes, ...]
    checkpoints: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form (entries in base64: signatures and the tree are over their bytes)."""
        return {
            "member_id": self.member_id,
            "origin": self.origin,
            "entries": [base64.b64encode(e).decode("ascii") for e in self.entries],
            "checkpoints": list(self.checkpoints),
        }


@dataclass(frozen=True)
class Bundle:
    """A parsed (not yet verified) bundle: logs, and the manifest copies it carries."""

    logs: tuple[LogExport, ...]
    manifest: str | None
    #: the manifest history: every version the exporter found, oldest first
    manifests: tuple[str, ...] = ()
