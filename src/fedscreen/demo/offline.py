"""The demo's air-gapped node: its queries go by file, and the report takes its answers late.

The university's node runs on a counselling centre's machine with no network path,
so the province report is first made without it (its queries queued at the
coordinator). Then, as a county officer would by hand: the coordinator writes the
node's outbox, the node answers it offline, the answer file goes back, the
coordinator imports it (each late answer a new version of its query's release), and
the analyst regenerates the report from the newest versions (``report run
--include-late``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fedscreen._util.files import write_new_file
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.inbox import import_answers
from fedscreen.coordinator.offline import make_outbox
from fedscreen.demo.members import Members
from fedscreen.node.offline import answer_outbox
from fedscreen.policy import Policy
from fedscreen.report.late import include_late
from fedscreen.report.plan import ReportPlan

__all__ = ["carry_by_file"]


def carry_by_file(
    homes: Members,
    node_id: str,
    address: str,
    plan: ReportPlan,
    report_dir: Path,
    *,
    policy: Policy,
    work: Path,
    say: Callable[[str], None],
) -> None:
    """Outbox → the offline node → answer file → inbox, then the report again."""
    outbox, answers = work / f"{node_id}-outbox.json", work / f"{node_id}-answers.json"
    core = Coordinator.open(homes.coordinator)  # beside the running server: SQLite serialises
    try:
        data, count = make_outbox(core, node_id)
        write_new_file(outbox, data, mode=0o644, what="outbox")
        say(f"   the province writes {outbox.name}: {count} queued queries, signed ({_kb(data)})")
        done = answer_outbox(homes.nodes[node_id], data, answers)
        reply = answers.read_bytes()
        why = Counter(reason.split(":", 1)[0] for _, reason in done.refused)
        refused = ", ".join(f"{code}: {n}" for code, n in sorted(why.items()))
        say(
            f"   node {node_id} answers it offline: {len(done.answered)} answered, "
            f"{len(done.refused)} refused{f' ({refused})' if refused else ''}, "
            f"ε spent {done.epsilon_spent:g}; {answers.name} ({_kb(reply)})"
        )
        imported = import_answers(core, reply)
    finally:
        core.close()
    say(
        f"   the coordinator imports it: {len(imported.released)} new release versions "
        "(each a release of the same query with the late answer, or saying why it refused)"
    )
    say("   the analyst regenerates the report from the newest versions (--include-late):")
    updates = include_late(
        homes.analyst, address, plan, report_dir, policy=policy, say=lambda _: None
    )
    later = [u for u in updates if u.after != u.before]
    say(f"   {len(later)} of {len(updates)} releases replaced by a later version; report verified")


def _kb(data: bytes) -> str:
    return f"{len(data) / 1024:.0f} KiB"
