"""The demo federation's members and their synthetic data.

"Province coordinates, city is the centre, county the base, schools the points":
the demo has county nodes in two cities (石家庄 and 唐山), a senior high school of
长安区 that runs its own node (its county's figures combine the two), a university
that runs its own node and reports to the province only — on a counselling centre's
machine with no network path, so its queries are carried to it by file — a province analyst and
石家庄's city analyst (scope ``city:1301``), an auditor, the coordinator and the
second aggregator. Every member is issued by one authority; every home holds the
final manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fedscreen.aggregator.home import init_aggregator
from fedscreen.coordinator.core import init_coordinator
from fedscreen.errors import ConfigError
from fedscreen.node.home import init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import County as Plan
from fedscreen.synth import generate, generate_university, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

__all__ = [
    "AGGREGATOR",
    "ANALYST",
    "CITY_ANALYST",
    "COORDINATOR",
    "COUNTIES",
    "DEFAULT_COUNTIES",
    "PREVIOUS_YEAR",
    "SCHOOL_COUNTY",
    "UNIVERSITY",
    "YEAR",
    "County",
    "Members",
    "build",
]

#: (county code, name, students, profile): real Hebei counties of different sizes and kinds
COUNTIES: Final = (
    ("130102", "长安区", 6_000, "urban"),
    ("130104", "桥西区", 4_000, "mixed"),
    ("130121", "井陉县", 3_000, "rural"),
    ("130203", "路北区", 5_000, "urban"),
    # more real counties, across Hebei's cities, for larger demo federations (--counties)
    ("130425", "大名县", 4_000, "rural"),
    ("130602", "竞秀区", 5_000, "urban"),
    ("130722", "张北县", 2_500, "rural"),
    ("130528", "宁晋县", 3_500, "mixed"),
    ("131102", "桃城区", 4_500, "mixed"),
    ("130802", "双桥区", 3_000, "urban"),
    ("130681", "涿州市", 4_000, "mixed"),
    ("131182", "深州市", 3_000, "rural"),
)
#: counties in the default demo federation (the first of COUNTIES: three of 石家庄, one
#: of 唐山, so the city analyst has a city and another city to be kept out of)
DEFAULT_COUNTIES: Final = 4
YEAR: Final = "2024-2025"
#: the year before, for the report's year-over-year change
PREVIOUS_YEAR: Final = "2023-2024"
ANALYST: Final = "hebei-monitoring-centre"
#: 石家庄's city analyst: (member id, name, scope)
CITY_ANALYST: Final = ("shijiazhuang-centre", "石家庄市学生心理健康服务中心", "city:1301")
COORDINATOR: Final = "coordinator"
#: the second aggregator of secure queries: another department than the coordinator's
AGGREGATOR: Final = "hebei-stats-bureau"
#: the county whose first senior high school runs its own node
SCHOOL_COUNTY: Final = "130102"
#: the university that runs its own node: (code, name, campus county, freshmen)
UNIVERSITY: Final = ("10094", "河北师范大学", "130108", 1_500)

County = tuple[str, str, int, str]


@dataclass(frozen=True)
class Members:
    """The homes of a built demo federation."""

    auth: Path
    coordinator: Path
    aggregator: Path
    analyst: Path
    city_analyst: Path
    auditor: Path
    #: node id -> home, counties first, then the school node, then the university node
    nodes: dict[str, Path]
    #: the school node's id (its school id)
    school: str


def build(
    work: Path,
    counties: Sequence[County],
    *,
    seed: int,
    scale: float,
    say: Callable[[str], None],
) -> Members:
    """Create the authority, every member and the nodes' data (two school years each)."""
    auth = work / "authority"
    authority.init_authority(auth, federation="hebei-demo")
    init_coordinator(work / "coordinator", member_id=COORDINATOR, name="河北省平台")
    issue_here(auth, work / "coordinator")
    init_aggregator(work / "aggregator", member_id=AGGREGATOR, name="河北省统计局")
    issue_here(auth, work / "aggregator")
    create_identity(work / "analyst", member_id=ANALYST, role="analyst", name="省心理健康监测中心")
    issue_here(auth, work / "analyst")
    city_id, city_name, city_scope = CITY_ANALYST
    create_identity(
        work / "city-analyst", member_id=city_id, role="analyst", name=city_name, scope=city_scope
    )
    issue_here(auth, work / "city-analyst")
    create_identity(
        work / "auditor", member_id="data-security-office", role="auditor", name="数据安全办公室"
    )
    issue_here(auth, work / "auditor")
    nodes: dict[str, Path] = {}
    school = ""
    for code, name, students, profile in counties:
        n = max(200, int(students * scale))
        plans = {y: generate(code, n, y, seed + i, profile=profile) for i, y in _years()}
        if code == SCHOOL_COUNTY:
            school, school_name = _senior_high(plans[YEAR])
            say(f"   node {school} {name}{school_name}: a school under {code} with its own node")
            home = _node(auth, work, school, f"{name}{school_name}", "school", code)
            _load(home, work, school, {y: p.only(school) for y, p in plans.items()})
            nodes[school] = home
            plans = {y: p.without([school]) for y, p in plans.items()}
        say(f"   node {code} {name}: {n:,} synthetic students ({profile})")
        home = _node(auth, work, code, name, "county", code)
        _load(home, work, code, plans)
        nodes[code] = home
    uni, uni_name, campus, freshmen = UNIVERSITY
    n = max(200, int(freshmen * scale))
    say(f"   node {uni} {uni_name}: a university's own node, {n:,} freshmen (to the province)")
    home = _node(auth, work, uni, uni_name, "university", campus)
    _load(
        home,
        work,
        uni,
        {y: generate_university(uni, campus, n, y, seed + i) for i, y in _years()},
    )
    nodes[uni] = home
    # its counselling centre's machine may not connect out: its queries go by file
    authority.set_offline(auth, uni, offline=True)
    say(f"   node {uni} is offline (no network path): its queries are carried to it by file")
    text = authority.manifest_text(auth)
    members = Members(
        auth=auth,
        coordinator=work / "coordinator",
        aggregator=work / "aggregator",
        analyst=work / "analyst",
        city_analyst=work / "city-analyst",
        auditor=work / "auditor",
        nodes=nodes,
        school=school,
    )
    homes = (members.coordinator, members.aggregator, members.analyst, members.city_analyst)
    for home in (*homes, members.auditor, *nodes.values()):
        update_manifest(home, text)
    return members


def _years() -> list[tuple[int, str]]:
    return list(enumerate((PREVIOUS_YEAR, YEAR)))


def _senior_high(plan: Plan) -> tuple[str, str]:
    """The first senior high school of a county's plan: (school id, name)."""
    for school in plan.schools:
        if school.school_type == "senior":
            return school.school_id, school.name
    raise ConfigError(f"county {plan.code} has no senior high school at this size")


def _node(auth: Path, work: Path, node_id: str, name: str, kind: str, county: str) -> Path:
    config = init_home(work / node_id, node_id=node_id, name=name, kind=kind, county_code=county)
    issue_here(auth, config.home)
    return config.home


def _load(home: Path, work: Path, node_id: str, plans: dict[str, Plan]) -> None:
    """Write each year's exports (one file per school) and load them into the node."""
    config = load_config(home)
    for year, plan in plans.items():
        exports = work / f"exports-{node_id}-{year}"
        write_export(plan, exports, per_school=True)
        _, rejected = ingest_paths(config, [exports])
        if rejected:
            raise ConfigError("\n".join(str(e) for e in rejected))
