"""``fedscreen synth``: write a synthetic screening export and school table for a county's,
a university's or a school's node."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedscreen.errors import ConfigError
from fedscreen.synth import PROFILES, County, generate, generate_university, write_export
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
        "--kind",
        choices=("county", "university", "school"),
        default="county",
        help="whose node the data is for: a county's (the default), a university's "
        "(--id: its freshmen) or one school's (--school: that school of the county)",
    )
    parser.add_argument(
        "--county",
        default="130102",
        help="GB/T 2260 county code (a university: where its campus is registered; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--students",
        type=int,
        default=2000,
        help="screening rows (a university: its freshmen; a school: the whole county's, "
        "of which the school is one; default: %(default)s)",
    )
    parser.add_argument("--id", help="--kind university: the university's code, e.g. 10075")
    parser.add_argument(
        "--school", help="--kind school: the school_id of the county's school to write"
    )
    parser.add_argument(
        "--without-school",
        action="append",
        default=[],
        metavar="ID",
        help="--kind county: leave out a school that runs its own node (repeatable)",
    )
    parser.add_argument(
        "--no-universities",
        action="store_true",
        help="--kind county: no university among the county's schools (they run their own nodes)",
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
    county = _plan(args)
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
    whose = {
        "county": f"county {county.code}",
        "university": f"university {args.id} (campus in {county.code})",
        "school": f"school {args.school} of county {county.code}",
    }[args.kind]
    print(
        f"synth: {whose} {county.year}, {len(county.schools)} schools: "
        f"{summary.screening_rows} screening rows ({where}) and {summary.schools.rows} "
        f"school rows ({summary.schools.path.name}) in {args.out} ({elapsed:.1f} s)"
    )
    return 0


def _plan(args: argparse.Namespace) -> County:
    """The county, university or school the arguments ask for; ConfigError for an option
    that does not fit the kind."""
    kind = args.kind
    misplaced = [
        option
        for option, given, fits in (
            ("--id", args.id, "university"),
            ("--school", args.school, "school"),
            ("--without-school", args.without_school, "county"),
            ("--no-universities", args.no_universities, "county"),
        )
        if given and kind != fits
    ]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)}: not an option of --kind {kind}")
    if kind == "university":
        if not args.id:
            raise ConfigError("--kind university needs --id (the university's code)")
        return generate_university(args.id, args.county, args.students, args.year, args.seed)
    county = generate(
        args.county,
        args.students,
        args.year,
        args.seed,
        args.profile,
        universities=not args.no_universities,
    )
    if kind == "school":
        if not args.school:
            raise ConfigError("--kind school needs --school (one of the county's school ids)")
        return county.only(args.school)
    return county.without(args.without_school) if args.without_school else county
