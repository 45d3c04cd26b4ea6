"""Test helper: small report plans of plain counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def count_plan(path: Path, epsilons: Sequence[float], *, year: str = "2024-2025") -> Path:
    """Write a plan of one count per ε given, each its own statistic; returns ``path``.

    The questions differ (GAD-7 ≥ 0, ≥ 1, …), so none is answered from a node's store.
    """
    lines = [
        'name = "test"', 'title = "Test report"', f'year = "{year}"', "deadline_ms = 8000",
        "[[section]]", 'id = "s"', 'title = "Counts"',
    ]  # fmt: skip
    for n, epsilon in enumerate(epsilons):
        lines += [
            f"[queries.q{n}]",
            "sql = \"SELECT COUNT(*) FROM screenings WHERE academic_year = '{year}' "
            f'AND gad7_total >= {n}"',
            f"epsilon = {epsilon}",
            "[[statistic]]",
            f'id = "s{n}"',
            f'section = "s"\ntitle = "GAD-7 ≥ {n}"\ndescription = "A count."',
            'unit = "count"',
            f'query = "q{n}"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
