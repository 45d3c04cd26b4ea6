"""A synthetic reference county: the true aggregates a plan's figures would have there.

``report plan --students N`` and ``scripts/bench_report_accuracy.py`` need cell sizes
and rates to predict (or measure) accuracy; they come from a synthetic county of N
students built exactly as the demo builds its nodes (``fedscreen.synth`` exports,
ingested by the node's own code into a real node database), and every query runs
through the node's own compiler and SQL. Nothing here touches real student data.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy import Policy
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.spec import QuerySpec
from fedscreen.synth import generate, write_export

#: the county code of the reference county (any code of the catalogue would do)
REFERENCE_COUNTY = "130102"


@contextmanager
def reference_county(students: int, years: tuple[str, ...], *, seed: int = 1) -> Iterator[Path]:
    """A node database holding a synthetic county of ``students`` for each of ``years``."""
    with tempfile.TemporaryDirectory(prefix="fedscreen-reference-") as tmp:
        root = Path(tmp)
        config = init_home(root / "node", node_id=REFERENCE_COUNTY, name="reference")
        for year in years:
            export = root / f"export-{year}"
            write_export(generate(REFERENCE_COUNTY, students, year, seed=seed), export)
            _, rejected = ingest_paths(config, [export])
            if rejected:
                raise RuntimeError(f"the synthetic export for {year} was rejected")
        yield config.home / "node.db"


def true_rows(database: Path, spec: QuerySpec, policy: Policy) -> tuple[Plan, list[Any]]:
    """The query's compiled plan and its exact SQL result rows (before any noise)."""
    plan = compile_query(spec, policy)
    with sqlite3.connect(database) as conn:
        rows = conn.execute(plan.sql, plan.params).fetchall()
    return plan, rows


def true_cells(plan: Plan, rows: list[Any]) -> list[tuple[int, int]]:
    """(numerator, denominator) per cell of ``plan`` (a COUNT: (count, count))."""
    width = len(plan.spec.group_by)
    found = {tuple(r[:width]): [int(v or 0) for v in r[width:]] for r in rows}
    out = []
    for cell in plan.cells:
        values = found.get(cell, [0] * plan.aggregates)
        out.append((values[0], values[1] if len(values) > 1 else values[0]))
    return out


def reference_truth(
    database: Path, specs: Mapping[str, QuerySpec], policy: Policy
) -> dict[str, list[tuple[int, int]]]:
    """Each COUNT or RATE query's true (numerator, denominator) per cell."""
    out = {}
    for name, spec in specs.items():
        if spec.measure.kind in ("count", "rate"):
            out[name] = true_cells(*true_rows(database, spec, policy))
    return out
