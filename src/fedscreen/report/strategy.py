"""The plan compiler: a few measured tables serve many of the plan's queries (*select*).

Many of a plan's queries count the same students by overlapping attributes: PHQ-9
positive by grade band and sex, PHQ-9 bands by grade band, item 9 by grade band — all
over valid PHQ-9 screenings. Asked separately, each pays for its own noise (a RATE
twice: numerator and denominator at ε/2 each) and their figures do not add up.
Compiled, they are served by a few noisy contingency tables, each measured once; the
figures are estimated from all the tables of their population by least squares
(``report.derived``, ``report.wls``: free post-processing, consistent by construction).

Selection (:func:`compile_strategy`): a private COUNT(*) or RATE whose grouping and
RATE condition use only category columns compared exactly is *servable*
(``report.measured``). The servable queries of one population (dataset, filter,
years) start as one table each; the compiler then merges, greedily, the pair of tables
whose merge lowers the plan's error most, while it does (a merged table sums more cells
per figure but is charged once), within the catalogue's ``max_groups`` and never into
a table a known county policy refuses while it answers one of the two.

The objective and the ε split (:func:`split_epsilon`): the plan's weighted error
relative to the plan as written, Σ_q w_q · Σ_cells(Var_measured / Var_as_written), w_q
the weights of the statistics reading q: every figure counts (a report is judged by its
figures, and the median over them), and a statistic's ``weight`` says what matters more.
A figure computed from its own table t has variance c/ε_t² (a sum of k discrete Laplace
cells ≈ 2k/ε²; a rate's linearised variance likewise), so the objective is Σ_t C_t/ε_t²,
minimised under Σ ε_t = E by ε_t ∝ C_t^(1/3) (Lagrange), with value (Σ_t C_t^(1/3))³/E²:
closed form, and a merge of a and b pays exactly when C_ab^(1/3) < C_a^(1/3) +
C_b^(1/3). The least-squares estimate from all the population's tables is never less
accurate than its own table's alone, so the split's predictions are upper bounds
(``report plan`` prints them).

The C_t need cell sizes and rates: they come from a synthetic reference county
(``fedscreen.cli.reference``); without it, every cell weighs like a count.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.policy import Policy
from fedscreen.policy.model import Dataset
from fedscreen.protocol.combine import Z_975, discrete_laplace_variance, sum_interval
from fedscreen.query import mechanisms
from fedscreen.query.compile import compile_query
from fedscreen.query.cost import MIN_EPSILON
from fedscreen.query.spec import Condition, QuerySpec
from fedscreen.report.measured import (
    MAX_JOINT_CELLS,
    Measurements,
    Table,
    build_table,
    column_order,
    domain,
    measurable,
    served_by,
    size,
)
from fedscreen.report.plan import PlannedQuery, ReportPlan
from fedscreen.report.released import SECURE_SENSITIVITY

#: ε is charged in whole micro-ε: a table's share is rounded down to it
MICRO: Final = 1_000_000
#: largest ε per county and year a plan may be compiled for (a catalogue allows ~10)
MAX_PLAN_EPSILON: Final = 1000.0


def compile_strategy(
    plan: ReportPlan,
    policy: Policy,
    *,
    epsilon: float,
    reference: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    weights: Mapping[str, float] | None = None,
    counties: Sequence[Policy] = (),
    truth: Truth | None = None,
) -> Measurements:
    """Tables for ``plan``'s measurable queries and ε for each, ``epsilon`` in all per
    node and plan year (less what the queries that run as written spend).

    ``reference``: each plan query's true (numerator, denominator) per cell (COUNT:
    (count, count)) in a reference county, for the split; without it every table gets
    the same share. ``weights``: plan query -> weight (default: the weights of the
    statistics that read it). ``counties``: the county policies known; two queries are
    never merged into a table a county refuses while it answers one of them (长安区 does
    not let anyone group by left-behind status: PHQ-9 by location must not go missing
    there with it). ``truth``: a query's true (numerator, denominator) per cell in the
    reference county; with it, a query is served by a table only if the table's cells
    give exactly what the query asked directly gives there (a table drops the rows where
    one of its attributes is NULL: such a query runs as written).
    """
    if not (math.isfinite(epsilon) and 0 < epsilon <= MAX_PLAN_EPSILON):
        raise ConfigError(f"ε per county and year must be in (0, {MAX_PLAN_EPSILON:g}]")
    groups: dict[tuple[str, str, tuple[str, ...]], list[tuple[str, tuple[str, ...]]]] = {}
    for name, query in plan.queries.items():
        dataset = policy.datasets[query.spec.dataset]
        attributes = measurable(query.spec, dataset)
        if attributes is None:
            continue
        where = "" if query.spec.where is None else repr(query.spec.where)
        groups.setdefault((query.spec.dataset, where, query.spec.years), []).append(
            (name, attributes)
        )
    limit = policy.limits.max_groups
    weights = weights or _weights(plan)
    tables: list[Table] = []
    for (dataset_name, _, years), members in sorted(groups.items(), key=lambda g: g[1][0][0]):
        dataset = policy.datasets[dataset_name]
        condition = plan.queries[members[0][0]].spec.where

        def table(attrs: Sequence[str], names: Sequence[str]) -> Table:
            return _table(dataset_name, dataset, condition, years, attrs, names)  # noqa: B023

        def root(t: Table) -> float:
            return float(table_load(plan, policy, t, reference, weights) ** (1 / 3))

        # the population's joint table stays solvable: the queries adding the fewest
        # attributes join first, a query that would take it over MAX_JOINT_CELLS runs as
        # written (so does one with more cells than max_groups alone)
        joint: list[str] = []
        chosen = []
        for name, attrs in sorted(members, key=lambda m: (size(dataset, m[1], years), m[0])):
            union = list(dict.fromkeys([*joint, *attrs]))
            if size(dataset, attrs, years) <= limit and (
                size(dataset, union, years) <= MAX_JOINT_CELLS
            ):
                joint = union
                chosen.append((name, attrs))
        # start from one table per query; merge the pair that lowers the plan's error most
        # (under the optimal split the error is (Σ_t C_t^⅓)³/E², so a merge pays exactly
        # when C_ab^⅓ < C_a^⅓ + C_b^⅓), until no merge pays
        bins = [table(attrs, [name]) for name, attrs in sorted(chosen)]
        roots = [root(t) for t in bins]
        while True:
            best: tuple[float, int, int, Table] | None = None
            for i, j in itertools.combinations(range(len(bins)), 2):
                union = list(dict.fromkeys([*bins[i].attributes, *bins[j].attributes]))
                if size(dataset, union, years) > limit:
                    continue
                merged = table(union, [*bins[i].members, *bins[j].members])
                if any(
                    not _answers(county, merged)
                    and (_answers(county, bins[i]) or _answers(county, bins[j]))
                    for county in counties
                ):
                    continue
                gain = roots[i] + roots[j] - root(merged)
                if gain > 1e-12 * (roots[i] + roots[j]) and (best is None or gain > best[0]):
                    best = (gain, i, j, merged)
            if best is None:
                break
            _, i, j, merged = best
            bins = [t for k, t in enumerate(bins) if k not in (i, j)] + [merged]
            roots = [r for k, r in enumerate(roots) if k not in (i, j)] + [root(merged)]
        for t in bins:
            tables.extend(_faithful(plan, t, truth, table) if truth else [t])
    served = {m for t in tables for m in t.members}
    fixed = sum(q.cost for n, q in plan.queries.items() if n not in served and plan.year in q.years)
    left = epsilon - fixed
    if tables and not left > 0:
        raise ConfigError(
            f"the queries that run as written spend ε = {fixed:g} of the {epsilon:g} given:"
            " nothing is left for the measured tables"
        )
    shares = split_epsilon(plan, policy, tables, left, reference=reference, weights=weights)
    starved = [name for name, share in shares.items() if share < MIN_EPSILON]
    if starved:
        raise ConfigError(
            f"ε = {left:g} left for {len(tables)} tables gives {starved[0]} less than 1 µε,"
            " the smallest ε a node charges: give more ε"
        )
    # no table above the per-query cap a node enforces; what that leaves is not spent
    cap = policy.limits.max_epsilon_per_query
    shares = {name: min(share, cap) for name, share in shares.items()}
    final = [
        build_table(t.name, {m: plan.queries[m].spec for m in t.members}, policy,
                    epsilon=shares[t.name], where=t.name)
        for t in tables
    ]  # fmt: skip
    return Measurements(epsilon, tuple(final))


def _table(
    name: str,
    dataset: Dataset,
    where: Condition | None,
    years: tuple[str, ...],
    attrs: Sequence[str],
    members: Sequence[str],
) -> Table:
    # a candidate while merging (build_table checks the final ones)
    ordered = tuple(c for c in column_order(dataset) if c in attrs)
    return Table(
        name="m_" + min(members),
        dataset=name,
        where=where,
        years=years,
        attributes=ordered,
        domains=tuple(domain(dataset, c, years) for c in ordered),
        members=tuple(sorted(members)),
    )


#: a query's true (numerator, denominator) per cell in the reference county
Truth = Callable[[QuerySpec], Sequence[tuple[int, int]]]


def serves_faithfully(plan: ReportPlan, table: Table, query: str, truth: Truth) -> bool:
    """Whether ``table``'s true cells give exactly what ``query`` asked directly gives, in
    the reference county (NULL in a table attribute drops rows the query counts)."""
    spec = plan.queries[query].spec
    direct = truth(spec)
    cells = [n for n, _ in truth(table.spec())]
    served = served_by(table, spec)
    for i, (num, den) in enumerate(direct):
        if sum(cells[j] for j in served.denominator[i]) != den:
            return False
        if served.numerator is not None and sum(cells[j] for j in served.numerator[i]) != num:
            return False
    return True


def _faithful(
    plan: ReportPlan, t: Table, truth: Truth, table: Callable[[Sequence[str], Sequence[str]], Table]
) -> list[Table]:
    """``t`` without the members it does not serve faithfully; each of those alone, if it
    serves itself faithfully (else it runs as written)."""
    bad = [m for m in t.members if not serves_faithfully(plan, t, m, truth)]
    if not bad:
        return [t]
    out = []
    good = [m for m in t.members if m not in bad]
    if good:
        attrs = [a for m in good for a in _needed(plan, m, t)]
        out.extend(_faithful(plan, table(list(dict.fromkeys(attrs)), good), truth, table))
    for m in bad:
        alone = table(_needed(plan, m, t), [m])
        if alone.attributes != t.attributes and serves_faithfully(plan, alone, m, truth):
            out.append(alone)
    return out


def _needed(plan: ReportPlan, query: str, t: Table) -> list[str]:
    dataset = plan.datasets[t.dataset]
    needed = measurable(plan.queries[query].spec, dataset)
    assert needed is not None
    return list(needed)


def _answers(county: Policy, table: Table) -> bool:
    """Whether a county with this policy answers the table's query."""
    try:
        compile_query(table.spec(), county)
    except QueryRefused:
        return False
    return True


