"""The content check of one entry of a node's log: what it charged, and that the sums add up.

Pure, as ``audit.verify`` (which calls it): an answer's ε joins the node's and the
analyst's sums per academic year, which must equal what the entry says was spent
and stay within the budgets it recorded; a refusal charges nothing; a rollback
adds back the ε the restored ledger forgot (``audit.events``); one whose operator
accepted lost budget is listed in the report (the sums are a lower bound from it on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from fedscreen.audit.events import accepted_lost_budget
from fedscreen.crypto.envelope import parse_json
from fedscreen.errors import EntryInvalid, VerificationError

if TYPE_CHECKING:
    from fedscreen.audit.verify import LogReport

MICRO: Final = 1_000_000


def check_node_entry(
    index: int,
    payload: bytes,
    member_id: str,
    origin: str,
    report: LogReport,
    node_micro: dict[str, int],
    analyst_micro: dict[tuple[str, str], int],
    rollback: Callable[[int, Mapping[str, Any]], dict[tuple[str, str], int]],
) -> None:
    """Check one entry of a node's log (an answer, a refusal or a rollback) and add the
    ε it charged to the sums; raises EntryInvalid."""

    def bad(reason: str) -> EntryInvalid:
        return EntryInvalid(f"entry {index}: {reason}", origin=origin, index=index)

    try:
        entry = parse_json(payload)
        kind, stated, node = entry["kind"], entry["index"], entry["node_id"]
        epsilon = round(float(entry["epsilon"]) * MICRO)
    except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
        raise bad(f"malformed entry ({exc!r})") from None
    if stated != index or node != member_id:
        raise bad(f"says it is entry {stated} of {node}")
    if kind == "refusal":
        report.refusals += 1
        if epsilon != 0:
            raise bad("a refusal charged ε")
        return
    if kind == "rollback":
        try:
            restored = rollback(index, entry)
            lost = accepted_lost_budget(entry)
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise bad(f"rollback: {exc}") from None
        report.rollbacks += 1
        if lost:
            report.lost_budget_entries.append(index)
        # ε the restored ledger forgot, charged again: the sums go on from there
        for (year, analyst), micro in restored.items():
            node_micro[year] = node_micro.get(year, 0) + micro
            analyst_micro[year, analyst] = analyst_micro.get((year, analyst), 0) + micro
        return
    if kind != "answer":
        raise bad(f"unknown kind {kind!r}")
    report.answers += 1
    if epsilon == 0:
        return
    try:
        analyst = str(entry["analyst"])
        years = [str(y) for y in entry["query"]["years"]]
        budgets = entry["budget_after"]
    except (KeyError, TypeError) as exc:
        raise bad(f"malformed charge ({exc!r})") from None
    for year in years:
        node_micro[year] = node_micro.get(year, 0) + epsilon
        analyst_micro[year, analyst] = analyst_micro.get((year, analyst), 0) + epsilon
        try:
            recorded = budgets[year]
            node_spent = round(float(recorded["node_spent"]) * MICRO)
            analyst_spent = round(float(recorded["analyst_spent"]) * MICRO)
            node_budget = round(float(recorded["node_budget"]) * MICRO)
            analyst_budget = round(float(recorded["analyst_budget"]) * MICRO)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise bad(f"no budget record for {year} ({exc!r})") from None
        if node_spent != node_micro[year] or analyst_spent != analyst_micro[year, analyst]:
            raise bad(
                f"says ε={node_spent / MICRO:g} was spent in {year}, but the log's charges add "
                f"up to ε={node_micro[year] / MICRO:g}"
            )
        if node_micro[year] > node_budget:
            raise bad(f"the node's {year} budget ε={node_budget / MICRO:g} is exceeded")
        if analyst_micro[year, analyst] > analyst_budget:
            raise bad(f"{analyst}'s {year} budget ε={analyst_budget / MICRO:g} is exceeded")
