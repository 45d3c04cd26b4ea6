"""report.derived: the annual plan's served queries from measured tables, with real noise.

Four synthetic counties (``fedscreen.cli.reference``, different seeds) answer every
table of the annual plan's ``[measure]`` with OpenDP noise exactly as a node adds it
(``fedscreen.node.cells.release``); ``resolve`` derives every served query. Checked:
counties add up to cities and the province, PHQ-9 bands to valid screenings and
warning levels to warnings in every scope (from different tables of one population),
a node missing from one table, a county policy without universities, and the
coverage of the stated intervals by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import pytest

from fedscreen.cli.reference import reference_county, true_rows
from fedscreen.node.cells import release
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.query.compile import Plan, compile_query
from fedscreen.report.derived import Derived, disagreements, resolve
from fedscreen.report.figures import Released
from fedscreen.report.format import PROVINCE
from fedscreen.report.measured import Measurements, Table, build_table, served_cells
from fedscreen.report.parts import Part
from fedscreen.report.plan import ReportPlan, load_plan

NODES = ("130102", "130104", "130202", "130203")
AREAS = {"city:1301": ["130102", "130104"], "city:1302": ["130202", "130203"]}
MODERATE_OR_WORSE = ("moderate", "moderately_severe", "severe")

#: node -> table name -> (compiled table query, exact rows)
Rows = Mapping[str, Mapping[str, tuple[Plan, list[Any]]]]
#: node -> table name -> the node's answer body
Answers = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(default_policy_dir() / PROVINCE_FILE)


@pytest.fixture(scope="module")
def plan(policy: Policy) -> ReportPlan:
    report = load_plan(default_policy_dir() / "reports" / "annual.toml", policy)
    assert report.measure is not None
    return report


@pytest.fixture(scope="module")
def rows(plan: ReportPlan, policy: Policy) -> Rows:
    assert plan.measure is not None
    years = tuple(sorted({y for q in plan.queries.values() for y in q.years}))
    out: dict[str, dict[str, tuple[Plan, list[Any]]]] = {}
    with ExitStack() as stack:
        for seed, node in enumerate(NODES, start=1):
            database = stack.enter_context(reference_county(1500, years, seed=seed))
            out[node] = {t.name: true_rows(database, t.spec(), policy) for t in plan.measure.tables}
    return out


def noisy_answers(plan: ReportPlan, rows: Rows, threshold: int) -> Answers:
    """Every node's answer to every table, with fresh OpenDP noise."""
    assert plan.measure is not None
    out: Answers = {}
    for node, tables in rows.items():
        out[node] = {}
        for table in plan.measure.tables:
            compiled, exact = tables[table.name]
            body = {"query": compiled.spec.to_json(), "threshold": threshold}
            out[node][table.name] = {**body, **release(compiled, exact, table.epsilon, threshold)}
    return out


def releases(plan: ReportPlan, answers: Answers, threshold: int) -> dict[str, Released]:
    """The coordinator's releases of each table: its nodes' answers and their combination."""
    assert plan.measure is not None
    out = {}
    for table in plan.measure.tables:
        bodies = {n: a[table.name] for n, a in answers.items() if table.name in a}
        nodes = [NodeCells(n, dict(b)) for n, b in sorted(bodies.items())]
        body = {
            "query": table.spec().to_json(),
            "threshold": threshold,
            "province": combine("count", nodes, threshold=threshold, public=False),
        }
        out[table.name] = Released(body, bodies, {n: table.epsilon for n in bodies})
    return out


def derive(plan: ReportPlan, answers: Answers, threshold: int) -> dict[str, Derived]:
    """Every served query, derived, with the cities as areas."""
    resolved = resolve(plan, releases(plan, answers, threshold))
    assert plan.measure is not None
    out = {}
    for name in plan.measure.served:
        derived = resolved[name]
        assert isinstance(derived, Derived)
        out[name] = replace(derived, areas=AREAS)
    return out


@pytest.fixture(scope="module")
def answers(plan: ReportPlan, rows: Rows, policy: Policy) -> Answers:
    return noisy_answers(plan, rows, policy.limits.publication_threshold)


def same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-7)


def by_group(derived: Derived, scope: str) -> dict[tuple[Any, ...], Part]:
    return {tuple(g): p for g, p in derived.parts(scope)}


def rates(derived: Derived, scope: str) -> dict[tuple[Any, ...], tuple[Part, Part]]:
    assert derived.served is not None
    parts = derived.rate_parts(scope)
    return {tuple(g): parts[repr(list(g))] for g in derived.served.groups}