def _weights(plan: ReportPlan) -> dict[str, float]:
    """A query's weight: the weights of the statistics that read it."""
    return {
        name: sum(s.weight for s in plan.statistics if name in s.queries) or 1.0
        for name in plan.queries
    }


# --- the ε split --------------------------------------------------------------------------


def split_epsilon(
    plan: ReportPlan,
    policy: Policy,
    tables: Sequence[Table],
    epsilon: float,
    *,
    reference: Mapping[str, Sequence[tuple[int, int]]] | None,
    weights: Mapping[str, float],
) -> dict[str, float]:
    """ε per table, Σ = ``epsilon`` (rounded down to whole µε), minimising the weighted
    mean variance ratio to today's plan (closed form: ε_t ∝ C_t^(1/3))."""
    loads = {t.name: table_load(plan, policy, t, reference, weights) for t in tables}
    roots = {name: load ** (1 / 3) for name, load in loads.items()}
    total = sum(roots.values())
    return {name: math.floor(epsilon * r / total * MICRO) / MICRO for name, r in roots.items()}


def table_load(
    plan: ReportPlan,
    policy: Policy,
    table: Table,
    reference: Mapping[str, Sequence[tuple[int, int]]] | None,
    weights: Mapping[str, float],
) -> float:
    """C_t: the weighted sum over the cells of the queries ``table`` serves of their
    variance ratio (measured at ε = 1 / as written); its share of the plan's error is
    C_t / ε_t²."""
    load = 0.0
    for name in table.members:
        query = plan.queries[name]
        ratios = [
            unit_variance(table, query, cell, truth) / today_variance(query, truth)
            for cell, truth in _cells_with_truth(query, reference)
        ]
        ratios = [r for r in ratios if math.isfinite(r)]
        if ratios:
            load += weights.get(name, 1.0) * sum(ratios)
    return load if load > 0 else 1.0


