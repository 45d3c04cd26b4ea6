"""Can the nodes pay for a plan? Checked against real, signed budget statements.

Node 130102 runs under its county document (ε 6 a year, the monitoring centre 60% of
it = 3.6, a per-query cap of 0.5, the operator's approval above 0.3); node 130104
under the provincial catalogue (ε 10, the centre 80% = 8). Charges are made by the
real engine; statements are signed by the node's key and verified against the manifest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exportrows import varied_rows, write_csv
from reportplans import count_plan

from fedscreen.errors import PlanRefused
from fedscreen.node import store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.statement import sign_statement, statement_body
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol.budget import Budgets, verify_budgets
from fedscreen.report.affordable import check_plan, refuse_if_unaffordable
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here

CENTRE = "hebei-monitoring-centre"
YEAR = "2024-2025"


def _nodes(tmp_path: Path, codes: tuple[str, ...] = ("130102", "130104")) -> dict[str, NodeConfig]:
    authority.init_authority(tmp_path / "auth", federation="test")
    nodes = {}
    for code in codes:
        config = init_home(tmp_path / code, node_id=code, name=code)
        issue_here(tmp_path / "auth", config.home)
        nodes[code] = config
    # 长安区 has data to charge against; a statement needs none
    ingest_paths(nodes["130102"], [write_csv(tmp_path / "130102.csv", varied_rows(200))])
    return nodes


def _spend(config: NodeConfig, epsilons: list[float]) -> None:
    conn = store.connect(config.database)
    try:
        for n, epsilon in enumerate(epsilons):
            sql = (
                f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
                f"AND phq9_total >= {n}"
            )
            answer_query(
                config, config.policy(), QueryRequest(CENTRE, None, epsilon, text=sql), conn=conn
            )
    finally:
        conn.close()


def _budgets(nodes: dict[str, NodeConfig], connected: tuple[str, ...], auth: Path) -> Budgets:
    signed = []
    for code, config in nodes.items():
        conn = store.connect(config.database)
        try:
            body = statement_body(conn, config.policy(), code)
        finally:
            conn.close()
        signed.append((code, sign_statement(body, key=config.signing_key())))
    return verify_budgets(authority.current_manifest(auth), signed, connected=connected)


def _plan(tmp_path: Path, epsilons: list[float]) -> ReportPlan:
    path = count_plan(tmp_path / "plan.toml", epsilons, year=YEAR)
    return load_plan(path, load_policy(default_policy_dir() / PROVINCE_FILE))


def _annual() -> ReportPlan:
    return load_plan(
        default_policy_dir() / "reports" / "annual.toml",
        load_policy(default_policy_dir() / PROVINCE_FILE),
    )


def test_the_annual_plan_fits_fresh_nodes(tmp_path: Path) -> None:
    # three: the fewest nodes a secure query sums (the catalogue's min_nodes)
    nodes = _nodes(tmp_path, ("130102", "130104", "130105"))
    plan = _annual()
    checks = check_plan(
        plan, _budgets(nodes, tuple(nodes), tmp_path / "auth"), analyst=CENTRE, nodes=list(nodes)
    )
    refuse_if_unaffordable(checks)
    by_node = {c.node_id: c for c in checks}
    (year,) = [y for y in by_node["130102"].years if y.year == YEAR]
    # the measured tables and the queries they do not serve: ε ≤ 1 in the year
    assert year.cost == pytest.approx(plan.cost_by_year()[YEAR])
    assert 0.99 < year.cost <= 1.0
    assert (year.left, year.budget) == (3.6, pytest.approx(3.6))
    (year,) = [y for y in by_node["130104"].years if y.year == YEAR]
    assert year.left == 8.0
    assert not any(c.notes for c in checks)


def test_secure_queries_asked_of_too_few_nodes_are_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    nodes = _nodes(tmp_path)
    plan = _annual()
    budgets = _budgets(nodes, tuple(nodes), tmp_path / "auth")
    checks = check_plan(plan, budgets, analyst=CENTRE, nodes=list(nodes))
    secure = [q for q in plan.asked.values() if q.secure]
    assert secure
    for check in checks:
        assert check.problems == tuple(
            f"query {q.name} is secure: it sums at least 3 nodes and the plan asks 2: "
            "it would be refused"
            for q in secure
        )
    with pytest.raises(PlanRefused, match="s_item9 is secure"):
        refuse_if_unaffordable(checks)
    # also where no node has sent its statement yet
    unknown = check_plan(plan, Budgets({}, (), tuple(nodes)), analyst=CENTRE, nodes=list(nodes))
    with pytest.raises(PlanRefused, match="s_item9 is secure"):
        refuse_if_unaffordable(unknown)
    # the plain queries alone (a resumed run's) are not
    plain = [q.name for q in plan.asked.values() if not q.secure]
    refuse_if_unaffordable(
        check_plan(plan, budgets, analyst=CENTRE, nodes=list(nodes), queries=plain)
    )


def test_spending_elsewhere_makes_the_plan_unaffordable_at_that_node(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    _spend(nodes["130102"], [0.3] * 3)  # 0.9 of the centre's 3.6
    plan = _plan(tmp_path, [0.3] * 9 + [0.2])  # 2.9 > 2.7 left
    checks = check_plan(
        plan, _budgets(nodes, tuple(nodes), tmp_path / "auth"), analyst=CENTRE, nodes=list(nodes)
    )
    by_node = {c.node_id: c for c in checks}
    assert by_node["130104"].problems == ()
    (problem,) = by_node["130102"].problems
    assert problem == f"{YEAR}: the plan costs ε=2.9, 130102 has ε=2.7 left for {CENTRE}"
    with pytest.raises(PlanRefused, match="refused before any query runs"):
        refuse_if_unaffordable(checks)
    # exactly what is left is still affordable
    budgets = _budgets(nodes, tuple(nodes), tmp_path / "auth")
    exact = check_plan(_plan(tmp_path, [0.3] * 9), budgets, analyst=CENTRE, nodes=list(nodes))
    refuse_if_unaffordable(exact)


def test_caps_approvals_and_unknown_nodes_are_named(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    plan = _plan(tmp_path, [0.4, 0.6])
    budgets = _budgets({"130102": nodes["130102"]}, (), tmp_path / "auth")
    checks = check_plan(plan, budgets, analyst=CENTRE, nodes=["130102", "130104"])
    by_node = {c.node_id: c for c in checks}
    # 0.6 is above 130102's cap of 0.5: it would refuse, so the plan is refused
    assert by_node["130102"].problems == (
        "query q1 costs ε=0.6, above 130102's per-query cap 0.5: it would be refused",
    )
    assert (
        "query q0 (ε=0.4) needs 130102's operator's approval (above ε=0.3): "
        "130102 refuses it until approved"
    ) in (by_node["130102"].notes)
    assert "not connected now: it will be listed as missing" in by_node["130102"].notes
    # a node that never sent a statement is unknown, not refused
    assert by_node["130104"].problems == ()
    assert by_node["130104"].notes == ("no budget statement: unknown",)
    assert by_node["130104"].years[0].left is None