def summed(
    cells: Mapping[tuple[Any, ...], Part], key: Callable[[tuple[Any, ...]], Any]
) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for group, part in cells.items():
        out[key(group)] = out.get(key(group), 0.0) + part.value
    return out


# --- checks shared by the scenarios --------------------------------------------------------


def check_scopes_add_up(derived: Mapping[str, Derived]) -> None:
    """Province == Σ counties and city == Σ its counties, cell by cell, values and noise."""
    for name, query in derived.items():
        wholes = {PROVINCE: query.answered}
        wholes.update({a: [n for n in c if n in query.answered] for a, c in AREAS.items()})
        for scope, members in wholes.items():
            whole, counties = flat(query, scope), [flat(query, n) for n in members]
            assert whole.keys() == counties[0].keys()
            for key, part in whole.items():
                assert same(part.value, sum(c[key].value for c in counties)), (name, scope, key)
                # the noise of a sum is its counties' noises: nodes share none
                variance = sum(c[key].variance for c in counties)
                assert math.isclose(part.variance, variance, rel_tol=1e-9, abs_tol=1e-9)


def flat(query: Derived, scope: str) -> dict[tuple[Any, ...], Part]:
    """(group..., "count" / "num" / "den") -> the scope's part."""
    assert query.served is not None
    if query.served.numerator is None:
        return {(*g, "count"): p for g, p in by_group(query, scope).items()}
    out = {}
    for g, (n, d) in rates(query, scope).items():
        out[(*g, "num")], out[(*g, "den")] = n, d
    return out


def check_phq9_adds_up(derived: Mapping[str, Derived], scopes: list[str]) -> None:
    """Bands sum to the valid screenings; every table of the population gives one total."""
    bands, positive = derived["phq9_bands"], derived["phq9_positive"]
    for scope in scopes:
        band_cells = by_group(bands, scope)
        valid_by_grade = summed(band_cells, lambda g: g[0])
        rate = rates(positive, scope)
        dens = summed({g: d for g, (_, d) in rate.items()}, lambda g: g[0])
        nums = summed({g: n for g, (n, _) in rate.items()}, lambda g: g[0])
        positive_bands = summed(
            {g: p for g, p in band_cells.items() if g[1] in MODERATE_OR_WORSE}, lambda g: g[0]
        )
        assert valid_by_grade.keys() == dens.keys()
        for grade, valid in valid_by_grade.items():
            assert same(valid, dens[grade]), (scope, grade)
            assert same(positive_bands[grade], nums[grade]), (scope, grade)
        total_valid = sum(valid_by_grade.values())
        total_positive = sum(positive_bands.values())
        # other tables of the same population (valid PHQ-9 this year): the same totals
        for other in ("phq9_by_location", "phq9_by_left_behind", "item9", "item9_2"):
            if derived[other].nodes_of(scope) != bands.nodes_of(scope):
                continue  # a node missing from one table: the sums are over other nodes
            other_rates = rates(derived[other], scope).values()
            assert same(sum(d.value for _, d in other_rates), total_valid), (scope, other)
            if other.startswith("phq9_by"):
                assert same(sum(n.value for n, _ in other_rates), total_positive), (scope, other)


def check_warnings_add_up(derived: Mapping[str, Derived], scopes: list[str]) -> None:
    """Warning levels == warnings summed over grade band and sex."""
    for scope in scopes:
        by_level = summed(by_group(derived["warnings"], scope), lambda g: g[2])
        levels = by_group(derived["warning_levels"], scope)
        assert {g[0] for g in levels} == set(by_level)
        for (level,), part in levels.items():
            assert same(part.value, by_level[level]), (scope, level)


# --- (a), (b): sums in every scope -------------------------------------------------------


