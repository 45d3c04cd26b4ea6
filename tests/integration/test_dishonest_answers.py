"""A dishonest node cannot shape a release or make an honest log fail audit (A1, A3, A4, A7(d)).

The federation of ``test_federation.py`` (its builder and helpers, reused): a real
coordinator and three real node processes over mutual TLS. One county turns
dishonest (``tests/dishonestnode.py``: the real ``node serve`` with its own keys,
its cells altered before it signs them). Whatever it changes in the cells — no
noise, a group twice, a group of another length or outside the public domains, a
group nested 450 deep — the coordinator finds its answer does not verify: the
release goes on without it, says why, ``fedscreen query`` prints it, and the
coordinator's log passes ``audit verify``. Display text it chooses reaches the
analyst's terminal only printable and short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_federation import (
    NODES,
    SQL,
    Federation,
    _cli,
    _env,
    _wait_for_file,
    running_federation,
)

DISHONEST_NODE = Path(__file__).resolve().parents[1] / "dishonestnode.py"
BAD = NODES[0]
#: each case asks at its own ε, so no node gives a stored answer from another case
CASES = {"zero": "0.21", "dup": "0.22", "arity": "0.23", "invent": "0.24", "nest": "0.25"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("dishonest")) as federation:
        yield federation


def _dishonest(fed: Federation, mode: str) -> None:
    """Replace ``BAD``'s node process with a dishonest one (same home, same keys)."""
    fed.kill_node(BAD)
    fed.started += 1
    ready = fed.root / f"{BAD}.{fed.started}.ready"
    log_path = fed.root / f"{BAD}.{mode}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(DISHONEST_NODE), mode, "--home", str(fed.node_home(BAD)),
             "--coordinator", fed.address, "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    fed.nodes[BAD] = proc
    fed.ready_files[BAD] = ready
    _wait_for_file(ready, proc, log_path)


def _ask(fed: Federation, epsilon: str, fmt: str) -> subprocess.CompletedProcess[str]:
    home, address = str(fed.analyst.home), fed.address
    return _cli(
        "query", "--home", home, "--coordinator", address, "--epsilon", epsilon, "--format", fmt,
        SQL,
    )  # fmt: skip


def _audit(fed: Federation, name: str) -> subprocess.CompletedProcess[str]:
    bundle = fed.root / f"{name}.bundle"
    export = _cli("audit", "export", "--home", str(fed.coordinator_home), "--out", str(bundle))
    assert export.returncode == 0, export.stderr
    manifest = str(fed.auth / "manifest.json")
    return _cli("audit", "verify", str(bundle), "--manifest", manifest)


@pytest.mark.parametrize("mode", sorted(CASES))
def test_a_dishonest_answer_is_missing_and_the_release_goes_on(fed: Federation, mode: str) -> None:
    _dishonest(fed, mode)
    done = _ask(fed, CASES[mode], "json")
    assert done.returncode == 0, done.stderr
    release = json.loads(done.stdout)["release"]
    assert release["answered"] == sorted(n for n in NODES if n != BAD)
    assert release["missing"] == [BAD]
    assert release["missing_reasons"][BAD].startswith("its answer did not verify"), release
    # the province is the honest nodes' alone: no cell counts the dishonest county
    assert all(cell["nodes"] <= len(NODES) - 1 for cell in release["province"])
    shown = _ask(fed, CASES[mode], "table")  # the same query again: stored answers, no charge
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    assert "its answer did not verify" in shown.stdout
    audit = _audit(fed, mode)
    assert audit.returncode == 0, audit.stdout[-1000:] + audit.stderr[-1000:]


def test_a_nodes_display_text_reaches_the_terminal_printable_and_short(fed: Federation) -> None:
    _dishonest(fed, "display")
    done = _ask(fed, "0.26", "table")
    assert done.returncode == 0, done.stderr
    assert BAD in done.stdout  # its answer verified: the display text is its own business
    assert "\x1b" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) < 200
    fed.restart_node(BAD)
