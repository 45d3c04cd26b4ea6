"""Check a written report against its signed releases (and, optionally, the logs).

Anyone holding the federation's manifest can recompute a report: every file in
``releases/`` must hold a query signed by an analyst, a release signed by the
coordinator and every node answer it names (each verified, and the provincial cells
re-combined), each query must be the plan's query of that name, and every figure of
``report.json`` must be exactly what ``figures.statistic_rows`` computes from those
releases and the plan kept beside it. ``fedscreen report verify --bundle`` also
requires each release to be in the coordinator's verified transparency log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedscreen.analyst import verify_release
from fedscreen.envelope import Envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.manifest import Manifest
from fedscreen.policy import Policy
from fedscreen.query.signed import verify_query
from fedscreen.query.spec import canonical_json
from fedscreen.report.figures import Released, statistic_rows
from fedscreen.report.plan import load_plan
from fedscreen.report.run import PLAN_FILE, RELEASES_DIR, REPORT_FILE

#: offline, a query's freshness no longer matters: only its signature does
_ANY_TIME = 2**62


@dataclass(frozen=True)
class VerifiedReport:
    """What a report's check covered."""

    statistics: int
    figures: int
    releases: int
    #: SHA-256 (hex) of every release envelope, to find in the coordinator's log
    release_digests: frozenset[str]


def verify_report(directory: Path, *, manifest: Manifest, policy: Policy) -> VerifiedReport:
    """Recompute every figure of the report in ``directory``; VerificationError if one differs."""
    try:
        model = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
        source = (directory / PLAN_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory} does not hold a readable report: {exc}") from exc
    if hashlib.sha256(source).hexdigest() != model["plan"]["sha256"]:
        raise VerificationError(f"{PLAN_FILE} is not the plan the report names (SHA-256 differs)")
    plan = load_plan(directory / PLAN_FILE, policy)
    if plan.year != model["plan"]["year"]:
        plan = load_plan(directory / PLAN_FILE, policy, year=model["plan"]["year"])
    released: dict[str, Released] = {}
    digests = set()
    for name, query in plan.queries.items():
        path = directory / RELEASES_DIR / f"{name}.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            query_bytes = doc["query_envelope"].encode("utf-8")
            release_bytes = doc["release_envelope"].encode("utf-8")
            answers = {n: a.encode("utf-8") for n, a in doc["answers"].items()}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise VerificationError(f"{path}: not a readable release file: {exc}") from None
        signed = verify_query(
            Envelope.from_json(query_bytes), manifest=manifest, now_ms=0, window_ms=_ANY_TIME
        )
        if canonical_json(signed.spec.to_json()) != canonical_json(query.spec.to_json()):
            raise VerificationError(f"{path}: the signed query is not the plan's query {name}")
        verified = verify_release(release_bytes, manifest=manifest, query=signed, answers=answers)
        if model["releases"].get(name) != signed.query_id:
            raise VerificationError(f"{path}: the report names another release for {name}")
        released[name] = Released(verified.body, verified.node_bodies)
        digests.add(hashlib.sha256(release_bytes).hexdigest())
    reported = {s["id"]: s for section in model["sections"] for s in section["statistics"]}
    figures = 0
    for stat in plan.statistics:
        if stat.id not in reported:
            raise VerificationError(f"the report lacks the plan's statistic {stat.id}")
        recomputed = _json(statistic_rows(stat, plan, released))
        if recomputed != reported[stat.id]["rows"]:
            raise VerificationError(
                f"statistic {stat.id}: the report's figures are not what its releases give"
            )
        figures += len(recomputed)
    return VerifiedReport(len(plan.statistics), figures, len(released), frozenset(digests))


def _json(rows: Iterable[dict[str, Any]]) -> Any:
    """Rows as report.json holds them (lists for tuples; floats round-trip exactly)."""
    return json.loads(json.dumps(list(rows), ensure_ascii=False))


def releases_logged(report: VerifiedReport, logged: Iterable[str]) -> None:
    """Raise VerificationError unless every release of the report is in the log."""
    missing = report.release_digests - set(logged)
    if missing:
        raise VerificationError(
            f"{len(missing)} of the report's {report.releases} releases are not in the "
            "coordinator's log"
        )
