"""The one academic year a federated query without years is answered for.

A query that names no ``academic_year`` would otherwise be answered by each node for
its own latest year, and the province figure would sum across years. The coordinator
pins one year for every node (the release states it): coordinator.toml's ``[query]
academic_year`` if set, else the latest year most of the asked nodes announced. With
no pin at all (no node announced one), the year most answers are for is kept and
the others are dropped as missing.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.protocol.answer import VerifiedAnswer

__all__ = ["ACADEMIC_YEAR", "configured_year", "one_year", "pinned_year"]

#: what ``[query] academic_year`` in coordinator.toml must look like
ACADEMIC_YEAR: Final = re.compile(r"[0-9]{4}-[0-9]{4}")


def configured_year(config_file: Path) -> str | None:
    """``[query] academic_year`` of the coordinator's config file (None: not set)."""
    try:
        config = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_file}: {exc}") from None
    year = config.get("query", {}).get("academic_year")
    if year is None:
        return None
    if not isinstance(year, str) or not ACADEMIC_YEAR.fullmatch(year):
        raise ConfigError('[query] academic_year must be a year like "2024-2025"')
    return year


def pinned_year(
    configured: str | None, asked: Iterable[str], announced: Mapping[str, str]
) -> str | None:
    """``configured`` if set; else the latest year that most of the ``asked`` nodes
    announced (``announced``: node -> its latest year); None if no node announced one.

    A tie goes to the *older* year: a node announcing a newer latest year has most
    likely loaded the older one too, while one whose latest year is older holds nothing
    newer — so a single node cannot steer the federation to a year the others have not
    loaded by announcing a newer one. (A node without the pinned year refuses
    ``no-data`` and is listed missing.)
    """
    if configured is not None:
        return configured
    counts = Counter(announced[n] for n in asked if announced.get(n))
    if not counts:
        return None
    most = max(counts.values())
    return min(year for year, count in counts.items() if count == most)


def one_year(
    verified: dict[str, tuple[bytes, VerifiedAnswer]], lost: list[str], why: dict[str, str]
) -> str | None:
    """With no pinned year, the year most answers are for (ties: the older, as
    :func:`pinned_year`); the answers for other years are dropped as missing (in place).
    None if no answer verified."""
    years = Counter(answer.answer.query.years[0] for _, answer in verified.values())
    if not years:
        return None
    # Academic years ("2024-2025") sort as strings; min over (-count, year) is the most
    # common year, the older on a tie.
    year = min(years.items(), key=lambda item: (-item[1], item[0]))[0]
    for node_id, (_, answer) in list(verified.items()):
        if answer.answer.query.years[0] != year:
            del verified[node_id]
            lost.append(node_id)
            why[node_id] = f"answered for another academic year than {year}"
    return year