def _cells_with_truth(
    query: PlannedQuery, reference: Mapping[str, Sequence[tuple[int, int]]] | None
) -> list[tuple[int, tuple[int, int] | None]]:
    """The query's cells with their reference truth; without any (no reference, or no such
    students in the reference county: a county without a university has no UPI), every
    cell with None, so that the query still weighs like a count."""
    truth = (reference or {}).get(query.name, ())
    known = [(i, t) for i, t in enumerate(truth) if t[1] > 0]
    if known:
        return [(i, (t[0], t[1])) for i, t in known]
    return [(i, None) for i in range(query.cells)]


def unit_variance(
    table: Table, query: PlannedQuery, cell: int, truth: tuple[int, int] | None
) -> float:
    """Variance of the query's ``cell`` computed from ``table`` measured at ε = 1, in the
    cell's own unit (a count; a rate as a fraction): scale it by 1/ε² for another ε."""
    served = served_by(table, query.spec)
    unit = discrete_laplace_variance(1.0)
    den = served.denominator[cell]
    if served.numerator is None or truth is None:
        return unit * max(len(den), 1)
    num = served.numerator[cell]
    r = truth[0] / truth[1]
    return unit * ((1 - r) ** 2 * len(num) + r**2 * (len(den) - len(num))) / truth[1] ** 2


