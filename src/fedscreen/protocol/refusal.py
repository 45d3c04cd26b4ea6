"""Refusal reasons as a node writes them to its signed log: ``<code>: <detail>``.

The code comes from a fixed vocabulary (:data:`CODES`), so auditors and tools can
count refusals by kind; the detail is human-readable, printable and at most
``MAX_DETAIL_CHARS`` long. A detail never quotes an unverified envelope (its
payload type, key ids or JSON): what the node could not verify is described in
fixed words.
"""

from __future__ import annotations

from typing import Final

#: every code a refusal reason may start with
CODES: Final = frozenset(
    {
        "invalid-query",  # not a well-formed, validly signed query from an active analyst
        "stale",  # issued outside the freshness window of the node's clock
        "deadline-passed",  # the coordinator's deadline passed before the node could start
        "not-addressed",  # the query names other nodes
        "out-of-scope",  # the node lies outside the analyst's scope (trust.scope)
        "policy",  # the node's policy does not allow this question or ε
        "budget",  # not enough ε left
        "approval-required",  # waits for an operator's approval
        "no-data",  # nothing to answer from
        "revoked",  # the analyst is no longer an active member
        "internal",  # the node failed; nothing was charged
    }
)
#: longest detail a reason carries (characters)
MAX_DETAIL_CHARS: Final = 300


def refusal_reason(code: str, detail: str) -> str:
    """``"<code>: <detail>"``, the detail made printable and cut to ``MAX_DETAIL_CHARS``.

    An unknown code is a programming error (ValueError), not a refusal.
    """
    if code not in CODES:
        raise ValueError(f"unknown refusal code {code!r}")
    clean = " ".join("".join(c if c.isprintable() else " " for c in detail).split())
    clean = clean.removeprefix(f"{code}: ")  # a detail that already names its code
    if len(clean) > MAX_DETAIL_CHARS:
        clean = clean[: MAX_DETAIL_CHARS - 1] + "…"
    return f"{code}: {clean or 'no detail'}"


def parse_reason(reason: str) -> tuple[str, str]:
    """(code, detail) of a reason; ValueError unless it is in the fixed vocabulary."""
    code, sep, detail = reason.partition(": ")
    if not sep or code not in CODES or len(detail) > MAX_DETAIL_CHARS:
        raise ValueError("not a refusal reason of the fixed vocabulary")
    return code, detail
