"""Report figures decide exact or noisy from the catalogue, never from an answer (A6)."""

from __future__ import annotations

from typing import Any

from fedscreen.report.figures import Released

PUBLIC = {
    "dataset": "schools",
    "measure": {"kind": "count"},
    "group_by": ["location"],
    "years": ["2024-2025"],
}
NOISY = {**PUBLIC, "dataset": "screenings"}


def _released(query: dict[str, Any], scale: dict[str, Any]) -> Released:
    cells = [{"group": ["rural"], "value": 3}, {"group": ["urban"], "value": 4}]
    nodes = {"130102": {**scale, "cells": cells}, "130104": {"cells": cells}}
    body = {"query": query, "threshold": 10, "province": []}
    return Released(body, nodes, {}, areas={"1301": ["130102", "130104"]})


def test_public_figures_are_exact_whatever_an_answer_states() -> None:
    released = _released(PUBLIC, {"scale": 1e15})
    assert released.public
    assert all(part.exact for _, part in released.parts("130102"))
    area = released.cells("1301")  # one answer states a scale, one does not: still combines
    assert [(c["value"], c["lower"], c["upper"]) for c in area] == [(6, 6, 6), (8, 8, 8)]
    assert not any(c["suppressed"] for c in area)


def test_noisy_figures_carry_their_scale() -> None:
    released = _released(NOISY, {"scale": 2.0})
    assert not released.public
    assert [part.scales for _, part in released.parts("130102")] == [(2.0,), (2.0,)]
