"""``fedscreen synth``: write a synthetic county's screening export and school table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedscreen.synth import PROFILES, generate, write_export
from fedscreen.synth.writer import ENCODINGS, FORMATS, HEADERS


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` subcommand."""
    parser = sub.add_parser(
        "synth",
        help="write a synthetic county screening export and school table",
        description=(
            "Write DIR/screenings.<ext> (or one DIR/screenings_<school_id>.<ext> per school) "
            "and DIR/schools.<ext> for one county: realistic but entirely fake students, "
            "the same bytes for the same arguments."
        ),
    )
    parser.add_argument(
        "--county", default="130102", help="GB/T 2260 county code (default: %(default)s)"
    )
    parser.add_argument(
        "--students", type=int, default=2000, help="screening rows (default: %(default)s)"
    )
    parser.add_argument("--year", default="2024-2025", help="academic year (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--format", choices=FORMATS, default="csv", help="file format (default: %(default)s)"
    )
    parser.add_argument(
        "--encoding", choices=ENCODINGS, default="utf-8", help="CSV encoding (default: %(default)s)"
    )
    parser.add_argument(
        "--headers",
        choices=HEADERS,
        default="en",
        help="header and value language: en codes or zh labels (default: %(default)s)",
    )
    parser.add_argument("--per-school", action="store_true", help="one screening file per school")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="mixed",
        help="kind of county: "
        + "; ".join(f"{name}: {p.description}" for name, p in sorted(PROFILES.items())),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate and write the files; print a one-line summary."""
    started = time.perf_counter()
    county = generate(args.county, args.students, args.year, args.seed, args.profile)
    summary = write_export(
        county,
        args.out,
        fmt=args.format,
        encoding=args.encoding,
        headers=args.headers,
        per_school=args.per_school,
    )
    files = summary.screenings
    if len(files) == 1:
        where = files[0].path.name
    else:
        where = f"{len(files)} files screenings_<school_id>.{args.format}"
    elapsed = time.perf_counter() - started
    print(
        f"synth: county {county.code} {county.year}, {len(county.schools)} schools: "
        f"{summary.screening_rows} screening rows ({where}) and {summary.schools.rows} "
        f"school rows ({summary.schools.path.name}) in {args.out} ({elapsed:.1f} s)"
    )
    return 0
