"""Merging a county override into the catalogue: an intersection that can never loosen."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.errors import PolicyError
from fedscreen.policy import (
    CATEGORY_MEASURES,
    MIN_SECURE_NODES,
    NUMERIC_MEASURES,
    CategoryRule,
    ColumnOverride,
    ColumnRule,
    Dataset,
    DatasetOverride,
    Limits,
    LimitsOverride,
    Measure,
    NumericRule,
    Override,
    Policy,
    Secure,
    SecureOverride,
    as_override,
    check_tightens,
    loosenings,
    merge,
)

PERIOD = "year"
COLUMNS = ("c1", "c2", "c3", "c4")
TEXTS = ("a", "b", "c", "d", "e")
INTS = (0, 1, 2, 3)
ANALYSTS = ("ana", "bob", "cyd")
T = TypeVar("T")

# --- random catalogues ----------------------------------------------------------------

epsilons = st.floats(min_value=0.01, max_value=50)
shares = st.floats(min_value=0.01, max_value=1.0)
small_ints = st.integers(-5, 40)
domains = st.sampled_from([TEXTS, INTS]).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), min_size=1, unique=True).map(tuple)
)


@st.composite
def numeric_rules(draw: st.DrawFn) -> NumericRule:
    low, high = sorted(draw(st.tuples(small_ints, small_ints)))
    measures = draw(st.frozensets(st.sampled_from(sorted(NUMERIC_MEASURES)), min_size=1))
    candidates: tuple[int, ...] = ()
    if Measure.QUANTILE in measures:
        candidates = tuple(sorted(draw(st.sets(st.integers(low, high), min_size=1, max_size=6))))
    return NumericRule(bounds=(low, high), measures=measures, candidates=candidates)


category_rules = st.builds(
    CategoryRule,
    domain=domains,
    measures=st.frozensets(st.sampled_from(sorted(CATEGORY_MEASURES)), min_size=1),
)
rules: st.SearchStrategy[ColumnRule] = st.one_of(category_rules, numeric_rules())


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    period = draw(category_rules)
    period = replace(period, measures=period.measures | {Measure.FILTER})
    names = draw(st.lists(st.sampled_from(COLUMNS), unique=True))
    public = draw(st.booleans())
    return Dataset(
        public=public,
        period=PERIOD,
        unit=None if public else "one student in one academic year",
        columns={PERIOD: period, **{name: draw(rules) for name in names}},
        withheld=draw(st.frozensets(st.sampled_from(["w1", "w2"]))),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    per_query = draw(epsilons)
    limits = Limits(
        max_epsilon_per_query=per_query,
        epsilon_per_node_per_year=draw(st.floats(min_value=per_query, max_value=100)),
        analyst_share=draw(shares),
        publication_threshold=draw(st.integers(0, 50)),
        max_groups=draw(st.integers(1, 1000)),
        analysts=draw(st.dictionaries(st.sampled_from(ANALYSTS), shares)),
        approval_above_epsilon=draw(st.none() | epsilons),
    )
    sets = draw(st.dictionaries(st.sampled_from(["d1", "d2"]), datasets(), min_size=1))
    return Policy(version="p1", limits=limits, datasets=sets, secure=draw(secures(sets)))


def _securable(dataset: Dataset) -> list[str]:
    """The columns a catalogue may list as secure (the loader's rule)."""
    return [
        name
        for name, rule in dataset.columns.items()
        if isinstance(rule, CategoryRule) and rule.measures & {Measure.GROUP, Measure.FILTER}
    ]


@st.composite
def secures(draw: st.DrawFn, sets: dict[str, Dataset]) -> Secure:
    """A secure section as the loader accepts it: non-public datasets, securable columns."""
    columns: dict[str, frozenset[str]] = {}
    for name, dataset in sets.items():
        candidates = _securable(dataset)
        if not dataset.public and candidates and draw(st.booleans()):
            columns[name] = draw(st.frozensets(st.sampled_from(candidates), min_size=1))
    if not columns and draw(st.booleans()):
        return Secure()  # no [secure] section
    return Secure(min_nodes=draw(st.integers(MIN_SECURE_NODES, 10)), columns=columns)


# --- random county overrides: any value, looser ones and unknown names included ---------


def _maybe(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


column_overrides = st.builds(
    ColumnOverride,
    measures=_maybe(st.frozensets(st.sampled_from(sorted(Measure)), min_size=1)),
    domain=_maybe(
        st.lists(st.sampled_from((*TEXTS, "z", *INTS, 9)), min_size=1, unique=True).map(tuple)
    ),
    bounds=_maybe(st.tuples(small_ints, small_ints).map(lambda b: (min(b), max(b)))),
    candidates=_maybe(st.sets(small_ints, min_size=1, max_size=6).map(lambda c: tuple(sorted(c)))),
)
dataset_overrides = st.builds(
    DatasetOverride,
    withheld=st.frozensets(st.sampled_from([*COLUMNS, PERIOD, "w1", "zz"]), max_size=2),
    columns=st.dictionaries(st.sampled_from([*COLUMNS, PERIOD, "zz"]), column_overrides),
)
limits_overrides = st.builds(
    LimitsOverride,
    max_epsilon_per_query=_maybe(epsilons),
    epsilon_per_node_per_year=_maybe(epsilons),
    analyst_share=_maybe(shares),
    publication_threshold=_maybe(st.integers(0, 50)),
    max_groups=_maybe(st.integers(1, 1000)),
    analysts=st.dictionaries(st.sampled_from(ANALYSTS), shares),
    approval_above_epsilon=_maybe(epsilons),
)
secure_overrides = st.builds(
    SecureOverride,
    refuse=st.booleans(),
    min_nodes=_maybe(st.integers(MIN_SECURE_NODES, 12)),
    columns=st.dictionaries(
        st.sampled_from(["d1", "d2", "d3"]),
        st.frozensets(st.sampled_from([*COLUMNS, PERIOD, "w1", "zz"])),
    ),
)
overrides = st.builds(
    Override,
    version=_maybe(st.sampled_from(["c1", "c2"])),
    limits=limits_overrides,
    datasets=st.dictionaries(st.sampled_from(["d1", "d2", "d3"]), dataset_overrides),
    secure=secure_overrides,
)


# --- the order "a allows no more than b", checked field by field ----------------------


def _inf(value: float | None) -> float:
    return math.inf if value is None else value


def _assert_within(m: Policy, p: Policy) -> None:
    """``m`` allows nothing ``p`` does not."""
    ml, pl = m.limits, p.limits
    assert ml.max_epsilon_per_query <= pl.max_epsilon_per_query
    assert ml.epsilon_per_node_per_year <= pl.epsilon_per_node_per_year
    assert ml.analyst_share <= pl.analyst_share
    for analyst in (*ANALYSTS, "someone-else"):
        assert ml.analyst_budget(analyst) <= pl.analyst_budget(analyst)
    assert ml.publication_threshold >= pl.publication_threshold
    assert ml.max_groups <= pl.max_groups
    assert _inf(ml.approval_above_epsilon) <= _inf(pl.approval_above_epsilon)
    assert m.datasets.keys() <= p.datasets.keys()
    for name, md in m.datasets.items():
        pd = p.datasets[name]
        assert (md.public, md.period, md.unit) == (pd.public, pd.period, pd.unit)
        assert md.columns.keys() <= pd.columns.keys()
        assert md.withheld >= pd.withheld
        for column, mr in md.columns.items():
            pr = pd.columns[column]
            assert type(mr) is type(pr)
            assert mr.measures <= pr.measures
            if isinstance(mr, CategoryRule):
                assert isinstance(pr, CategoryRule)
                assert set(mr.domain) <= set(pr.domain)
            else:
                assert isinstance(pr, NumericRule)
                assert pr.bounds[0] <= mr.bounds[0] <= mr.bounds[1] <= pr.bounds[1]
                assert set(mr.candidates) <= set(pr.candidates)
    ms, ps = m.secure, p.secure
    assert ms.refused >= ps.refused
    assert ms.min_nodes >= ps.min_nodes
    for name, columns in ms.columns.items():
        assert columns <= ps.columns[name]
    for name in m.datasets:
        assert ms.allows(name) <= ps.allows(name)


def _assert_respects(m: Policy, c: Override) -> None:
    """``m`` allows nothing the county document ``c`` forbids."""
    cl, ml = c.limits, m.limits
    for key in (
        "max_epsilon_per_query",
        "epsilon_per_node_per_year",
        "analyst_share",
        "max_groups",
    ):
        if getattr(cl, key) is not None:
            assert getattr(ml, key) <= getattr(cl, key)
    if cl.publication_threshold is not None:
        assert ml.publication_threshold >= cl.publication_threshold
    assert _inf(ml.approval_above_epsilon) <= _inf(cl.approval_above_epsilon)
    for analyst in (*ANALYSTS, "someone-else"):
        stated = cl.analysts.get(analyst, cl.analyst_share)
        if stated is not None:
            assert ml.share_of(analyst) <= stated
    for name, cd in c.datasets.items():
        md = m.datasets.get(name)
        if md is None:
            continue
        assert not cd.withheld & md.columns.keys()
        for column, co in cd.columns.items():
            mr = md.columns.get(column)
            if mr is None:
                continue
            if co.measures is not None:
                assert mr.measures <= co.measures
            if isinstance(mr, CategoryRule):
                if co.domain is not None:
                    assert set(mr.domain) <= set(co.domain)
                continue
            if co.bounds is not None:
                assert co.bounds[0] <= mr.bounds[0] <= mr.bounds[1] <= co.bounds[1]
            if co.candidates is not None:
                assert set(mr.candidates) <= set(co.candidates)
    cs, ms = c.secure, m.secure
    if cs.refuse:
        assert ms.refused
        assert all(not ms.allows(name) for name in m.datasets)
    if cs.min_nodes is not None:
        assert ms.min_nodes >= cs.min_nodes
    for name, columns in cs.columns.items():
        assert ms.columns.get(name, frozenset()) <= columns


def _assert_well_formed(p: Policy) -> None:
    """``p`` keeps every invariant the loader checks in a catalogue."""
    limits = p.limits
    assert 0 < limits.max_epsilon_per_query <= limits.epsilon_per_node_per_year
    assert all(0 < s <= 1 for s in (limits.analyst_share, *limits.analysts.values()))
    assert limits.publication_threshold >= 0
    assert limits.max_groups >= 1
    for dataset in p.datasets.values():
        assert not dataset.withheld & dataset.columns.keys()
        if dataset.columns:
            assert Measure.FILTER in dataset.columns[dataset.period].measures
        for rule in dataset.columns.values():
            assert rule.measures
            if isinstance(rule, CategoryRule):
                assert rule.measures <= CATEGORY_MEASURES
                assert rule.domain
                assert len(set(rule.domain)) == len(rule.domain)
            else:
                low, high = rule.bounds
                assert rule.measures <= NUMERIC_MEASURES
                assert low <= high
                assert list(rule.candidates) == sorted(set(rule.candidates))
                assert all(low <= x <= high for x in rule.candidates)
                assert bool(rule.candidates) == (Measure.QUANTILE in rule.measures)
    assert p.secure.min_nodes >= MIN_SECURE_NODES
    for name, columns in p.secure.columns.items():
        dataset = p.datasets[name]
        assert not dataset.public
        assert columns
        assert columns <= set(_securable(dataset))


# --- properties -----------------------------------------------------------------------


@given(policies(), overrides)
def test_merge_never_loosens(province: Policy, county: Override) -> None:
    merged = merge(province, county)
    _assert_well_formed(merged)
    _assert_within(merged, province)
    _assert_respects(merged, county)


@given(policies())
def test_merge_is_idempotent(policy: Policy) -> None:
    _assert_well_formed(policy)
    assert merge(policy, as_override(policy)) == policy
    assert merge(policy, Override()) == policy


@given(policies(), overrides)
def test_an_override_applied_twice_counts_once(province: Policy, county: Override) -> None:
    merged = merge(province, county)
    assert merge(merged, county) == merged


@given(policies(), overrides, overrides)
def test_overrides_commute(province: Policy, first: Override, second: Override) -> None:
    assert merge(merge(province, first), second) == merge(merge(province, second), first)


@given(policies(), overrides)
def test_merge_is_a_meet(province: Policy, county: Override) -> None:
    """Restating either side as an override and merging gives the narrower one."""
    tight = merge(province, county)
    assert merge(tight, as_override(province)) == tight
    assert merge(province, as_override(tight)) == replace(tight, overrides=province.overrides)


@given(policies(), overrides)
def test_the_merged_policy_is_a_pure_tightening(province: Policy, county: Override) -> None:
    assert loosenings(province, as_override(merge(province, county))) == []


# --- examples -------------------------------------------------------------------------

PROVINCE = Policy(
    version="p1",
    limits=Limits(
        max_epsilon_per_query=1.0,
        epsilon_per_node_per_year=10.0,
        analyst_share=0.5,
        publication_threshold=10,
        max_groups=100,
        analysts={"ana": 0.8},
    ),
    datasets={
        "s": Dataset(
            public=False,
            period=PERIOD,
            unit="one student in one academic year",
            columns={
                PERIOD: CategoryRule(("2024-2025",), frozenset({Measure.FILTER})),
                "sex": CategoryRule(("M", "F"), frozenset({Measure.GROUP, Measure.FILTER})),
                "score": NumericRule(
                    (0, 27), frozenset({Measure.SUM, Measure.QUANTILE}), candidates=(0, 10, 27)
                ),
            },
        )
    },
)


def test_loosenings_name_every_attempt() -> None:
    county = Override(
        version="c1",
        limits=LimitsOverride(
            max_epsilon_per_query=2.0,
            epsilon_per_node_per_year=5.0,
            publication_threshold=5,
            analysts={"ana": 0.9, "bob": 0.4},
            approval_above_epsilon=0.5,
        ),
        datasets={
            "s": DatasetOverride(
                withheld=frozenset({"sexx"}),
                columns={
                    "sex": ColumnOverride(
                        measures=frozenset({Measure.GROUP, Measure.SUM}),
                        domain=("F", "X"),
                        bounds=(0, 1),
                    ),
                    "score": ColumnOverride(bounds=(-1, 20), candidates=(10, 15), domain=(1,)),
                    "nope": ColumnOverride(),
                },
            ),
            "t": DatasetOverride(),
        },
    )
    assert loosenings(PROVINCE, county) == [
        "limits.max_epsilon_per_query: 2.0 is above the provincial 1.0",
        "limits.publication_threshold: 5 is below the provincial 10",
        "limits.analysts.ana: 0.9 is above the provincial 0.8",
        "datasets.s.withheld: 'sexx' is not a column of the provincial catalogue",
        "datasets.s.columns.nope: not a queryable column of the catalogue",
        "datasets.s.columns.score.domain: a numeric column has no domain",
        "datasets.s.columns.score.bounds: [-1, 20] is wider than the provincial [0, 27]",
        "datasets.s.columns.score.candidates: 15 not among the provincial candidates",
        "datasets.s.columns.sex.measures: 'sum' not allowed by the province",
        "datasets.s.columns.sex.bounds: a category column has no bounds",
        "datasets.s.columns.sex.domain: 'X' not in the provincial domain",
        "datasets.t: not in the provincial catalogue",
    ]
    with pytest.raises(PolicyError, match=r"^130102\.toml: limits\.max_epsilon_per_query"):
        check_tightens(PROVINCE, county, source="130102.toml")
    # the merge itself ignores every loosening and keeps every tightening
    merged = merge(PROVINCE, county)
    assert merged.limits == Limits(
        max_epsilon_per_query=1.0,
        epsilon_per_node_per_year=5.0,
        analyst_share=0.5,
        publication_threshold=10,
        max_groups=100,
        analysts={"ana": 0.8, "bob": 0.4},
        approval_above_epsilon=0.5,
    )
    columns = merged.datasets["s"].columns
    assert columns["sex"] == CategoryRule(("F",), frozenset({Measure.GROUP}))
    # candidate 10 is the only one left, and it lies within the narrower bounds
    assert columns["score"] == NumericRule(
        (0, 20), frozenset({Measure.SUM, Measure.QUANTILE}), candidates=(10,)
    )


def test_check_tightens_accepts_a_tightening() -> None:
    county = Override(limits=LimitsOverride(max_epsilon_per_query=0.5, analysts={"bob": 0.1}))
    check_tightens(PROVINCE, county)


def test_per_query_cap_never_exceeds_the_yearly_budget() -> None:
    merged = merge(PROVINCE, Override(limits=LimitsOverride(epsilon_per_node_per_year=0.4)))
    assert merged.limits.max_epsilon_per_query == 0.4


def test_a_column_with_nothing_left_is_withheld() -> None:
    county = Override(
        datasets={
            "s": DatasetOverride(
                columns={"score": ColumnOverride(measures=frozenset({Measure.MEAN}))}
            )
        }
    )
    dataset = merge(PROVINCE, county).datasets["s"]
    assert "score" not in dataset.columns
    assert "score" in dataset.withheld


def test_quantile_goes_with_its_last_candidate() -> None:
    county = Override(
        datasets={"s": DatasetOverride(columns={"score": ColumnOverride(bounds=(1, 9))})}
    )
    assert merge(PROVINCE, county).datasets["s"].columns["score"] == NumericRule(
        (1, 9), frozenset({Measure.SUM})
    )


def test_withholding_the_period_empties_the_dataset() -> None:
    county = Override(datasets={"s": DatasetOverride(withheld=frozenset({PERIOD}))})
    dataset = merge(PROVINCE, county).datasets["s"]
    assert dataset.columns == {}
    assert dataset.withheld == {PERIOD, "sex", "score"}


def test_override_versions_are_recorded() -> None:
    merged = merge(merge(PROVINCE, Override(version="c2")), Override(version="c1"))
    assert merged.version == "p1"
    assert merged.overrides == {"c1", "c2"}


# --- secure aggregation -----------------------------------------------------------------

SECURE_PROVINCE = replace(
    PROVINCE, secure=Secure(min_nodes=3, columns={"s": frozenset({PERIOD, "sex"})})
)


def test_secure_loosenings_are_named() -> None:
    county = Override(
        secure=SecureOverride(
            min_nodes=2,
            columns={"s": frozenset({"sex", "score", "nope"}), "t": frozenset()},
        )
    )
    assert loosenings(SECURE_PROVINCE, county) == [
        "secure.min_nodes: 2 is below the provincial 3",
        "secure.datasets.s.columns: 'nope', 'score' not allowed in secure queries by the province",
        "secure.datasets.t: not in the provincial catalogue",
    ]
    with pytest.raises(PolicyError, match=r"^c\.toml: secure\.min_nodes: 2 is below"):
        check_tightens(SECURE_PROVINCE, county, source="c.toml")
    # the merge keeps the province's minimum and only the columns both allow
    assert merge(SECURE_PROVINCE, county).secure == Secure(
        min_nodes=3, columns={"s": frozenset({"sex"})}
    )


def test_a_county_tightens_secure_aggregation() -> None:
    county = Override(
        secure=SecureOverride(refuse=True, min_nodes=5, columns={"s": frozenset({PERIOD})})
    )
    assert loosenings(SECURE_PROVINCE, county) == []
    merged = merge(SECURE_PROVINCE, county).secure
    assert merged == Secure(min_nodes=5, columns={"s": frozenset({PERIOD})}, refused=True)
    assert merged.allows("s") == frozenset()
    # an empty list keeps none of the dataset's columns
    emptied = merge(SECURE_PROVINCE, Override(secure=SecureOverride(columns={"s": frozenset()})))
    assert emptied.secure == Secure(min_nodes=3)
    assert emptied.secure.allows("s") == frozenset()


def test_a_withheld_or_narrowed_column_leaves_the_secure_list() -> None:
    county = Override(
        datasets={
            "s": DatasetOverride(
                withheld=frozenset({"sex"}),
                columns={PERIOD: ColumnOverride(measures=frozenset({Measure.FILTER}))},
            )
        }
    )
    assert merge(SECURE_PROVINCE, county).secure.columns == {"s": frozenset({PERIOD})}
    # the period no longer filterable: the dataset is emptied, and leaves the list too
    county = Override(
        datasets={"s": DatasetOverride(columns={PERIOD: ColumnOverride(domain=("x",))})}
    )
    assert merge(SECURE_PROVINCE, county).secure.columns == {}


def test_no_secure_section_allows_nothing() -> None:
    assert PROVINCE.secure == Secure()
    assert PROVINCE.secure.allows("s") == frozenset()
    county = Override(secure=SecureOverride(columns={"s": frozenset({"sex"})}))
    assert loosenings(PROVINCE, county) == [
        "secure.datasets.s.columns: 'sex' not allowed in secure queries by the province"
    ]
