"""The plan compiler: tables serve the annual plan's queries exactly (on synthetic counties)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedscreen.cli.reference import reference_county, reference_truth, true_cells, true_rows
from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.query.compile import compile_query
from fedscreen.report.measured import served_cells
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.strategy import MICRO, compile_strategy

ANNUAL = Path(__file__).parents[3] / "policies" / "reports" / "annual.toml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(default_policy_dir() / PROVINCE_FILE)


@pytest.fixture(scope="module")
def annual(policy: Policy) -> ReportPlan:
    return load_plan(ANNUAL, policy)


@pytest.fixture(scope="module")
def county(annual: ReportPlan) -> Iterator[Path]:
    years = tuple(sorted({y for q in annual.queries.values() for y in q.years}))
    with reference_county(3000, years, seed=7) as database:
        yield database


def test_every_served_query_is_exactly_sums_of_its_tables_cells(
    annual: ReportPlan, policy: Policy, county: Path
) -> None:
    # the semantics promise: a served query counts what it counts when asked directly
    strategy = compile_strategy(annual, policy, epsilon=1.0)
    assert strategy.served, "the annual plan has measurable queries"
    for table in strategy.tables:
        table_truth = [n for n, _ in true_cells(*true_rows(county, table.spec(), policy))]
        for name in table.members:
            spec = annual.queries[name].spec
            direct = true_cells(*true_rows(county, spec, policy))
            served = served_cells(table, spec, compile_query(spec, policy).cells)
            for i, (num, den) in enumerate(direct):
                assert sum(table_truth[j] for j in served.denominator[i]) == den, (name, i)
                if served.numerator is not None:
                    assert sum(table_truth[j] for j in served.numerator[i]) == num, (name, i)


def test_tables_fit_the_catalogue_and_the_split_spends_no_more_than_given(
    annual: ReportPlan, policy: Policy, county: Path
) -> None:
    reference = reference_truth(county, {n: q.spec for n, q in annual.queries.items()}, policy)
    for epsilon in (1.0, 2.95):
        strategy = compile_strategy(annual, policy, epsilon=epsilon, reference=reference)
        fixed = sum(
            q.cost
            for n, q in annual.queries.items()
            if n not in strategy.served and annual.year in q.years
        )
        spent = sum(t.epsilon for t in strategy.tables)
        assert fixed + spent <= epsilon + 1e-9
        assert spent > epsilon - fixed - len(strategy.tables) / MICRO
        for table in strategy.tables:
            assert 0 < table.epsilon <= policy.limits.max_epsilon_per_query
            assert len(table.cells) <= policy.limits.max_groups
            # whole µε: what a node charges exactly
            assert abs(table.epsilon * MICRO - round(table.epsilon * MICRO)) < 1e-6
        # queries asked as written (a quantile, public data) are never served
        assert "interview_days" not in strategy.served
        assert "eligible" not in strategy.served


def test_a_split_with_nothing_left_is_refused(annual: ReportPlan, policy: Policy) -> None:
    with pytest.raises(ConfigError, match="nothing is left"):
        compile_strategy(annual, policy, epsilon=0.05)
