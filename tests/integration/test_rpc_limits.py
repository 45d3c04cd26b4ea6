"""Bad requests to a real coordinator process cost nothing lasting (issue 12).

Runs ``scripts/bench_rpc_memory.py`` at a smaller size: a real ``fedscreen
coordinator serve`` on 127.0.0.1, four real mutual-TLS analysts sending oversized
and malformed requests concurrently; every one is refused with the right status
and the coordinator's RSS stays within the bound.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedscreen.rpc.guard import PeerLog, RequestLimits, peer_host

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench_rpc_memory.py"
#: bound on the whole benchmark run (s)
BENCH_TIMEOUT_S = 240


@pytest.mark.slow
def test_refused_requests_leave_no_memory_behind() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--requests", "200", "--clients", "4", "--json"],
        capture_output=True, text=True, env=env, timeout=BENCH_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    codes = {row["kind"]: row["codes"] for row in result["rows"]}
    assert codes == {
        "oversized submit": {"RESOURCE_EXHAUSTED": 200},
        "malformed protobuf": {"INVALID_ARGUMENT": 200},
        "malformed envelope": {"INVALID_ARGUMENT": 200},
        "oversized budgets": {"RESOURCE_EXHAUSTED": 200},
    }
    assert result["growth_mib"] <= result["bound_mib"] == 50, result
    assert done.returncode == 0


def test_each_method_has_its_own_limit() -> None:
    limits = RequestLimits()
    assert limits.of("/fedscreen.v1.Analyst/Submit") == 64 * 1024
    assert limits.of("/fedscreen.v1.NodeLink/Connect") == 4 * 1024 * 1024
    for method in ("/fedscreen.v1.Analyst/Budgets", "/fedscreen.v1.Analyst/Status",
                   "/fedscreen.v1.Audit/GetEntries", "/grpc.health.v1.Health/Check"):  # fmt: skip
        assert limits.of(method) == 4 * 1024
    assert limits.largest == 4 * 1024 * 1024
    with pytest.raises(ValueError, match="positive"):
        RequestLimits(submit_bytes=0)


def test_peer_log_writes_one_line_per_peer_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    log = PeerLog(logging.getLogger("test.peers"), interval_s=60, max_peers=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.peers"):
        assert log.warning("ipv4:10.0.0.7:5000", "refused")
        for port in range(5001, 5011):  # every new connection has a new port: same peer
            assert not log.warning(f"ipv4:10.0.0.7:{port}", "refused")
        assert log.warning("ipv6:[::1]:6000", "refused")
        now[0] += 61
        assert log.warning("ipv4:10.0.0.7:5999", "refused")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "peer 10.0.0.7: refused",
        "peer [::1]: refused",
        "peer 10.0.0.7: refused (and 10 more from this peer in the last 61 s)",
    ]
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
