"""The node database's views: a database made before a view gained a column is brought up
to date when opened, without touching any row."""

from __future__ import annotations

from pathlib import Path

from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export


def _view_columns(config: NodeConfig) -> set[str]:
    conn = store.connect(config.database)
    try:
        return {row[1] for row in conn.execute("PRAGMA table_info(screenings)")}
    finally:
        conn.close()


def test_an_older_screenings_view_gains_the_city(node_home: NodeConfig, tmp_path: Path) -> None:
    write_export(generate("130102", 40, "2024-2025", seed=5), tmp_path / "export")
    _, rejected = ingest_paths(node_home, [tmp_path / "export"])
    assert not rejected
    conn = store.connect(node_home.database)
    try:
        old = [c for c in store.view_columns() if c not in store.DERIVED_COLUMNS]
        conn.execute("DROP VIEW screenings")
        conn.execute(
            f"CREATE VIEW screenings AS SELECT {', '.join(old)} FROM screening WHERE bounded = 1"
        )
        conn.commit()
        rows = conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0]
    finally:
        conn.close()
    assert "city_code" in _view_columns(node_home)  # connect brought it up to date
    conn = store.connect(node_home.database)
    try:
        cities = conn.execute("SELECT DISTINCT city_code FROM screenings").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0] == rows
    finally:
        conn.close()
    assert cities == [("1301",)]
    assert set(store.view_columns()) == _view_columns(node_home)
