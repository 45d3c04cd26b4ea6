"""``fedscreen query``: ask the federation, as an analyst, and verify what comes back.

Signs the query with the analyst identity in ``--home``, submits it to the
coordinator over mutual TLS, verifies the release against the analyst's own
manifest (the coordinator's signature, every node's signed answer, and that the
provincial figures are the combination of those answers), then prints each
node's cells, the province's, the ε each node charged, the nodes that did not
answer and the share of nodes covered.

``--release QUERY_ID`` asks for nothing new: it fetches the newest release of one of
the analyst's own queries (a later version once an offline node's answer came by
file), verifies it the same way (and that the query it answers is the analyst's own
signed query), and prints it with its version and the nodes still missing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from fedscreen.analyst.query import fetch_verified, make_query, verify_release
from fedscreen.cli.output import printable, table
from fedscreen.cli.sqltext import add_sql_arguments, read_sql
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.rpc.client import submit
from fedscreen.trust.identity import load_identity

#: longest display text of one cell shown (a formatted figure is far shorter)
MAX_DISPLAY_CHARS: Final = 40


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``query``."""
    query = sub.add_parser(
        "query",
        help="ask the federation a question (signed), get a verified release",
        description="SELECT <group columns>, COUNT(*) | SUM(col) | AVG(col) | RATE(<condition>) "
        "| QUANTILE(col, q) FROM screenings [WHERE ...] [GROUP BY ...]. Every node charges the "
        "ε (or the ε that reaches the accuracy) to its own budget. The SQL is the argument "
        "or --file F (- for standard input). --release QUERY_ID fetches the newest version "
        "of one of your queries' releases instead.",
    )
    query.add_argument("--home", type=Path, required=True, help="the analyst's identity home")
    query.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    query.add_argument(
        "--coordinator-id", help="its member id (default: the one coordinator in the manifest)"
    )
    # required unless --release (checked in run_query: argparse cannot say "unless")
    cost = query.add_mutually_exclusive_group()
    cost.add_argument("--epsilon", type=float, help="privacy cost ε at each node")
    cost.add_argument("--accuracy", type=float, help="95%% half-width wanted per noisy count")
    query.add_argument(
        "--nodes", help="comma-separated node ids to ask (default: every active node)"
    )
    query.add_argument(
        "--deadline-ms",
        type=int,
        default=0,
        help="how long the coordinator waits for nodes (default: its own, 10 s)",
    )
    query.add_argument(
        "--secure",
        action="store_true",
        help="a COUNT released only as the province total, through the two aggregators: each "
        "node secret-shares its exact cells, and the total carries two noise draws instead of "
        "one per node (no county value comes out; see the README's threat model)",
    )
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    # --release is a third source beside SQL and --file
    source = add_sql_arguments(query)
    source.add_argument(
        "--release",
        metavar="QUERY_ID",
        help="fetch and verify the newest release of your query QUERY_ID (a later version "
        "adds answers that came late, by file) instead of asking a new one",
    )
    query.set_defaults(func=run_query, usage_error=query.error)


def run_query(args: argparse.Namespace) -> int:
    """``fedscreen query``."""
    if args.release is not None:
        return run_fetch(args)
    if args.epsilon is None and args.accuracy is None:
        args.usage_error("one of the arguments --epsilon --accuracy is required")
    if args.deadline_ms < 0:
        raise ConfigError("--deadline-ms must be positive")
    nodes = tuple(n.strip() for n in (args.nodes or "").split(",") if n.strip())
    query, envelope = make_query(
        args.home,
        read_sql(args),
        epsilon=args.epsilon,
        accuracy=args.accuracy,
        nodes=nodes,
        secure=args.secure,
    )
    submitted = asyncio.run(
        submit(
            args.home,
            args.coordinator,
            envelope,
            coordinator_id=args.coordinator_id,
            deadline_ms=args.deadline_ms,
        )
    )
    manifest = load_identity(args.home).manifest()
    body = verify_release(
        submitted.release_envelope, manifest=manifest, query=query, answers=submitted.answers
    ).body
    if args.format == "json":
        print(json.dumps({"verified": True, "release": body}, ensure_ascii=False, indent=2))
    elif args.format == "csv":
        write_csv(body)
    else:
        print_release(body)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """``fedscreen query --release QUERY_ID``: the newest version of a release, verified."""
    asked = [f for f in ("epsilon", "accuracy", "nodes", "secure") if getattr(args, f)]
    if asked or args.deadline_ms:
        flags = ", ".join(
            f"--{f}" for f in [*asked, *(["deadline-ms"] if args.deadline_ms else [])]
        )
        raise ConfigError(f"--release fetches a release already made: {flags} ask a new query")
    fetched = asyncio.run(
        fetch_verified(
            args.home, args.coordinator, args.release, coordinator_id=args.coordinator_id
        )
    )
    release, body = fetched.verified.release, fetched.verified.body
    if args.format == "json":
        doc = {"verified": True, "release_version": release.release_version, "release": body}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    elif args.format == "csv":
        write_csv(body)
    else:
        print_release(body)
        print()
        print(version_line(release.release_version, release.supersedes))
        reasons = release.missing_reasons
        if release.missing:
            print(f"still missing ({len(release.missing)} of {len(release.targeted)} nodes):")
            for node in release.missing:
                why = printable(reasons.get(node, "(not stated)"), limit=300)
                print(f"  {printable(node)}: {why}")
        else:
            count = len(release.targeted)
            print(f"every node asked has answered ({count} of {count})")
    return 0


