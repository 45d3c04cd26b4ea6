"""Issue 12, the command line: a closed pipe ends a command quietly; messages say what is meant.

The pipe tests run the real ``fedscreen`` in a subprocess: once into ``head -1`` as a
user would, once into a pipe whose reader is already gone (every write fails with
EPIPE, so the broken pipe is certain, whatever the timing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedscreen.cli.main import BROKEN_PIPE_EXIT
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, QueryRefused, UnknownMember
from fedscreen.node import ledger, store
from fedscreen.node.home import NodeConfig
from fedscreen.trust.certs import validate_member_fields
from fedscreen.trust.manifest import Manifest, Member, a_role, show_id

ROOT = Path(__file__).resolve().parents[3]
PLAN = ROOT / "policies" / "reports" / "annual.toml"
FEDSCREEN = [sys.executable, "-m", "fedscreen.cli.main"]
COMMANDS = [
    ["report", "plan", str(PLAN)],  # a table of 28 queries
    ["synth", "--help"],  # argparse prints, then exits
    ["--version"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_output_into_head_ends_cleanly(command: list[str]) -> None:
    fedscreen = subprocess.Popen(
        [*FEDSCREEN, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert fedscreen.stdout is not None
    assert fedscreen.stderr is not None
    head = subprocess.run(
        ["head", "-1"], stdin=fedscreen.stdout, capture_output=True, timeout=60, check=True
    )
    fedscreen.stdout.close()
    errors = fedscreen.stderr.read().decode()
    fedscreen.stderr.close()
    assert fedscreen.wait(timeout=60) in (0, BROKEN_PIPE_EXIT)
    assert head.stdout.strip()
    assert "Traceback" not in errors, errors
    assert "BrokenPipeError" not in errors, errors


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_output_into_a_closed_pipe_exits_quietly(command: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [*FEDSCREEN, *command], stdout=write, capture_output=False, stderr=subprocess.PIPE,
            cwd=ROOT, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.stderr.decode() == ""
    # argparse swallows the failed write of its help text itself and exits 0
    assert done.returncode in (0, BROKEN_PIPE_EXIT)
    if command[0] == "report":
        assert done.returncode == BROKEN_PIPE_EXIT


# ---------------------------------------------------------------- messages


def test_roles_take_their_article() -> None:
    assert [a_role(r) for r in ("node", "coordinator", "analyst", "auditor")] == [
        "a node", "a coordinator", "an analyst", "an auditor",
    ]  # fmt: skip
    manifest = Manifest(
        federation="f",
        version=1,
        issued_at="",
        authority_key=SigningKey(bytes(32)).public_key,
        members=(
            Member("alice", "analyst", "A", SigningKey(bytes([1] * 32)).public_key, ""),
            Member("eve", "auditor", "E", SigningKey(bytes([2] * 32)).public_key, ""),
        ),
    )
    with pytest.raises(UnknownMember, match="'alice' is an analyst, not a node"):
        manifest.member("alice", role="node")
    with pytest.raises(UnknownMember, match="'eve' is an auditor, not an analyst"):
        manifest.member("eve", role="analyst")
    with pytest.raises(UnknownMember) as refused:
        manifest.member("130102\u200b")
    assert "'130102\\u200b' (U+200B) is not an active member" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("130102", "'130102'"),
        ("130102\u200b", "'130102\\u200b' (U+200B)"),
        ("１30102", "'１30102' (U+FF11)"),
        ("hеbei", "'hеbei' (U+0435)"),  # a Cyrillic e
        ("\u00a0x\u00a0", "'\\xa0x\\xa0' (U+00A0)"),
        ("a\tb", "'a\\tb' (U+0009)"),
        (130102, "130102"),
        ("".join(chr(0x2000 + i) for i in range(12)), None),
    ],
)
def test_identifiers_show_their_unusual_code_points(value: object, shown: str | None) -> None:
    if shown is None:
        assert show_id(value).endswith("U+2007 …)")
    else:
        assert show_id(value) == shown


def test_a_refused_member_id_is_shown_by_code_point() -> None:
    with pytest.raises(ConfigError, match=r"'130102\\u200b' \(U\+200B\)"):
        validate_member_fields(member_id="130102\u200b", role="node", name="x", level="")


def test_the_approval_hint_names_the_home(node_home: NodeConfig) -> None:
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(QueryRefused) as refused:
            ledger.require_approval(
                conn, request_key="k", analyst="alice", spec="{}", cost_micro=400_000,
                at="2025-01-01T00:00:00Z",
            )  # fmt: skip
    finally:
        conn.close()
    assert "fedscreen node approve --home HOME --id 1" in str(refused.value)
