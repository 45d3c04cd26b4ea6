"""SmartNoise SQL peer of ``scripts/bench_query.py``; runs inside its own virtual environment.

    VENV/bin/python scripts/smartnoise_peer.py --db NODE.db --metadata META.json \
        --epsilon 0.5 --delta 1e-9

SmartNoise SQL pins ``opendp<0.15`` while fedscreen needs ``opendp>=0.16``, so
this script never imports fedscreen: the benchmark creates a separate venv for
it and talks to it over pipes. It opens the node database read-only (the same
file and the same stored, contribution-bounded rows the node reads), builds one
``PrivateReader`` (metadata parsed once), then serves requests, one JSON object
per line on stdin, one JSON line on stdout::

    {"sql": "SELECT ... GROUP BY ..."}
      -> {"ms": 41.2, "rows": [[group..., noisy_count], ...], "tau": 55.3}
    {"cost": "SELECT ..."}
      -> {"epsilon": 0.5, "delta": 1e-09, "scales": [2.0]}

``ms`` is the wall time of ``reader.execute`` alone (parse, rewrite, the SQLite
query, noise, censoring of small groups), so pipe overhead is not counted.
The first line written is ``{"ready": true, "smartnoise_sql": VERSION, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import snsql


def scales(reader: Any, sql: str) -> list[float] | None:
    """Noise scales of the query's mechanisms (private SmartNoise API: None if it moved)."""
    try:
        subquery, _ = reader._rewrite(sql)
        mechanisms = reader._get_mechanisms(subquery)
        return [float(m.scale) for m in mechanisms if m is not None]
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True, help="SmartNoise metadata, JSON")
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--delta", type=float, required=True)
    parser.add_argument("--cache-kib", type=int, default=131_072)
    args = parser.parse_args()

    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    # the same page cache as a node connection (fedscreen.node.store.CACHE_KIB)
    conn.execute(f"PRAGMA cache_size=-{int(args.cache_kib)}")
    metadata = json.loads(args.metadata.read_text(encoding="utf-8"))
    privacy = snsql.Privacy(epsilon=args.epsilon, delta=args.delta)
    reader = snsql.from_connection(conn, privacy=privacy, metadata=metadata, engine="sqlite")

    out = sys.stdout
    out.write(
        json.dumps(
            {
                "ready": True,
                "smartnoise_sql": version("smartnoise-sql"),
                "opendp": version("opendp"),
                "python": sys.version.split()[0],
            }
        )
        + "\n"
    )
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply: dict[str, Any]
        try:
            if "cost" in request:
                epsilon, delta = reader.get_privacy_cost(request["cost"])
                reply = {
                    "epsilon": float(epsilon),
                    "delta": float(delta),
                    "scales": scales(reader, request["cost"]),
                }
            else:
                start = time.perf_counter()
                result = reader.execute(request["sql"])
                elapsed = time.perf_counter() - start
                # result[0] is the header row
                rows = [list(row) for row in result[1:]]
                reply = {"ms": elapsed * 1000, "rows": rows, "tau": getattr(reader, "tau", None)}
        except Exception as exc:  # report and keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
