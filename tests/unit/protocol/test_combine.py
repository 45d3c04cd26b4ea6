"""Provincial combination: the stated 95% intervals cover the truth 95% of the time."""

from __future__ import annotations

import math

import pytest

from fedscreen.protocol.combine import NodeCells, combine, discrete_laplace_variance
from fedscreen.query.mechanisms import half_width, laplace_vector, scale_for

RELEASES = 4000


def _node_answers(truths: list[list[int]], epsilons: list[float], kind: str) -> list[NodeCells]:
    """Each node releases RELEASES cells of its true count with real OpenDP noise."""
    answers = []
    for n, (truth, eps) in enumerate(zip(truths, epsilons, strict=True)):
        noisy = laplace_vector(truth, epsilon=eps, sensitivity=1)
        cells = [
            {"group": [i], "value": v, "lower": v - noisy.half_width, "upper": v + noisy.half_width}
            for i, v in enumerate(noisy.values)
        ]
        answers.append(NodeCells(f"n{n}", {"scale": noisy.scale, "cells": cells}))
    return answers


@pytest.mark.parametrize(
    "epsilons",
    [[0.1], [0.1, 0.1, 0.1], [0.05, 0.2, 0.5, 1.0, 0.1], [0.1] * 20],
    ids=["1 node", "3 equal", "5 mixed", "20 nodes"],
)
def test_province_interval_coverage(epsilons: list[float]) -> None:
    truths = [[300 + 7 * n] * RELEASES for n in range(len(epsilons))]
    cells = combine("count", _node_answers(truths, epsilons, "count"), threshold=0)
    true_total = sum(t[0] for t in truths)
    covered = sum(c["lower"] <= true_total <= c["upper"] for c in cells) / len(cells)
    expected = 0.95
    if len(epsilons) == 1:
        # one node keeps its own exact interval: P(|noise| <= h) of the discrete Laplace,
        # a little above 95% because the noise is integer (0.9527 at ε = 0.1)
        scale = scale_for(epsilon=epsilons[0], sensitivity=1)
        q = math.exp(-1 / scale)
        expected = 1 - 2 * q ** (half_width(scale) + 1) / (1 + q)
    # binomial sd at p=0.95, n=4000 is 0.0034: 4 sd either side fails about once in 10^4
    sd = math.sqrt(expected * (1 - expected) / len(cells))
    assert abs(covered - expected) <= 4 * sd, (covered, expected)


def test_rate_combines_numerators_and_denominators() -> None:
    answers = []
    for n, (num, den) in enumerate([(30, 200), (50, 400), (10, 100)]):
        cell = {
            "group": ["x"],
            "numerator": {"value": num, "scale": 4.0},
            "denominator": {"value": den, "scale": 4.0},
        }
        answers.append(NodeCells(f"n{n}", {"cells": [cell]}))
    (cell,) = combine("rate", answers, threshold=10)
    assert cell["value"] == pytest.approx(90 / 700)
    assert cell["lower"] < 90 / 700 < cell["upper"]
    assert (cell["numerator"], cell["denominator"]) == (90, 700)


def test_variance_matches_the_discrete_laplace_formula() -> None:
    noisy = laplace_vector([0] * 20000, epsilon=0.2, sensitivity=1)
    empirical = sum(v * v for v in noisy.values) / len(noisy.values)
    assert empirical == pytest.approx(discrete_laplace_variance(noisy.scale), rel=0.06)


def test_a_cell_a_county_policy_removed_combines_the_nodes_that_released_it() -> None:
    def cell(group: str, value: int) -> dict:  # type: ignore[type-arg]
        return {"group": [group], "value": value, "lower": value - 3, "upper": value + 3}

    a = NodeCells("a", {"scale": 1.0, "cells": [cell("junior", 40), cell("university", 30)]})
    b = NodeCells("b", {"scale": 1.0, "cells": [cell("junior", 50)]})  # no university
    junior, university = combine("count", [a, b], threshold=0)
    assert (junior["group"], junior["value"], junior["nodes"]) == (["junior"], 90, 2)
    assert (university["value"], university["nodes"]) == (30, 1)
    assert (university["lower"], university["upper"]) == (27, 33)  # the node's own interval
