"""A report's directory: the file names, a verified ``releases/`` file, the CSV and writing it all.

::

    report.html   report.json   report.csv   plan.toml   budgets.json   releases/<query>.json
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.files import replace_file, write_new_file
from fedscreen.analyst.query import verify_release
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.query import ANY_AGE_MS, verify_query
from fedscreen.report.compare import PROVINCE_COPY, ProvinceReport
from fedscreen.report.format import PROVINCE, SECURE_FAILED, SECURE_ONLY
from fedscreen.report.html import render_html
from fedscreen.report.plan import PlannedQuery, ReportPlan
from fedscreen.report.released import Released
from fedscreen.trust.manifest import Manifest

__all__ = [
    "BUDGETS_FILE",
    "PLAN_FILE",
    "RELEASES_DIR",
    "REPORT_FILE",
    "QueryRun",
    "csv_text",
    "normalized",
    "read_run",
    "verify_run",
    "write_report",
]

REPORT_FILE: Final = "report.json"
PLAN_FILE: Final = "plan.toml"
RELEASES_DIR: Final = "releases"
#: the report files ``report run --include-late`` replaced, kept by their SHA-256
SUPERSEDED_DIR: Final = "superseded"
BUDGETS_FILE: Final = "budgets.json"


@dataclass(frozen=True)
class QueryRun:
    """One query of the plan as run: the signed bytes and the verified release."""

    name: str
    query_envelope: bytes
    release_envelope: bytes
    answers: Mapping[str, bytes]
    released: Released
    #: the analyst who signed the query
    analyst: str

    def to_json(self) -> dict[str, Any]:
        """The signed bytes, as text (each envelope is UTF-8 JSON), for ``releases/``."""
        return {
            "name": self.name,
            "query_envelope": self.query_envelope.decode("utf-8"),
            "release_envelope": self.release_envelope.decode("utf-8"),
            "answers": {n: a.decode("utf-8") for n, a in sorted(self.answers.items())},
        }


def read_run(path: Path, query: PlannedQuery, *, manifest: Manifest) -> QueryRun:
    """Load a file of ``releases/`` and verify it all: VerificationError if anything fails.

    The analyst's signature on the query (its age does not matter any more), that it
    is the plan's query of that name, and the release with every answer it names.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        query_bytes = doc["query_envelope"].encode("utf-8")
        release_bytes = doc["release_envelope"].encode("utf-8")
        answers = {n: a.encode("utf-8") for n, a in doc["answers"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as exc:
        raise VerificationError(f"{path}: not a readable release file: {exc!r}") from None
    return verify_run(
        query, query_bytes, release_bytes, answers, manifest=manifest, where=str(path)
    )


def verify_run(
    query: PlannedQuery,
    query_envelope: bytes,
    release_envelope: bytes,
    answers: Mapping[str, bytes],
    *,
    manifest: Manifest,
    where: str,
) -> QueryRun:
    """The plan's ``query`` as run, from its signed bytes, every one verified (as
    ``read_run``); VerificationError, naming ``where``, if anything fails."""
    signed = verify_query(
        Envelope.from_json(query_envelope), manifest=manifest, now_ms=0, window_ms=ANY_AGE_MS
    )
    if canonical_json(signed.spec.to_json()) != canonical_json(query.spec.to_json()):
        raise VerificationError(f"{where}: the signed query is not the plan's query {query.name}")
    if (signed.epsilon, signed.accuracy) != (query.epsilon, query.accuracy):
        raise VerificationError(f"{where}: the signed query asks another ε than the plan")
    verified = verify_release(release_envelope, manifest=manifest, query=signed, answers=answers)
    released = Released(verified.body, verified.node_bodies, verified.charged)
    return QueryRun(
        query.name, query_envelope, release_envelope, dict(answers), released, signed.analyst
    )


CSV_HEADER: Final = (
    "statistic", "item", "unit", "scope", "group", "value", "lower", "upper", "display",
    "suppressed", "epsilon",
)  # fmt: skip


def csv_text(model: Mapping[str, Any]) -> str:
    """``report.csv``: one row per figure of the model."""
    stream = io.StringIO(newline="")
    writer = csv.writer(stream)
    writer.writerow(CSV_HEADER)
    for section in model["sections"]:
        for stat in section["statistics"]:
            for row in _csv_rows(stat):
                writer.writerow(
                    [stat["id"], stat["item"], stat["unit"], row["scope"],
                     " / ".join(str(g) for g in row["group"]), row["value"], row["lower"],
                     row["upper"], row["display"], int(row["suppressed"]), stat["epsilon"]]
                )  # fmt: skip
    return stream.getvalue()


def _csv_rows(stat: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A statistic's rows, and for a secure one a row saying what it does not show."""
    secure = stat.get("secure")
    if not isinstance(secure, Mapping):
        return list(stat["rows"])
    failure = secure.get("failure")
    scope, note = (
        ("counties", SECURE_ONLY) if failure is None else (PROVINCE, f"{SECURE_FAILED}: {failure}")
    )
    blank: dict[str, Any] = {
        "group": [],
        "value": None,
        "lower": None,
        "upper": None,
        "suppressed": False,
    }
    return [*stat["rows"], {**blank, "scope": scope, "display": note}]


def normalized(model: Mapping[str, Any]) -> Any:
    """The model as ``report.json`` holds it (lists for tuples; floats round-trip exactly)."""
    return json.loads(json.dumps(model, ensure_ascii=False))


def write_report(
    out: Path,
    plan: ReportPlan,
    model: Mapping[str, Any],
    *,
    province: ProvinceReport | None = None,
    replace: bool = False,
) -> dict[str, Path]:
    """Write plan.toml, the province report compared with (if any), report.csv,
    report.html and, last, report.json into ``out``.

    ``replace``: a report regenerated from later release versions (``report.late``)
    replaces the one there, each file atomically, the JSON last.
    """
    if (out / REPORT_FILE).exists() and not replace:
        raise ConfigError(f"{out} already holds a report; give a new --out directory")
    plan_copy = out / PLAN_FILE
    if plan_copy.exists() and plan_copy.read_bytes() != plan.source:
        raise ConfigError(f"{out} holds the releases of another plan; give a new --out directory")
    if not plan_copy.exists():
        write_new_file(plan_copy, plan.source, mode=0o644, what="plan")
    if province is not None:
        copy = out / PROVINCE_COPY
        # a run that stopped after writing it may have the same bytes there already
        if not (copy.exists() and copy.read_bytes() == province.data):
            write_new_file(copy, province.data, mode=0o644, what="province report")
    document = normalized(model)
    paths = {"html": out / "report.html", "json": out / REPORT_FILE, "csv": out / "report.csv"}
    texts = {
        "csv": csv_text(document),
        "html": render_html(document),
        # the JSON last: its presence marks a complete report
        "json": json.dumps(document, ensure_ascii=False, indent=1) + "\n",
    }
    for kind, text in texts.items():
        if replace:
            replace_file(paths[kind], text.encode("utf-8"))
        else:
            paths[kind].write_text(text, encoding="utf-8", newline="")
    return paths
