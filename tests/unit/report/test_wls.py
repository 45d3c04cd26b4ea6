"""report.wls: the least-squares estimator against direct solutions on small joints.

Random joints of 2–4 attributes (domains of 1–4 values), random sets of measured
marginals (the full joint and the total included) with random variances: the
estimator is checked against the normal equations solved directly, its estimates
against their own consistency, ``estimable`` against a rank test, ``operator``
against a plain loop, and every figure's variance against the single tables that
determine it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedscreen.report.wls import RCOND, Joint, Matrix, estimable, estimator

EXAMPLES = settings(max_examples=100, deadline=None, database=None)

#: noisy measured values: counts plus noise, possibly negative
value_st = st.integers(min_value=-50, max_value=5000).map(float)
#: a table's noise variance (a node's scale squared, about): within 4 decades
variance_st = st.floats(min_value=0.5, max_value=5000.0, allow_nan=False)


@dataclass(frozen=True)
class Case:
    joint: Joint
    #: measured marginals, each a tuple of attributes (possibly in another order)
    marginals: tuple[tuple[str, ...], ...]
    #: one variance per marginal (every cell of a table has its node's one scale)
    table_variances: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def blocks(self) -> list[Matrix]:
        return [self.joint.operator(m) for m in self.marginals]

    @property
    def rows(self) -> Matrix:
        return np.vstack(self.blocks)

    @property
    def variances(self) -> Any:
        return np.concatenate(
            [np.full(b.shape[0], v) for b, v in zip(self.blocks, self.table_variances, strict=True)]
        )

    @property
    def y(self) -> Any:
        return np.array(self.values)


@st.composite
def joints(draw: st.DrawFn, min_size: int = 1) -> Joint:
    count = draw(st.integers(min_value=2, max_value=4))
    names = tuple("abcd"[:count])
    domains = []
    for i in range(count):
        size = draw(st.integers(min_value=min_size, max_value=4))
        # codes of both kinds, as the catalogue's domains have them
        domains.append(tuple(f"v{i}{j}" if i % 2 else j for j in range(size)))
    return Joint(names, tuple(domains))


def subsets(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]


@st.composite
def cases(draw: st.DrawFn, *, full: bool = False) -> Case:
    joint = draw(joints())
    chosen = draw(st.lists(st.sampled_from(subsets(joint.attributes)), min_size=1, max_size=5))
    if full:
        chosen.append(joint.attributes)
    # a marginal's attributes in any order: the node releases them in that order
    marginals = tuple(tuple(draw(st.permutations(m))) for m in chosen)
    table_variances = tuple(draw(variance_st) for _ in marginals)
    size = sum(joint.operator(m).shape[0] for m in marginals)
    values = tuple(draw(st.lists(value_st, min_size=size, max_size=size)))
    return Case(joint, marginals, table_variances, values)


def close(a: Any, b: Any, scale: float) -> bool:
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-9 * max(scale, 1.0)))


# --- (a) the full joint measured ------------------------------------------------------


@EXAMPLES
@given(cases(full=True))
def test_with_the_full_joint_measured_it_is_the_weighted_least_squares_solution(
    case: Case,
) -> None:
    rows, weights, y = case.rows, 1.0 / case.variances, case.y
    direct = np.linalg.solve(rows.T @ (weights[:, None] * rows), rows.T @ (weights * y))
    got = estimator(rows, case.variances) @ y
    assert close(got, direct, float(np.abs(direct).max(initial=0.0)))


# --- (b) in general: measured marginals, consistency ----------------------------------


@EXAMPLES
@given(cases())
def test_every_measured_marginal_is_the_weighted_least_squares_estimate(case: Case) -> None:
    rows, y = case.rows, case.y
    sigma = np.sqrt(case.variances)
    solve = estimator(rows, case.variances)
    x = solve @ y
    # any solution of the weighted normal equations gives estimable figures the same value
    direct, *_ = np.linalg.lstsq(rows / sigma[:, None], y / sigma, rcond=None)
    scale = float(np.abs(y).sum())
    assert close(rows @ x, rows @ direct, scale)
    # the normal equations themselves: the weighted residual is orthogonal to the tables
    residual = rows.T @ ((y - rows @ x) / case.variances)
    assert close(residual, 0.0, scale / float(case.variances.min()))
    # minimum norm: nothing in the directions the tables do not see
    null = np.eye(rows.shape[1]) - np.linalg.pinv(rows) @ rows
    assert close(null @ x, 0.0, scale)


@EXAMPLES
@given(cases())
def test_marginals_of_the_estimate_add_up(case: Case) -> None:
    joint = case.joint
    x = estimator(case.rows, case.variances) @ case.y
    scale = float(np.abs(case.y).sum())
    for fine in subsets(joint.attributes):
        shape = [len(joint.domains[joint.attributes.index(a)]) for a in fine]
        table = (joint.operator(fine) @ x).reshape(shape)
        for coarse in subsets(fine):
            summed = table.sum(axis=tuple(i for i, a in enumerate(fine) if a not in coarse))
            assert close(np.ravel(summed), joint.operator(coarse) @ x, scale), (fine, coarse)
    # the total of every measured table is the one estimated total
    totals = [float(block.sum(axis=0) @ x) for block in case.blocks]
    assert close(totals, totals[0], scale)


# --- (c) estimable ---------------------------------------------------------------------


def in_row_space(query: Matrix, rows: Matrix) -> list[bool]:
    rank = np.linalg.matrix_rank(rows)
    return [bool(np.linalg.matrix_rank(np.vstack([rows, q])) == rank) for q in query]


@EXAMPLES
@given(cases())
def test_estimable_is_the_row_space(case: Case) -> None:
    rows, joint = case.rows, case.joint
    solve = estimator(rows, case.variances)
    for marginal in case.marginals:
        for coarser in subsets(tuple(marginal)):
            assert estimable(joint.operator(coarser), rows, solve).all(), (marginal, coarser)
    for query in subsets(joint.attributes):
        q = joint.operator(query)
        assert estimable(q, rows, solve).tolist() == in_row_space(q, rows), query


@EXAMPLES
@given(joints(min_size=2), st.data())
def test_a_finer_marginal_than_any_table_is_not_estimable(
    joint: Joint, data: st.DataObject
) -> None:
    a, b = data.draw(st.permutations(joint.attributes))[:2]
    rows = np.vstack([joint.operator([a]), joint.operator([b])])
    solve = estimator(rows, np.array(data.draw(st.lists(variance_st, min_size=len(rows),
                                                        max_size=len(rows)))))  # fmt: skip
    assert not estimable(joint.operator([a, b]), rows, solve).any()
    assert estimable(joint.operator([a]), rows, solve).all()
    assert estimable(joint.operator([]), rows, solve).all()


# --- (d) operator ----------------------------------------------------------------------


@EXAMPLES
@given(joints(), st.data())
def test_operator_rows_are_the_marginal_cells_in_product_order(
    joint: Joint, data: st.DataObject
) -> None:
    marginal = data.draw(st.sampled_from(subsets(joint.attributes)))
    marginal = tuple(data.draw(st.permutations(marginal)))
    matrix = joint.operator(marginal)
    positions = [joint.attributes.index(a) for a in marginal]
    cells = list(itertools.product(*(joint.domains[p] for p in positions)))
    expected = np.zeros((len(cells), len(joint.cells)))
    for j, cell in enumerate(itertools.product(*joint.domains)):
        expected[cells.index(tuple(cell[p] for p in positions)), j] = 1.0
    assert joint.cells == list(itertools.product(*joint.domains))
    assert matrix.shape == expected.shape
    assert (matrix == expected).all()
    # each joint cell in exactly one row
    assert (matrix.sum(axis=0) == 1.0).all()


def test_operator_of_nothing_is_the_total() -> None:
    joint = Joint(("a", "b"), ((1, 2), ("x", "y", "z")))
    assert (joint.operator([]) == np.ones((1, 6))).all()
    assert (joint.operator(["b", "a"]) @ np.arange(6.0)).tolist() == [0, 3, 1, 4, 2, 5]


# --- (e) WLS never loses accuracy -------------------------------------------------------


@EXAMPLES
@given(cases())
@example(
    Case(
        joint=Joint(
            ("a", "b", "c", "d"), ((0, 1, 2), ("x", "y", "z"), (0, 1, 2, 3), tuple("pqrs"))
        ),
        marginals=((),),
        table_variances=(1.0,),
        values=(0.0,),
    )
)  # found by hypothesis: the grand total alone over 144 cells
def test_no_figure_is_noisier_than_from_any_single_table_that_determines_it(
    case: Case,
) -> None:
    rows, joint = case.rows, case.joint
    variances = case.variances
    solve = estimator(rows, variances)
    for query in subsets(joint.attributes):
        q = joint.operator(query)
        combined = ((q @ solve) ** 2) @ variances
        for block, variance in zip(case.blocks, case.table_variances, strict=True):
            single = estimator(block, np.full(block.shape[0], variance))
            determined = estimable(q, block, single)
            alone = ((q @ single) ** 2).sum(axis=1) * variance
            # to float precision: the pseudo-inverses of near-singular blocks round at ~1e-9
            assert (combined[determined] <= alone[determined] * (1 + 1e-6) + 1e-9).all()
        # and the figures the tables determine have the Gauss–Markov variance
        # with the estimator's cut-off: numpy's default (1e-15) keeps the rounding noise
        # of a rank-deficient Gram matrix (e.g. one grand total over 144 cells) as
        # singular values, and the reference itself is then off by 2%
        gram = np.linalg.pinv(rows.T @ (rows / variances[:, None]), rcond=RCOND, hermitian=True)
        known = estimable(q, rows, solve)
        gauss_markov = np.einsum("ij,jk,ik->i", q, gram, q)
        assert np.allclose(combined[known], gauss_markov[known], rtol=1e-6, atol=1e-9)
