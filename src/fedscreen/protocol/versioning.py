"""Later versions of a release: what a version 2 or more states, and what it may change.

A release made before an offline node's answer came by file is followed by later
versions (``coordinator.inbox``): each names its number (``release_version``, 2 or more)
and the release it follows (``supersedes``, the SHA-256 of that release envelope). A
later version only adds late answers, so its population share counts the same
eligible students targeted and no fewer answered (``later_population``), which the
auditor and ``report run --include-late`` check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["later_population", "versioning"]

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def later_population(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> bool:
    """Whether a later release version's ``population`` follows from its predecessor's:
    the same eligible students targeted and the same nodes without a count (a late
    answer adds no node to the query), and no fewer answered (a late answer only adds)."""
    if before is None or after is None:
        return before == after
    return (
        after.get("eligible_targeted") == before.get("eligible_targeted")
        and after.get("unknown") == before.get("unknown")
        and before.get("eligible_answered", 0)
        <= after.get("eligible_answered", 0)
        <= after.get("eligible_targeted", 0)
    )


def versioning(body: Mapping[str, Any]) -> dict[str, Any]:
    """``release_version`` and ``supersedes``: both absent (version 1), or a version of 2
    or more naming the SHA-256 of the release it follows."""
    if "release_version" not in body and "supersedes" not in body:
        return {}
    version, supersedes = body.get("release_version"), body.get("supersedes")
    if isinstance(version, bool) or not isinstance(version, int) or version < 2:
        raise TypeError("release_version must be a whole number of 2 or more")
    if not isinstance(supersedes, str) or not _SHA256_HEX.fullmatch(supersedes):
        raise TypeError("supersedes must be the SHA-256 (hex) of the release it follows")
    return {"release_version": version, "supersedes": supersedes}