def version_line(version: int, supersedes: str | None) -> str:
    """ "release version 2, superseding an earlier version (release SHA-256 …)"."""
    if supersedes is None:
        return f"release version {version}"
    return (
        f"release version {version}, superseding an earlier version (release SHA-256 {supersedes})"
    )


def _interval(cell: dict[str, Any]) -> str:
    low, high = cell.get("lower"), cell.get("upper")
    if low is None or high is None:
        return ""
    return f"[{_num(low)}, {_num(high)}]"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _display(cell: dict[str, Any]) -> str:
    # a node's cells carry its own display text: shown printable and short, in CSV too
    return printable(cell.get("display", cell.get("value")), limit=MAX_DISPLAY_CHARS)


def _population(population: dict[str, Any] | None) -> str:
    """ ", 96% of the eligible students" from the release's public population figures."""
    if not population or population.get("share") is None:
        return ""
    text = (
        f", {population['share']:.0%} of the {population['eligible_targeted']:,} eligible students"
    )
    if population["unknown"]:
        unknown = printable(", ".join(population["unknown"]))
        text += f" of the nodes with school tables; unknown: {unknown}"
    return text


def print_release(body: dict[str, Any], *, out: Any = None) -> None:
    """Print a verified release as tables; VerificationError (nothing printed) if its
    shape cannot be shown.

    The text is built whole first, so a release that cannot be shown prints nothing
    rather than half its tables and a traceback.
    """
    text = io.StringIO()
    try:
        _write_release(body, text)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise VerificationError(
            f"the release cannot be shown: {printable(exc, limit=200)}"
        ) from None
    (out or sys.stdout).write(text.getvalue())


def _write_release(body: dict[str, Any], stream: io.StringIO) -> None:
    query = body["query"]
    groups: Sequence[str] = query["group_by"]
    targeted, answered, missing = body["targeted"], body["answered"], body["missing"]
    years = printable(", ".join(query["years"]) or body.get("academic_year") or "no year stated")
    stream.write(
        f"release of query {printable(body['query_id'])} by {printable(body['analyst'])} "
        f"(verified: coordinator {printable(body['coordinator'])} and every node signature)\n"
        f"{query['measure']['kind']} over {query['dataset']}, {years}; "
        f"95% intervals; cells below {body['threshold']} shown as '< {body['threshold']}'\n"
        f"answered: {len(answered)} of {len(targeted)} nodes "
        f"({body['coverage']:.0%} of the nodes asked"
        + _population(body.get("population"))
        + ")"
        + (f"; did not answer: {printable(', '.join(missing))}" if missing else "")
        + "\n\n"
        + _province_heading(body.get("secure"))
    )
    table(
        [*groups, "value", "95% interval", "nodes"],
        [
            [*cell["group"], _display(cell), _interval(cell), cell.get("nodes", "")]
            for cell in body["province"]
        ],
        out=stream,
    )
    if body.get("secure") is not None:
        stream.write("\nBy node: none (a secure query releases no county value)\n")
    else:
        stream.write("\nBy node\n")
    table(
        ["node", *groups, "value", "95% interval"],
        [
            [node, *cell["group"], _display(cell), _interval(cell)]
            for node in answered
            for cell in body["per_node"][node]
            if body.get("secure") is None
        ],
        out=stream,
    )
    stream.write("\nPrivacy budget charged\n")
    table(
        ["node", "ε", "log index"],
        [[a["node_id"], _num(a["epsilon"]), a["log_index"]] for a in body["answers"]]
        + [[node, "(no answer)", ""] for node in missing],
        out=stream,
    )
    if missing:
        # releases made before missing_reasons existed name the nodes only
        reasons = body.get("missing_reasons") or {}
        stream.write("\nDid not answer\n")
        table(
            ["node", "why"],
            [[node, reasons.get(node, "(not stated)")] for node in missing],
            out=stream,
        )


def _province_heading(secure: dict[str, Any] | None) -> str:
    if secure is None:
        return "Province (combined)\n"
    first, second = (printable(a) for a in secure["aggregators"])
    if secure["failure"] is not None:
        return (
            f"Province (secure aggregation by {first} and {second}): no figures, "
            f"{printable(secure['failure'], limit=300)}\n"
        )
    return (
        f"Province (secure aggregation: the sum of {first}'s and {second}'s partials, "
        "two noise draws in all; both signatures and node lists verified)\n"
    )


def write_csv(body: dict[str, Any], *, out: Any = None) -> None:
    """Write every cell of a verified release as CSV: province first, then each node."""
    writer = csv.writer(out or sys.stdout)
    groups = body["query"]["group_by"]
    writer.writerow(["scope", *groups, "value", "display", "lower", "upper"])
    for cell in body["province"]:
        writer.writerow(
            ["province", *cell["group"], cell.get("value"), _display(cell),
             cell.get("lower"), cell.get("upper")]
        )  # fmt: skip
    for node in body["answered"] if body.get("secure") is None else ():
        for cell in body["per_node"][node]:
            writer.writerow(
                [node, *cell["group"], cell.get("value"), _display(cell),
                 cell.get("lower"), cell.get("upper")]
            )  # fmt: skip
