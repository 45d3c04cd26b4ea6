"""A query's verified release as the report reads it: cells and noisy parts by scope.

The province's cells are the release's own; a city's are the coordinator's combination
over its counties; a county's are its node's signed answer. A secure release
(``protocol.secure``) has the province's only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.protocol.answer import dataset_public
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.query import mechanisms
from fedscreen.query.spec import QuerySpec
from fedscreen.report.format import PROVINCE
from fedscreen.report.parts import Part

__all__ = ["SECURE_SENSITIVITY", "Released"]

#: a secure count's sensitivity (one student is in one cell of one node): each partial's
#: noise scale is the one its ε gives at it, as the analyst checked on each signed partial
SECURE_SENSITIVITY: Final = 1


@dataclass(frozen=True)
class Released:
    """One query's verified release: the signed body and each node's verified answer.

    County figures come from the nodes' own signed answers (``node_bodies``), which the
    release was checked to repeat; the release adds the provincial combination. A secure
    query's release has province figures only (the sum of its two aggregators' partials:
    its answers hold sealed shares, no value), or none and the reason (``failure``).
    """

    body: Mapping[str, Any]
    node_bodies: Mapping[str, Mapping[str, Any]]
    #: node id -> ε that node charged for this delivery (signed by the node; 0 when it
    #: gave its stored answer again; None if it did not say)
    charged: Mapping[str, float | None]
    #: scope id -> its counties, for rows between the province and a county (cities)
    areas: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def answered(self) -> list[str]:
        """The nodes whose verified answers the release combines, in order."""
        return sorted(self.node_bodies)

    @functools.cached_property
    def public(self) -> bool:
        """Whether the query's dataset is public (exact values), as the shipped catalogue
        says: never read from what an answer states about itself."""
        return dataset_public(QuerySpec.from_json(dict(self.body["query"])))

    @property
    def secure(self) -> bool:
        """Whether the figures came from secure aggregation (province totals only)."""
        return isinstance(self.body.get("secure"), Mapping)

    @property
    def failure(self) -> str | None:
        """Why a secure release states no figure (None: it does, or it is not secure)."""
        section = self.body.get("secure")
        if not isinstance(section, Mapping) or section.get("failure") is None:
            return None
        return str(section["failure"])

    @property
    def aggregators(self) -> list[str]:
        """The two aggregators of a secure release (coordinator first), else none."""
        section = self.body.get("secure")
        return list(section["aggregators"]) if isinstance(section, Mapping) else []

    def nodes_of(self, scope: str) -> list[str]:
        """The answering nodes a scope's figures combine."""
        if scope == PROVINCE:
            return self.answered
        if scope in self.areas:
            return [n for n in self.areas[scope] if n in self.node_bodies]
        return [scope]

    @property
    def group_by(self) -> list[str]:
        """The query's group columns."""
        return list(self.body["query"]["group_by"])

    def threshold(self, scope: str) -> int:
        """The publication threshold that applies to ``scope``'s cells."""
        if scope == PROVINCE or scope in self.areas:
            return int(self.body["threshold"])
        return int(self.node_bodies[scope].get("threshold", self.body["threshold"]))

    def scopes(self) -> list[str]:
        """Province first, then each area with an answering county, then every county
        (a secure release: the province only, when it states figures)."""
        if not self.answered or self.failure is not None:
            return []
        if self.secure:
            return [PROVINCE]
        return [PROVINCE, *(a for a in self.areas if self.nodes_of(a)), *self.answered]

    def cells(self, scope: str) -> list[dict[str, Any]]:
        """The cells of ``scope``: as released, or combined over an area's counties."""
        if scope == PROVINCE:
            return list(self.body["province"])
        if scope in self.areas:
            # the coordinator's own combination, over the area's counties
            nodes = [NodeCells(n, dict(self.node_bodies[n])) for n in self.nodes_of(scope)]
            kind = str(self.body["query"]["measure"]["kind"])
            return combine(kind, nodes, threshold=self.threshold(scope), public=self.public)
        return list(self.node_bodies[scope]["cells"])

    def rate_parts(self, scope: str) -> dict[str, tuple[Part, Part]]:
        """Each group's noisy numerator and denominator (a RATE or AVG query), by repr(group)."""
        nodes = self.nodes_of(scope)
        merged: dict[str, tuple[Part, Part]] = {}
        for node in nodes:
            for cell in self.node_bodies[node]["cells"]:
                num = Part(int(cell["numerator"]["value"]), (float(cell["numerator"]["scale"]),))
                den = Part(
                    int(cell["denominator"]["value"]), (float(cell["denominator"]["scale"]),)
                )
                key = repr(cell["group"])
                if key in merged:
                    num, den = merged[key][0] + num, merged[key][1] + den
                merged[key] = (num, den)
        return merged

    def parts(self, scope: str) -> list[tuple[list[Any], Part]]:
        """Each group's noisy value and the noise scales in it (a COUNT or SUM query)."""
        if self.secure:
            return self._secure_parts(scope)
        nodes = self.nodes_of(scope)
        merged: dict[str, tuple[list[Any], Part]] = {}
        for node in nodes:
            answer = self.node_bodies[node]
            scales = () if self.public else (float(answer["scale"]),)
            for cell in answer["cells"]:
                key = repr(cell["group"])
                part = Part(int(cell["value"]), scales)
                if key in merged:
                    merged[key] = (merged[key][0], merged[key][1] + part)
                else:
                    merged[key] = (list(cell["group"]), part)
        return list(merged.values())

    def _secure_parts(self, scope: str) -> list[tuple[list[Any], Part]]:
        """A secure release's province cells: each the exact total plus one draw from each
        aggregator, at the scale its ε gives (checked against each signed partial)."""
        if scope != PROVINCE:
            raise ValueError("a secure release has province figures only")
        answers = self.body["answers"]
        if not answers:
            return []
        scale = mechanisms.scale_for(
            epsilon=float(answers[0]["epsilon"]), sensitivity=SECURE_SENSITIVITY
        )
        return [
            (list(c["group"]), Part(int(c["value"]), (scale, scale))) for c in self.cells(scope)
        ]