def today_variance(query: PlannedQuery, truth: tuple[int, int] | None) -> float:
    """Variance of the cell as today's plan releases it (its own query at its own ε)."""
    if query.spec.measure.kind == "rate":
        # half of ε for the numerator, half for the denominator, independent noise
        var = discrete_laplace_variance(2 / query.cost)
        if truth is None:
            return var
        r = truth[0] / truth[1]
        return (var + r * r * var) / truth[1] ** 2
    return discrete_laplace_variance(1 / query.cost)


def half_width(variance: float) -> float:
    """The 95% half-width of a figure with this (linearised) noise variance."""
    return Z_975 * math.sqrt(variance)


# --- what it promises -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A statistic's expected median 95% half-width over the query cells it reads."""

    statistic: str
    unit: str
    #: the plan as written (every query asked at its own ε)
    today: float | None
    #: the measured tables (served queries from their table at the table's ε)
    compiled: float | None


def expected(
    plan: ReportPlan,
    measurements: Measurements,
    reference: Mapping[str, Sequence[tuple[int, int]]],
) -> list[Expected]:
    """Each statistic's expected half-width today and under ``measurements``, from the
    closed-form variances (rates in the cells' own fraction units, counts in counts)."""
    served = measurements.served
    out = []
    for stat in plan.statistics:
        query = plan.queries[stat.queries[0]]
        known = any(t[1] > 0 for t in reference.get(query.name, ()))
        if (
            query.public
            or query.secure  # no county figure: secure_expected gives its province cells
            or query.spec.measure.kind not in ("count", "rate")
            or not known
        ):
            out.append(Expected(stat.id, stat.unit, None, None))
            continue
        table = served.get(query.name)
        today, compiled = [], []
        for cell, truth in _cells_with_truth(query, reference):
            if not _kept(plan, query, cell, stat.where):
                continue
            now = today_variance(query, truth)
            today.append(half_width(now))
            if table is None:
                compiled.append(half_width(now))
            else:
                compiled.append(
                    half_width(unit_variance(table, query, cell, truth) / table.epsilon**2)
                )
        out.append(
            Expected(
                stat.id,
                stat.unit,
                statistics.median(today) if today else None,
                statistics.median(compiled) if compiled else None,
            )
        )
    return out


#: Hebei's county-level divisions: the answers a province figure sums without secure aggregation
PROVINCE_COUNTIES: Final = 167


@dataclass(frozen=True)
class SecureExpected:
    """A secure statistic's expected 95% half-width of one province count cell."""

    statistic: str
    #: ε each county is charged for its secure query
    epsilon: float
    #: secure aggregation: the exact total plus one draw from each aggregator
    secure: float
    #: the same ε spent on plain answers, one noise draw per county, summed
    summed: float


def secure_expected(plan: ReportPlan, *, counties: int = PROVINCE_COUNTIES) -> list[SecureExpected]:
    """For each statistic reading a secure query: its province cell's half-width with two
    draws at the query's ε, and as the sum of ``counties`` plain answers at that ε."""
    out = []
    for stat in plan.statistics:
        query = next((plan.queries[q] for q in stat.queries if plan.queries[q].secure), None)
        if query is None:
            continue
        scale = mechanisms.scale_for(epsilon=query.cost, sensitivity=SECURE_SENSITIVITY)
        _, low, high, _ = sum_interval([0], [scale, scale])
        _, low_n, high_n, _ = sum_interval([0], [scale] * counties)
        out.append(SecureExpected(stat.id, query.cost, (high - low) / 2, (high_n - low_n) / 2))
    return out


def _kept(
    plan: ReportPlan, query: PlannedQuery, cell: int, where: Mapping[str, tuple[Any, ...]]
) -> bool:
    """Whether the statistic keeps the query's ``cell`` (its ``where``)."""
    dataset = plan.datasets[query.spec.dataset]
    domains = [domain(dataset, c, query.spec.years) for c in query.spec.group_by]
    groups = list(itertools.product(*domains))
    group = dict(zip(query.spec.group_by, groups[cell], strict=True))
    return all(group[c] in values for c, values in where.items() if c in group)


def measure_toml(measurements: Measurements) -> str:
    """The ``[measure]`` section of a plan that measures these tables."""
    lines = [
        "[measure]",
        f"epsilon = {measurements.epsilon!r}",
    ]
    for table in measurements.tables:
        serves = ", ".join(f'"{m}"' for m in table.members)
        lines += [
            "",
            f"# {' × '.join(table.attributes)}: {len(table.cells)} cells",
            f"[measure.tables.{table.name}]",
            f"serves = [{serves}]",
            f"epsilon = {table.epsilon!r}",
        ]
    return "\n".join(lines) + "\n"
