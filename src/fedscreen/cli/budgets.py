"""``fedscreen budgets``: what each node has spent and has left, from its own signed statement.

Fetches the nodes' budget statements from the coordinator and verifies each
against the caller's own manifest (the node's signature: the coordinator only
relays them), then prints per node and academic year what the node and this
analyst have spent, what this analyst has left, and the node's per-query cap and
approval threshold. Costs no privacy budget; answers no query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fedscreen.analyst.budgets import fetch_budgets
from fedscreen.cli.output import table
from fedscreen.protocol.budget import Budgets, BudgetStatement
from fedscreen.trust.identity import load_identity

#: the year column when no node has charged anything yet: every year is untouched
ANY_YEAR = "(any)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``budgets``."""
    budgets = sub.add_parser(
        "budgets",
        help="every node's privacy budget, spent and left, from its signed statement",
        description="Fetch every node's signed budget statement from the coordinator, verify "
        "it against this member's manifest and show ε spent and left per academic year. "
        "A statement is as old as its age column says: it is refreshed whenever the node "
        "connects, answers or refuses.",
    )
    budgets.add_argument(
        "--home", type=Path, required=True, help="the analyst's (or auditor's) identity home"
    )
    budgets.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    budgets.add_argument(
        "--coordinator-id", help="its member id (default: the one coordinator in the manifest)"
    )
    budgets.add_argument(
        "--year", help="only this academic year, e.g. 2024-2025 (default: every year charged)"
    )
    budgets.add_argument("--format", choices=("table", "json"), default="table")
    budgets.set_defaults(func=run_budgets)


def run_budgets(args: argparse.Namespace) -> int:
    """``fedscreen budgets``."""
    identity = load_identity(args.home)
    fetched = asyncio.run(
        fetch_budgets(args.home, args.coordinator, coordinator_id=args.coordinator_id)
    )
    # an auditor spends nothing: the per-analyst columns are an analyst's own
    analyst = identity.member_id if identity.role == "analyst" else None
    doc = budgets_json(fetched, analyst=analyst, year=args.year, now_ms=int(time.time() * 1000))
    if args.format == "json":
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print_budgets(doc)
    return 0


def budgets_json(
    budgets: Budgets, *, analyst: str | None, year: str | None, now_ms: int
) -> dict[str, Any]:
    """The verified statements as one JSON document, per node and academic year."""
    if year is not None:
        years: list[str] = [year]
    else:
        years = sorted({y for s in budgets.statements.values() for y in s.years})
    nodes = []
    for node_id in sorted({*budgets.statements, *budgets.missing}):
        statement = budgets.statements.get(node_id)
        entry: dict[str, Any] = {
            "node_id": node_id,
            "connected": node_id in budgets.connected,
            "statement": statement is not None,
        }
        if statement is not None:
            entry.update(_statement_json(statement, analyst, years, now_ms))
        nodes.append(entry)
    return {
        "analyst": analyst,
        "connected": list(budgets.connected),
        "missing": list(budgets.missing),
        "nodes": nodes,
    }


def _statement_json(
    statement: BudgetStatement, analyst: str | None, years: list[str], now_ms: int
) -> dict[str, Any]:
    rows = []
    # no year charged anywhere: spent is 0 in every year, so one row stands for them all
    for year in years or [ANY_YEAR]:
        rows.append(
            {
                "year": year,
                "node_spent": statement.spent(year),
                "analyst_spent": None if analyst is None else statement.spent(year, analyst),
                "remaining": None if analyst is None else statement.remaining(year, analyst),
            }
        )
    return {
        "issued_at_ms": statement.issued_at_ms,
        "age_s": max(0, now_ms - statement.issued_at_ms) // 1000,
        "policy_digest": statement.policy_digest,
        "epsilon_per_node_per_year": statement.epsilon_per_node_per_year,
        "analyst_budget": None if analyst is None else statement.analyst_budget(analyst),
        "max_epsilon_per_query": statement.max_epsilon_per_query,
        "approval_above_epsilon": statement.approval_above_epsilon,
        "years": rows,
        "body": statement.body,
    }


def print_budgets(doc: dict[str, Any], *, out: TextIO | None = None) -> None:
    """Print :func:`budgets_json`'s document as a table."""
    stream = out or sys.stdout
    analyst = doc["analyst"]
    who = f"analyst {analyst}" if analyst else "this member (not an analyst)"
    stream.write(f"privacy budgets (ε) from each node's signed statement, verified; for {who}\n")
    rows: list[list[object]] = []
    for node in doc["nodes"]:
        connected = "yes" if node["connected"] else "no"
        if not node["statement"]:
            rows.append([node["node_id"], connected, "no statement", "", "", "", "", "", ""])
            continue
        approval = node["approval_above_epsilon"]
        for year in node["years"]:
            mine = (
                "-"
                if analyst is None
                else f"{year['analyst_spent']:g} / {node['analyst_budget']:g}"
            )
            rows.append(
                [
                    node["node_id"],
                    connected,
                    _age(node["age_s"]),
                    year["year"],
                    f"{year['node_spent']:g} / {node['epsilon_per_node_per_year']:g}",
                    mine,
                    "-" if year["remaining"] is None else f"{year['remaining']:g}",
                    f"{node['max_epsilon_per_query']:g}",
                    "none" if approval is None else f"above {approval:g}",
                ]
            )
    table(
        [
            "node",
            "connected",
            "statement age",
            "year",
            "node spent / budget",
            "analyst spent / budget",
            "left for analyst",
            "per-query cap",
            "approval",
        ],
        rows,
        out=stream,
    )


def _age(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86_400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"