def test_counties_add_up_to_cities_and_the_province(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    derived = derive(plan, answers, policy.limits.publication_threshold)
    assert set(derived["warnings"].scopes()) == {PROVINCE, *AREAS, *NODES}
    check_scopes_add_up(derived)
    # a county's figures are its own: not the province's, and noisy
    cells = by_group(derived["warnings"], NODES[0])
    assert all(not p.exact and p.variance > 0 for p in cells.values())


def test_bands_add_up_to_valid_screenings_and_levels_to_warnings(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    derived = derive(plan, answers, policy.limits.publication_threshold)
    scopes = derived["phq9_bands"].scopes()
    assert scopes == [PROVINCE, *AREAS, *NODES]
    check_phq9_adds_up(derived, scopes)
    check_warnings_add_up(derived, scopes)


def test_a_table_measured_alone_is_its_nodes_own_cells(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    # the screened table is its population's only table: nothing to reconcile, the
    # estimate is the node's noisy cell and its noise that cell's alone
    assert plan.measure is not None
    screened = plan.measure.served["screened"].name
    derived = derive(plan, answers, policy.limits.publication_threshold)
    for node in NODES:
        answer = answers[node][screened]
        alone = Part(0.0, (float(answer["scale"]),))
        parts = by_group(derived["screened"], node)
        for cell in answer["cells"]:
            part = parts[tuple(cell["group"])]
            assert same(part.value, cell["value"])
            assert part.variance == pytest.approx(alone.variance)
            # the shared-term interval is the one the node states for a single cell
            low, high = part.interval()
            assert high - low == pytest.approx(alone.interval()[1] * 2, rel=1e-9)


# --- (c) a node missing from one table ---------------------------------------------------


def test_a_node_missing_from_one_table_is_absent_only_from_what_it_serves(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    assert plan.measure is not None
    threshold = policy.limits.publication_threshold
    served = plan.measure.served
    missing, dropped = NODES[1], served["phq9_bands"]
    levels = served["warning_levels"]
    partial = {n: dict(a) for n, a in answers.items()}
    del partial[missing][dropped.name]
    del partial[NODES[2]][levels.name]
    derived = derive(plan, partial, threshold)
    full = derive(plan, answers, threshold)
    # absent exactly from the queries the dropped table serves
    for name, query in derived.items():
        assert (missing in query.scopes()) == (name not in dropped.members), name
        assert (NODES[2] in query.scopes()) == (name not in levels.members), name
    check_scopes_add_up(derived)
    present = [PROVINCE, *(n for n in NODES if n != missing)]
    check_phq9_adds_up(derived, present)
    check_warnings_add_up(derived, [n for n in NODES if n != NODES[2]])
    assert "phq9_bands" in dropped.members
    # the province's bands are the other nodes' valid screenings, whichever table counts them
    province = sum(p.value for p in by_group(derived["phq9_bands"], PROVINCE).values())
    others = [rates(derived["phq9_by_location"], n) for n in NODES if n != missing]
    assert same(province, sum(d.value for r in others for _, d in r.values()))
    # the missing node's other tables still agree with each other
    totals = {
        name: sum(d.value for _, d in rates(derived[name], missing).values())
        for name in ("phq9_by_location", "phq9_by_left_behind", "item9", "item9_2")
        if name not in dropped.members
    }
    assert len(totals) >= 2
    first = next(iter(totals.values()))
    assert all(same(t, first) for t in totals.values()), totals
    # and its populations that lost no table are untouched
    for name in ("warnings", "comorbid", "screened", "risk_factors"):
        assert full[name].cells(missing) == derived[name].cells(missing), name
    # a node left with one table of the warnings gets that table's own noisy cells
    if served["warnings"] is not levels:
        alone = by_group(derived["warnings"], NODES[2])
        for cell in answers[NODES[2]][served["warnings"].name]["cells"]:
            assert same(alone[tuple(cell["group"])].value, cell["value"])


# --- (d) a county policy narrowing a domain ----------------------------------------------


def test_a_county_without_universities_keeps_them_at_zero(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    assert plan.measure is not None
    narrowed = NODES[3]
    changed = {n: dict(a) for n, a in answers.items()}
    for table in plan.measure.tables:
        if "grade_band" not in table.attributes:
            continue
        position = table.attributes.index("grade_band")
        body = dict(changed[narrowed][table.name])
        body["cells"] = [c for c in body["cells"] if c["group"][position] != "university"]
        assert len(body["cells"]) < len(changed[narrowed][table.name]["cells"])
        changed[narrowed][table.name] = body
    derived = derive(plan, changed, policy.limits.publication_threshold)
    seen = 0
    for name, query in derived.items():
        if "grade_band" not in query.group_by:
            continue
        position = query.group_by.index("grade_band")
        assert query.served is not None
        if query.served.numerator is None:
            cells = by_group(query, narrowed)
            zero = [p for g, p in cells.items() if g[position] == "university"]
        else:
            both = rates(query, narrowed)
            zero = [x for g, (n, d) in both.items() if g[position] == "university" for x in (n, d)]
        assert zero, name
        for part in zero:
            assert part.value == 0.0, name
            assert part.exact, name
        seen += 1
    assert seen >= 8
    check_scopes_add_up(derived)
    scopes = derived["phq9_bands"].scopes()
    check_phq9_adds_up(derived, scopes)
    check_warnings_add_up(derived, scopes)
    # the other counties' university figures are still there
    other = by_group(derived["phq9_bands"], NODES[0])
    assert any(p.value != 0.0 for g, p in other.items() if g[0] == "university")


# --- (e) coverage by simulation ------------------------------------------------------------

#: a table's ε in the simulation: scale 1/ε = 10 per cell (20 for the levels' own table)
COVERAGE_EPSILON = 0.1
DRAWS = 300


def fixed_rows(table: Table, base: int) -> list[tuple[Any, ...]]:
    """True counts in every cell, large enough that no interval is ever clipped."""
    return [(*cell, base + 37 * (i % 11)) for i, cell in enumerate(table.cells)]


def marginal_rows(fine: Table, rows: list[tuple[Any, ...]], coarse: Table) -> list[tuple[Any, ...]]:
    """The true counts of ``coarse`` (a marginal of ``fine``): sums of ``fine``'s rows."""
    positions = [fine.attributes.index(a) for a in coarse.attributes]
    counts = {cell: 0 for cell in coarse.cells}
    for row in rows:
        counts[tuple(row[p] for p in positions)] += row[-1]
    return [(*cell, n) for cell, n in counts.items()]


def test_intervals_of_derived_figures_cover_the_truth(plan: ReportPlan, policy: Policy) -> None:
    specs = {name: q.spec for name, q in plan.queries.items()}

    def table(name: str, members: tuple[str, ...], epsilon: float) -> Table:
        return build_table(name, {n: specs[n] for n in members}, policy, epsilon=epsilon)

    # a rate and counts from one table; warning levels from two tables by least squares
    bands = table("m_bands", ("phq9_bands", "phq9_positive"), COVERAGE_EPSILON)
    warnings = table("m_warn", ("warnings",), COVERAGE_EPSILON)
    levels = table("m_levels", ("warning_levels",), COVERAGE_EPSILON / 2)
    measure = Measurements(1.0, (bands, warnings, levels))
    simulated = replace(plan, measure=measure)
    # each draw is a node of its own (independent OpenDP noise on the same true counts),
    # so one resolve serves every draw; pairs of nodes are areas (a sum of two counties)
    nodes = [f"draw{k:03d}" for k in range(2 * DRAWS)]
    pairs = {f"pair{k:03d}": nodes[2 * k : 2 * k + 2] for k in range(DRAWS)}
    exact: dict[str, dict[str, tuple[Plan, list[Any]]]] = {}
    for k, node in enumerate(nodes):
        exact[node] = {t.name: (compile_query(t.spec(), policy), fixed_rows(t, 300 + 200 * (k % 2)))
                       for t in (bands, warnings)}  # fmt: skip
        warned = marginal_rows(warnings, exact[node][warnings.name][1], levels)
        exact[node][levels.name] = (compile_query(levels.spec(), policy), warned)
    figures = [
        ("phq9_bands", ("junior", "moderate")),
        ("phq9_bands", ("university", "none")),
        ("warning_levels", ("red",)),
        ("warnings", ("senior", "F", "orange")),
        ("phq9_positive", ("junior", "F")),
        ("phq9_positive", ("vocational", "M")),
    ]
    # the truth of each figure for an even node, an odd node and a pair
    truth = {}
    for name, group in figures:
        served = served_cells(measure.served[name], specs[name], [group])
        for kind, members in (("even", nodes[:1]), ("odd", nodes[1:2]), ("pair", nodes[:2])):
            counts = [
                {i: row[-1] for i, row in enumerate(exact[n][measure.served[name].name][1])}
                for n in members
            ]
            den = sum(c[i] for c in counts for i in served.denominator[0])
            if served.numerator is None:
                truth[(name, group, kind)] = float(den)
            else:
                num = sum(c[i] for c in counts for i in served.numerator[0])
                truth[(name, group, kind)] = num / den
    resolved = resolve(simulated, releases(simulated, noisy_answers(simulated, exact, 0), 0))
    derived: dict[str, Derived] = {}
    for name, _ in figures:
        query = resolved[name]
        assert isinstance(query, Derived)
        derived[name] = replace(query, areas=pairs)
    scopes = [(n, "odd" if k % 2 else "even") for k, n in enumerate(nodes)]
    scopes += [(pair, "pair") for pair in pairs]
    hits = dict.fromkeys(truth, 0)
    for name in {n for n, _ in figures}:
        for scope, kind in scopes:
            stated = {tuple(c["group"]): c for c in derived[name].cells(scope)}
            for group in (g for n, g in figures if n == name):
                cell = stated[group]
                # never clipped at 0 (or at 1 for a rate): the coverage is the estimator's
                assert cell["lower"] > 0
                assert cell["upper"] < 1 or name != "phq9_positive"
                hits[(name, group, kind)] += (
                    cell["lower"] <= truth[(name, group, kind)] <= cell["upper"]
                )
    # the levels really are combined from both tables
    parts = by_group(derived["warning_levels"], nodes[0])[("red",)]
    tables = {key[1] for key in parts.terms if isinstance(key, tuple)}
    assert tables == {warnings.name, levels.name}
    coverage = {key: h / DRAWS for key, h in hits.items()}
    # each figure within about 4 binomial standard errors of 95% (300 draws), and all of
    # them together (5,400 partly correlated trials) within about 3
    assert all(0.90 <= c <= 0.993 for c in coverage.values()), coverage
    pooled = sum(hits.values()) / (DRAWS * len(hits))
    assert 0.93 <= pooled <= 0.97, coverage


# --- a rate whose noisy numerator is outside [0, denominator] ------------------------------


def hand_release(table: Table, node: str, values: Mapping[tuple[Any, ...], int]) -> Released:
    """``table``'s release with one node's noisy cells as given (scale 10)."""
    body: dict[str, Any] = {"query": table.spec().to_json(), "threshold": 10}
    answer = {**body, "mechanism": "discrete_laplace", "scale": 10.0,
              "cells": [{"group": list(c), "value": values[c]} for c in table.cells]}  # fmt: skip
    province = combine("count", [NodeCells(node, dict(answer))], threshold=10, public=False)
    return Released({**body, "province": province}, {node: answer}, {node: table.epsilon})


def test_a_rate_interval_always_contains_its_value(plan: ReportPlan) -> None:
    # a noisy numerator above the denominator (or below 0) by more than the half-width:
    # both ends are clipped to [0, 1], never inverted around the clipped value
    assert plan.measure is not None
    table = plan.measure.served["phq9_valid"]
    values = {cell: 500 if cell[1] == 1 else 5 for cell in table.cells}
    # no invalid questionnaires in junior (noise −40 has probability ~1% at scale 10)
    values[("junior", 0)] = -40
    # nothing valid in senior (the same noise on the numerator)
    values[("senior", 1)], values[("senior", 0)] = -40, 500
    measured = replace(plan, measure=Measurements(1.0, (table,)))
    derived = resolve(measured, {table.name: hand_release(table, NODES[0], values)})
    cells = {c["group"][0]: c for c in derived["phq9_valid"].cells(NODES[0])}
    assert not cells["junior"]["suppressed"]
    assert not cells["senior"]["suppressed"]
    for cell in cells.values():
        assert 0.0 <= cell["lower"] <= cell["value"] <= cell["upper"] <= 1.0, cell


# --- a county whose tables tell different stories -------------------------------------------


def test_a_made_up_table_does_not_pass_into_its_populations_honest_figures(
    plan: ReportPlan, answers: Answers, policy: Policy
) -> None:
    assert plan.measure is not None
    threshold = policy.limits.publication_threshold
    liar, bands = NODES[0], plan.measure.served["phq9_bands"]
    item9 = plan.measure.served["item9"]
    assert item9 is not bands  # the honest table of the same population
    made_up = {n: {t: dict(b) for t, b in a.items()} for n, a in answers.items()}
    body = made_up[liar][bands.name]
    # "none" inflated twentyfold: far beyond any noise, consistent in itself
    body["cells"] = [
        {**c, "value": c["value"] * 20} if c["group"][-1] == "none" else c for c in body["cells"]
    ]
    honest = derive(plan, answers, threshold)
    lying = derive(plan, made_up, threshold)
    # honest answers never trip the check; the made-up table does, for that node only
    assert disagreements(honest) == []
    named = disagreements(lying)
    assert [d["node"] for d in named] == [liar]
    assert named[0]["chi2"] > named[0]["dof"]
    assert bands.name in named[0]["tables"]
    # item 9 comes from the node's honest table alone: exactly that table's own estimate
    # (what the node's item-9 figures would be had it measured nothing else)
    alone = {n: {t: b for t, b in a.items() if t == item9.name} for n, a in answers.items()}
    only_item9 = replace(plan, measure=Measurements(1.0, (item9,)))
    expected = resolve(only_item9, releases(only_item9, alone, threshold))["item9"]
    got, want = rates(lying["item9"], liar), rates(expected, liar)
    assert got.keys() == want.keys()
    for group, (num, den) in got.items():
        assert same(num.value, want[group][0].value)
        assert same(den.value, want[group][1].value)
    # the other counties keep the least-squares estimate from all their tables
    for node in NODES[1:]:
        assert lying["item9"].cells(node) == honest["item9"].cells(node)
