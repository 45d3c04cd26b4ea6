"""A city or county report's comparison with the province's published report.

``report run --scope city:1301 --province-report DIR`` shows, beside each of the city's
figures, the figure the province already published for the same statistic: read from
the province report's ``report.json`` (after ``report verify`` accepted it), never
asked again. The city report keeps a byte-for-byte copy (``province-report.json``) and
its SHA-256, so ``report verify`` recomputes the comparison from the same bytes; the
province report's releases are named by their query ids, to find in the coordinator's
log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.errors import ConfigError
from fedscreen.report.format import PROVINCE
from fedscreen.report.plan import ReportPlan

__all__ = ["PROVINCE_COPY", "ProvinceReport"]

#: the copy of the province's report.json in a city or county report's directory
PROVINCE_COPY: Final = "province-report.json"


@dataclass(frozen=True)
class ProvinceReport:
    """The province's published report model, and the SHA-256 of its bytes."""

    model: Mapping[str, Any]
    sha256: str
    data: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> ProvinceReport:
        """Parse a province ``report.json``; ConfigError if it is not a report model."""
        try:
            model = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"the province report is not JSON: {exc}") from None
        if not isinstance(model, dict) or not isinstance(model.get("sections"), list):
            raise ConfigError("the province report has no sections: not a report.json")
        return cls(model, hashlib.sha256(data).hexdigest(), data)

    def check_for(self, plan: ReportPlan, nodes: Sequence[str] = ()) -> None:
        """ConfigError unless this is a province-scope report of ``plan`` (same plan file
        by SHA-256, same years): only then are its statistics the same questions; and
        unless it asked every one of ``nodes`` (the scoped report's): a province report
        narrowed to a few nodes (``--nodes``) is not the province's figure."""
        scope = self.model.get("scope")
        scope_id = scope.get("id", PROVINCE) if isinstance(scope, Mapping) else PROVINCE
        if scope_id != PROVINCE:
            raise ConfigError(f"the report given as the province's covers {scope_id}")
        stated = self.model.get("plan")
        if not isinstance(stated, Mapping):
            raise ConfigError("the province report names no plan")
        if stated.get("name") != plan.name or stated.get("sha256") != plan.sha256:
            raise ConfigError(
                f"the province report ran plan {stated.get('name')!r} "
                f"(sha256 {str(stated.get('sha256'))[:16]}…), not this plan "
                f"{plan.name!r} (sha256 {plan.sha256[:16]}…)"
            )
        years = (stated.get("year"), stated.get("previous_year"))
        if years != (plan.year, plan.previous_year):
            raise ConfigError(
                f"the province report is for {stated.get('year')}, this report for {plan.year}"
            )
        nodes_stated = self.model.get("nodes")
        asked = {
            str(n.get("id"))
            for n in (nodes_stated if isinstance(nodes_stated, list) else [])
            if isinstance(n, Mapping)
        }
        left_out = sorted(set(nodes) - asked)
        if left_out:
            raise ConfigError(
                f"the province report did not ask {', '.join(left_out[:5])}"
                f"{' …' if len(left_out) > 5 else ''}: it is not the province's figure for them"
            )

    def _statistics(self) -> dict[str, Mapping[str, Any]]:
        # a copy edited into another shape is read as holding nothing, never a traceback
        # (verify then finds the report's comparison is not what the copy gives)
        return {
            str(s.get("id")): s
            for section in self.model["sections"]
            if isinstance(section, Mapping) and isinstance(section.get("statistics"), list)
            for s in section["statistics"]
            if isinstance(s, Mapping)
        }

    def comparison(self, statistic: str) -> dict[str, Any]:
        """A statistic's ``province`` entry: the province's published rows and the query
        ids of the releases they came from (nothing if the province report lacks it)."""
        stat = self._statistics().get(statistic)
        if stat is None:
            return {}
        rows = stat.get("rows")
        queries = stat.get("queries")
        return {
            "province": {
                "queries": list(queries) if isinstance(queries, list) else [],
                "rows": [
                    dict(r)
                    for r in (rows if isinstance(rows, list) else [])
                    if isinstance(r, Mapping) and r.get("scope") == PROVINCE
                ],
            }
        }

    def summary(self) -> dict[str, Any]:
        """What the report states about the province report it compares with."""
        plan = self.model.get("plan", {})
        releases = self.model.get("releases")
        return {
            "file": PROVINCE_COPY,
            "sha256": self.sha256,
            "title": self.model.get("title"),
            "analyst": self.model.get("analyst"),
            "generated_at": self.model.get("generated_at"),
            "plan_sha256": plan.get("sha256") if isinstance(plan, Mapping) else None,
            "year": plan.get("year") if isinstance(plan, Mapping) else None,
            "releases": dict(releases) if isinstance(releases, Mapping) else {},
        }
