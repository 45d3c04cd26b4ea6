"""Which version of each query's release a report used, and how many nodes it combines.

A release may be followed by later versions that add answers which came late (an
offline node's, by file); ``fedscreen report run --include-late`` regenerates a report
from the newest. The model states, per query of the plan, the version its figures used
(``release_versions`` in ``report.json``), computed from the signed release bodies, so
``report verify`` recomputes it like any figure; the HTML shows it in "How to verify".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ReleaseUse", "read_versions", "release_versions"]


@dataclass(frozen=True)
class ReleaseUse:
    """One query's release as a report used it."""

    name: str
    version: int
    answered: int
    targeted: int


def release_versions(bodies: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Query name -> the version of its release (1: none stated) and the nodes it
    combines, from the verified release bodies, in the given order."""
    return {
        name: {
            "version": int(body.get("release_version", 1)),
            "answered": len(body["answered"]),
            "targeted": len(body["targeted"]),
        }
        for name, body in bodies.items()
    }


def read_versions(model: Mapping[str, Any]) -> tuple[ReleaseUse, ...]:
    """The model's ``release_versions`` (none: a report from before versions); ValueError
    naming the field if malformed."""
    stated = model.get("release_versions")
    if stated is None:
        return ()
    if not isinstance(stated, Mapping):
        raise ValueError("report model: release_versions must be an object")
    uses = []
    for name, entry in stated.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"report model: release_versions.{name} must be an object")
        numbers = [entry.get(key) for key in ("version", "answered", "targeted")]
        whole = [n for n in numbers if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
        if len(whole) != len(numbers):
            raise ValueError(
                f"report model: release_versions.{name} needs whole numbers "
                "version, answered and targeted"
            )
        uses.append(ReleaseUse(str(name), whole[0], whole[1], whole[2]))
    return tuple(uses)
