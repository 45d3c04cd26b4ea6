"""combine() keys a group it cannot hash (a list inside: never a verified answer's, whose
groups are flat) by its JSON, as it did before cells were keyed by ``cell_key``."""

from __future__ import annotations

from fedscreen.protocol.combine import NodeCells, combine


def test_combine_keys_a_nested_group_by_its_json_as_documented() -> None:
    node = NodeCells("130102", {"mechanism": "none (public data)", "scale": 0,
                                "cells": [{"group": [["a"]], "value": 50}]})  # fmt: skip
    cells = combine("count", [node], threshold=0, public=True)
    assert cells[0]["group"] == [["a"]]
