"""Synthetic data per node kind: a university's own freshmen and school-table row, one
school of a county, a county without its university or its own-node schools."""

from __future__ import annotations

import csv
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.screening.instruments import instruments
from fedscreen.synth import County, generate, generate_university, write_export

KEYS = [c.key for c in exports.SCREENING_COLUMNS]
SCHOOL_KEYS = [c.key for c in exports.SCHOOL_COLUMNS]
YEAR = "2024-2025"


def _column(county: County, key: str) -> list[str | int]:
    at = KEYS.index(key)
    return [row[at] for row in county.screenings()]


@cache
def _freshmen(seed: int) -> County:
    return generate_university("10075", "130602", 20_000, YEAR, seed)


def test_a_university_is_deterministic_and_its_own() -> None:
    a = generate_university("10075", "130602", 500, YEAR, seed=4)
    assert list(a.screenings()) == list(
        generate_university("10075", "130602", 500, YEAR, seed=4).screenings()
    )
    assert list(a.school_table()) == list(
        generate_university("10075", "130602", 500, YEAR, seed=4).school_table()
    )
    # another university in the same county, same seed: other students
    other = generate_university("10082", "130602", 500, YEAR, seed=4)
    assert set(_column(a, "student_no")).isdisjoint(_column(other, "student_no"))
    assert list(a.screenings()) != list(
        generate_university("10075", "130602", 500, YEAR, 5).screenings()
    )


def test_a_universitys_rows_are_freshmen_of_its_campus() -> None:
    u = generate_university("10075", "130602", 2000, YEAR, seed=1)
    assert u.students == 2000
    for key, value in (
        ("grade", "U1"), ("school_type", "university"), ("school_id", "10075"),
        ("county_code", "130602"), ("left_behind", "no"),
    ):  # fmt: skip
        assert set(_column(u, key)) == {value}
    assert set(_column(u, "mht_items")) == {""}


def test_a_universitys_school_row_states_enrolment_and_the_ratio_rule() -> None:
    for seed in range(1, 21):
        u = generate_university("10075", "130602", 3000, YEAR, seed)
        (row,) = [dict(zip(SCHOOL_KEYS, r, strict=True)) for r in u.school_table()]
        enrolled = int(row["enrolled_male"]) + int(row["enrolled_female"])
        assert row["eligible"] == 3000  # the freshmen are the ones screened
        assert 3.6 * 3000 <= enrolled <= 4.4 * 3000
        need = max(2, -(-enrolled // 4000))
        assert need - 2 <= int(row["ft_teachers"]) <= need
        assert int(row["ft_teachers"]) >= 1
        assert row["school_type"] == "university"


@pytest.mark.parametrize("seed", [1, 2])
def test_university_upi_rates_follow_domain(seed: int) -> None:
    # DOMAIN: UPI class I 8%, class II 10%, item 25 yes 1%; PHQ-9 >= 10 about 14%
    upi = instruments()["upi"]
    u = _freshmen(seed)
    at = {k: KEYS.index(k) for k in ("participation", "upi_items", "phq9_total")}
    screened = [r for r in u.screenings() if r[at["participation"]] == "screened"]
    scores = [upi.score(str(r[at["upi_items"]])) for r in screened]
    n = len(scores)
    assert n > 19_000
    bands = Counter(s.band for s in scores)
    assert bands["I"] / n == pytest.approx(0.08, abs=0.015)
    assert bands["II"] / n == pytest.approx(0.10, abs=0.015)
    assert sum(bool(s.flags["item25"]) for s in scores) / n == pytest.approx(0.01, abs=0.004)
    phq = sum(int(r[at["phq9_total"]]) >= 10 for r in screened) / n
    assert phq == pytest.approx(0.14, abs=0.03)


def test_one_school_is_that_school_of_the_county() -> None:
    county = generate("130102", 3000, YEAR, seed=2)
    school = county.schools[2]
    mine = county.only(school.school_id)
    assert list(mine.screenings()) == list(county.screenings(school))
    rest = county.without([school.school_id])
    assert sorted(list(rest.screenings()) + list(mine.screenings())) == sorted(county.screenings())
    with pytest.raises(ConfigError, match="school '999' is not one of county 130102's"):
        county.only("999")
    with pytest.raises(ConfigError, match="not schools of county 130102: 999"):
        county.without(["999"])


def test_a_county_without_universities_keeps_every_other_school() -> None:
    whole = generate("130102", 3000, YEAR, seed=1, profile="urban")
    assert any(s.school_type == "university" for s in whole.schools)
    bare = generate("130102", 3000, YEAR, seed=1, profile="urban", universities=False)
    assert all(s.school_type != "university" for s in bare.schools)
    kept = [s for s in whole.schools if s.school_type != "university"]
    assert bare.schools == tuple(kept)
    assert list(bare.screenings()) == [
        row for row in whole.screenings() if row[KEYS.index("school_type")] != "university"
    ]


def test_synth_cli_per_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth", "--year", YEAR, "--seed", "3"]
    assert main([*args, "--kind", "university", "--id", "10075", "--county", "130602",
                 "--students", "40", "--out", str(tmp_path / "u")]) == 0  # fmt: skip
    assert "university 10075 (campus in 130602)" in capsys.readouterr().out
    with (tmp_path / "u" / "screenings.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert {r["grade"] for r in rows} == {"U1"}
    write_export(generate("130102", 500, YEAR, seed=3), tmp_path / "c")
    with (tmp_path / "c" / "schools.csv").open(encoding="utf-8") as f:
        first = next(csv.DictReader(f))["school_id"]
    assert main([*args, "--kind", "school", "--school", first, "--students", "500",
                 "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    with (tmp_path / "s" / "screenings.csv").open(encoding="utf-8") as f:
        assert {r["school_id"] for r in csv.DictReader(f)} == {first}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "university"], "--kind university needs --id"),
        (["--kind", "school"], "--kind school needs --school"),
        (["--id", "10075"], "--id: not an option of --kind county"),
        (["--kind", "university", "--id", "10075", "--no-universities"], "--no-universities"),
        (["--kind", "school", "--school", "x", "--without-school", "y"], "--without-school"),
    ],
)
def test_synth_cli_refuses_options_that_do_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["synth", "--out", str(tmp_path / "x"), *extra]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
