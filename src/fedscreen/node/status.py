"""What a node holds, in aggregate, for its operator (``fedscreen node status``).

Only counts per year, instrument, school type and load — nothing student-level.
These counts stay on the operator's screen; they are not released to anyone.
Beside them, what the running agent last recorded of its link to the
coordinator (``link.json``: connected or not, the clock offset).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen._util.files import replace_file
from fedscreen.node import ledger, store
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
    #: every ``fedscreen node recover`` of this database, oldest first
    recoveries: list[ledger.RecoveryRecord] = field(default_factory=list)


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
    ledger.ensure_recovery_schema(conn)
    return NodeStatus(
        store.data_version(conn),
        by_type,
        by_instrument,
        schools,
        loads,
        ledger.recoveries(conn),
    )


#: in the node's home: what the agent last knew of its link (JSON, replaced atomically)
LINK_FILE: Final = "link.json"


@dataclass(frozen=True)
class LinkState:
    """What ``fedscreen node serve`` last recorded about its link to the coordinator."""

    coordinator: str
    connected: bool
    #: the node's clock minus the coordinator's (ms); None if the coordinator sent no clock
    clock_offset_ms: int | None
    clock_tolerance_ms: int
    #: when this was recorded (ms since the epoch, the node's clock)
    updated_ms: int
    #: why this node refuses every query, or "" if it does not
    refusing: str = ""
    #: a manifest with the version in force but other content, refused ("" none seen)
    manifest_conflict: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form (the file's content)."""
        return {
            "coordinator": self.coordinator,
            "connected": self.connected,
            "clock_offset_ms": self.clock_offset_ms,
            "clock_tolerance_ms": self.clock_tolerance_ms,
            "updated_unix_ms": self.updated_ms,
            "refusing": self.refusing,
            "manifest_conflict": self.manifest_conflict,
        }


def write_link(home: Path, state: LinkState) -> None:
    """Record the link's state in ``HOME/link.json`` (atomically: all of it or the old one)."""
    text = json.dumps(state.to_json(), ensure_ascii=False, indent=2) + "\n"
    replace_file(home / LINK_FILE, text.encode("utf-8"))


def read_link(home: Path) -> LinkState | None:
    """The link's state as the agent last recorded it; None if never recorded or unreadable."""
    try:
        doc = json.loads((home / LINK_FILE).read_text(encoding="utf-8"))
        offset = doc["clock_offset_ms"]
        return LinkState(
            coordinator=str(doc["coordinator"]),
            connected=bool(doc["connected"]),
            clock_offset_ms=None if offset is None else int(offset),
            clock_tolerance_ms=int(doc["clock_tolerance_ms"]),
            updated_ms=int(doc["updated_unix_ms"]),
            refusing=str(doc.get("refusing", "")),
            manifest_conflict=str(doc.get("manifest_conflict", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
