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


def secure_plan(path: Path, *, epsilon: float, year: str = "2024-2025") -> Path:
    """Write a plan of a secure count (valid PHQ-9 with item 9 ≥ 1, by sex) read as
    released and as a rate over a plain count of the same students; returns ``path``."""
    where = f"academic_year = '{year}' AND phq9_valid = 1"
    path.write_text(
        f'name = "secure"\ntitle = "Secure report"\nyear = "{year}"\ndeadline_ms = 8000\n'
        '[[section]]\nid = "s"\ntitle = "Self-harm ideation"\n'
        # the plain query first: a run that stops at the secure one keeps it
        "[queries.n_valid]\n"
        f'sql = "SELECT sex, COUNT(*) FROM screenings WHERE {where} GROUP BY sex"\n'
        f"epsilon = {epsilon}\n"
        "[queries.s_item9]\n"
        f'sql = "SELECT sex, COUNT(*) FROM screenings WHERE {where} AND phq9_item9 = 1 '
        f'GROUP BY sex"\nepsilon = {epsilon}\nsecure = true\n'
        '[[statistic]]\nid = "item9_count"\nsection = "s"\ntitle = "Item 9 ≥ 1"\n'
        'description = "A secure count."\nunit = "count"\nquery = "s_item9"\n'
        '[[statistic]]\nid = "item9_rate"\nsection = "s"\ntitle = "Item 9 ≥ 1, share"\n'
        'description = "A secure count over a plain one."\nunit = "percent"\n'
        'ratio = ["s_item9", "n_valid"]\n'
        '[[statistic]]\nid = "valid"\nsection = "s"\ntitle = "Valid PHQ-9"\n'
        'description = "A plain count."\nunit = "count"\nquery = "n_valid"\n',
        encoding="utf-8",
    )
    return path
