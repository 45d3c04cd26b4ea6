"""Synthetic screening exports for a county: ``fedscreen synth``.

``generate`` plans a county (schools, staffing, students per grade) from a seed;
``County.screenings()`` and ``County.school_table()`` stream its rows, and
``write_export`` writes them as the CSV or XLSX files schools send to a node::

    county = generate("130102", students=2000, year="2024-2025", seed=1)
    summary = write_export(county, "out/", fmt="csv", headers="zh")

``generate_university`` plans a university running its own node (its freshmen and its
school-table row); ``County.only(school_id)`` is one school's data for a school node and
``County.without(...)`` the county without it.

Same arguments, same bytes: everything is derived from the seed (``synth.prng``).
"""

from __future__ import annotations

from fedscreen.synth.generator import (
    PROFILES,
    County,
    GradeCell,
    Profile,
    Row,
    School,
    generate,
    generate_university,
)
from fedscreen.synth.writer import ExportSummary, WrittenFile, write_export, write_table

__all__ = [
    "PROFILES",
    "County",
    "ExportSummary",
    "GradeCell",
    "Profile",
    "Row",
    "School",
    "WrittenFile",
    "generate",
    "generate_university",
    "write_export",
    "write_table",
]
