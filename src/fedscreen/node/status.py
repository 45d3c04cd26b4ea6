"""What a node holds, in aggregate, for its operator (``fedscreen node status``).

Only counts per year, instrument, school type and load — nothing student-level.
These counts stay on the operator's screen; they are not released to anyone.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fedscreen.node import store
from fedscreen.screening.instruments import instruments


@dataclass(frozen=True)
class NodeStatus:
    """Aggregate contents of a node database."""

    data_version: int
    #: (academic year, school type, students in the bounded view, screened)
    by_school_type: list[tuple[str, str, int, int]]
    #: (academic year, instrument, valid results, invalid results)
    by_instrument: list[tuple[str, str, int, int]]
    #: (academic year, schools in the school table, grades)
    schools: list[tuple[str, int, int]]
    #: (batch, kind, file, rows, year, loaded at, replaced batches, replaced by)
    loads: list[tuple[int, str, str, int, str, str, str, int | None]]


def node_status(conn: sqlite3.Connection, *, last_loads: int = 10) -> NodeStatus:
    """Collect the node's status from its database."""
    by_type = conn.execute(
        "SELECT academic_year, school_type, COUNT(*), SUM(screened) FROM screenings "
        "GROUP BY academic_year, school_type ORDER BY academic_year, school_type"
    ).fetchall()
    by_instrument: list[tuple[str, str, int, int]] = []
    for code in instruments():
        by_instrument += conn.execute(
            f"SELECT academic_year, ?, SUM({code}_valid = 1), SUM({code}_valid = 0) "
            f"FROM screenings WHERE {code}_valid IS NOT NULL GROUP BY academic_year",
            (code,),
        ).fetchall()
    by_instrument.sort()
    schools = conn.execute(
        "SELECT academic_year, COUNT(DISTINCT school_id), COUNT(*) FROM school_grade "
        "GROUP BY academic_year ORDER BY academic_year"
    ).fetchall()
    loads = conn.execute(
        "SELECT batch_id, kind, file_name, rows, academic_year, loaded_at, replaced, replaced_by "
        "FROM ingest_batch ORDER BY batch_id DESC LIMIT ?",
        (last_loads,),
    ).fetchall()
    return NodeStatus(store.data_version(conn), by_type, by_instrument, schools, loads)
