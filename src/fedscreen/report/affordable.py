"""Can every node afford a plan? Checked against the nodes' own signed budget statements.

Each node signs what it has spent (``fedscreen.protocol.budget``); the coordinator only relays
the statements. A plan is refused before any query runs if, at some node, the ε it
would charge in a year exceeds what that node has left for this analyst, or one of
its queries costs more than the node's per-query cap (the node would refuse it), or
a secure query would sum fewer nodes than the catalogue's ``[secure] min_nodes`` (the
coordinator would refuse it).
A query above the node's approval threshold is allowed but flagged: the node
refuses it (and files it for its operator) until approved, so that county is
missing from its figures. The costs are upper bounds: a node
whose county policy clamps tighter charges less, and an identical query already
answered on the same data is answered again from the node's cache at no cost.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from fedscreen.errors import PlanRefused
from fedscreen.protocol.answer import shipped_catalogue
from fedscreen.protocol.budget import Budgets, from_micro, to_micro
from fedscreen.report.plan import ReportPlan


@dataclass(frozen=True)
class YearCost:
    """One node's cost and what it has left, in one academic year."""

    year: str
    cost: float
    #: ε the node has left for this analyst; None when the node sent no statement
    left: float | None
    budget: float | None


@dataclass(frozen=True)
class NodeCheck:
    """What the plan costs one node, and whether it can pay."""

    node_id: str
    connected: bool
    #: seconds since the node signed its statement; None when it sent none
    age_s: float | None
    years: tuple[YearCost, ...]
    #: reasons the node cannot run the plan (overspend, per-query cap)
    problems: tuple[str, ...] = ()
    #: things to know that do not stop the plan (approval waits, unknown budget)
    notes: tuple[str, ...] = field(default=())


def check_plan(
    plan: ReportPlan,
    budgets: Budgets,
    *,
    analyst: str,
    nodes: Sequence[str],
    queries: Collection[str] | None = None,
) -> list[NodeCheck]:
    """Check the plan (or only its ``queries``) against the statement of each of ``nodes``."""
    planned = [q for q in plan.asked.values() if queries is None or q.name in queries]
    # the ledger charges each query rounded up to a micro-ε: add up the same way
    micro: dict[str, int] = {}
    for query in planned:
        for year in query.years:
            micro[year] = micro.get(year, 0) + to_micro(query.cost)
    now_ms = time.time() * 1000
    fewest = shipped_catalogue().secure.min_nodes
    # the coordinator refuses a secure query asked of fewer nodes: say so before anything
    # runs (and charges), not half way through the plan
    too_few = [
        f"query {q.name} is secure: it sums at least {fewest} nodes and the plan asks "
        f"{len(nodes)}: it would be refused"
        for q in planned
        if q.secure and len(nodes) < fewest
    ]
    checks = []
    for node in nodes:
        statement = budgets.statements.get(node)
        connected = node in budgets.connected
        if statement is None:
            years = tuple(YearCost(y, from_micro(m), None, None) for y, m in sorted(micro.items()))
            checks.append(
                NodeCheck(
                    node, connected, None, years, tuple(too_few),
                    notes=("no budget statement: unknown",),
                )
            )  # fmt: skip
            continue
        problems, notes = list(too_few), []
        years_out = []
        for year, cost in sorted(micro.items()):
            left_micro = statement.remaining_micro(year, analyst)
            left = from_micro(left_micro)
            years_out.append(
                YearCost(year, from_micro(cost), left, statement.analyst_budget(analyst))
            )
            if cost > left_micro:
                problems.append(
                    f"{year}: the plan costs ε={from_micro(cost):g}, {node} has "
                    f"ε={left:g} left for {analyst}"
                )
        for query in planned:
            if query.public:
                continue
            if query.cost > statement.max_epsilon_per_query:
                problems.append(
                    f"query {query.name} costs ε={query.cost:g}, above {node}'s per-query "
                    f"cap {statement.max_epsilon_per_query:g}: it would be refused"
                )
            if query.cells > statement.limits.max_groups:
                problems.append(
                    f"query {query.name} releases {query.cells} cells, above {node}'s limit "
                    f"of {statement.limits.max_groups}: it would be refused"
                )
            approval = statement.approval_above_epsilon
            if approval is not None and to_micro(query.cost) > to_micro(approval):
                # the node files a pending request and refuses at once: it is missing from
                # this run's figures unless its operator approves before the plan is rerun
                notes.append(
                    f"query {query.name} (ε={query.cost:g}) needs {node}'s operator's approval "
                    f"(above ε={approval:g}): {node} refuses it until approved"
                )
        if not connected:
            notes.append("not connected now: it will be listed as missing")
        checks.append(
            NodeCheck(
                node,
                connected,
                max(0.0, (now_ms - statement.issued_at_ms) / 1000),
                tuple(years_out),
                tuple(problems),
                tuple(notes),
            )
        )
    return checks


def refuse_if_unaffordable(checks: Sequence[NodeCheck]) -> None:
    """Raise PlanRefused naming every problem, if there is one."""
    problems = [p for c in checks for p in c.problems]
    if problems:
        raise PlanRefused("the plan is refused before any query runs:\n  " + "\n  ".join(problems))
