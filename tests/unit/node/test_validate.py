"""Each validation rule, shown by a file that breaks exactly that rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from exportrows import SCREENING_KEYS, school_row, screening_row, write_csv

from fedscreen.errors import IngestError
from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_file

MHT_VALID = "0" * 90 + "1" * 3 + "0" * 7

SCREENING_CASES = [
    ({"student_no": ""}, "student_no", "required value missing"),
    ({"student_no": "G12-34"}, "student_no", "6-32 letters or digits"),
    ({"county_code": "130104"}, "county_code", "not this node's county 130102"),
    ({"school_id": "x"}, "school_id", "not a school code"),
    ({"school_type": "kindergarten"}, "school_type", "is not one of"),
    ({"location": "moon"}, "location", "is not one of"),
    ({"grade": "P3"}, "grade", "is not one of"),
    ({"grade": "J7"}, "grade", "J7 is not taught at a senior school"),
    ({"class_id": ""}, "class_id", "required"),
    ({"sex": "X"}, "sex", "is not one of"),
    ({"age": "abc"}, "age", "not a whole number"),
    ({"age": "45"}, "age", "outside 8..30"),
    ({"age": "9"}, "age", "implausible for grade S10"),
    ({"boarding": "maybe"}, "boarding", "is not yes/no"),
    ({"left_behind": ""}, "left_behind", "required value missing"),
    ({"academic_year": "2024-2026"}, "academic_year", "not an academic year"),
    ({"participation": "sick"}, "participation", "is not one of"),
    ({"screening_date": "2024/10/08"}, "screening_date", "not a date"),
    ({"screening_date": "2024-08-01"}, "screening_date", "outside 2024-09-01"),
    ({"screening_date": ""}, "screening_date", "required for a screened student"),
    ({"consent": "no"}, "consent", "must have consent"),
    ({"mode": "telepathy"}, "mode", "is not one of"),
    ({"phq9_items": "01210012"}, "phq9_items", "9 answers expected, got 8"),
    ({"phq9_items": "012100124"}, "phq9_items", "answer '4' outside 0..3"),
    ({"phq9_total": "9"}, "phq9_total", "does not match the items' total 7"),
    ({"phq9_items": "", "phq9_total": ""}, "phq9_items", "PHQ-9 answers required for senior"),
    ({"gad7_items": "0110012", "gad7_total": "3"}, "gad7_total", "does not match"),
    ({"mht_items": "01" * 50}, "mht_total", "does not match"),
    ({"mht_items": "2" * 100}, "mht_items", "outside 0..1"),
    ({"upi_items": "", "upi_total": "5"}, "upi_total", "without item answers"),
    ({"risk_factors": "academic;aliens"}, "risk_factors", "a value of 6 characters is not one of"),
    ({"warning_level": "purple"}, "warning_level", "is not one of"),
    ({"warning_level": "red", "warning_status": "none"}, "warning_status", "does not fit"),
    ({"interview_date": "2024-10-01"}, "interview_date", "outside 2024-10-08"),
    ({"referred": "no", "referral_visited": "yes"}, "referral_visited", "needs a referral"),
    ({"plan_status": "active"}, "plan_status", "needs a warning level"),
    ({"followups_scheduled": "1", "followups_done": "2"}, "followups_done", "only 1 scheduled"),
    ({"followups_done": "-1"}, "followups_done", "outside 0..366"),
    (
        {"participation": "absent", "screening_date": "", "mode": ""},
        "phq9_items",
        "must be empty for a student not screened",
    ),
    (
        {
            "participation": "refused",
            "phq9_items": "",
            "phq9_total": "",
            "gad7_items": "",
            "gad7_total": "",
            "mht_items": "",
            "mht_total": "",
        },
        "screening_date",
        "must be empty when participation is refused",
    ),
]


def _count(config: NodeConfig) -> int:
    conn = store.connect(config.database)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(("overrides", "column", "reason"), SCREENING_CASES)
def test_each_screening_rule_rejects_the_whole_file(
    node_home: NodeConfig, tmp_path: Path, overrides: dict[str, str], column: str, reason: str
) -> None:
    rows = [screening_row(n) for n in range(1, 6)]
    rows[2] = screening_row(3, **overrides)
    path = write_csv(tmp_path / "bad.csv", rows)
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_file(conn, node_home, path)
    finally:
        conn.close()
    messages = [str(p) for p in caught.value.problems]
    assert any(m.startswith(f"{path}:4: {column}: ") and reason in m for m in messages), messages
    assert _count(node_home) == 0  # nothing of the file, not even the good rows


SCHOOL_CASES = [
    ({"enrolled_male": "x"}, "enrolled_male", "not a whole number"),
    ({"eligible": "999"}, "eligible", "only 410 enrolled"),
    ({"counselling_room": "perhaps"}, "counselling_room", "yes/no"),
    ({"grade": "U1"}, "grade", "not taught at a senior school"),
    ({"ft_teachers": "5"}, "school_id", "differ from an earlier row"),
    ({"grade": "S10"}, "grade", "same school and grade as line 2"),
]


@pytest.mark.parametrize(("overrides", "column", "reason"), SCHOOL_CASES)
def test_each_school_rule(
    node_home: NodeConfig, tmp_path: Path, overrides: dict[str, str], column: str, reason: str
) -> None:
    rows = [school_row(grade="S10"), school_row(**{"grade": "S11", **overrides})]
    path = write_csv(tmp_path / "schools.csv", rows)
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_file(conn, node_home, path)
        assert conn.execute("SELECT COUNT(*) FROM school_grade").fetchone()[0] == 0
    finally:
        conn.close()
    messages = [str(p) for p in caught.value.problems]
    assert any(f":3: {column}: " in m and reason in m for m in messages), messages


def test_header_problems_are_reported_on_line_1(node_home: NodeConfig, tmp_path: Path) -> None:
    keys = [k for k in SCREENING_KEYS if k != "sex"] + ["favourite_colour"]
    path = write_csv(tmp_path / "h.csv", [screening_row(1)], keys=keys)
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_file(conn, node_home, path)
    finally:
        conn.close()
    text = str(caught.value)
    assert f"{path}:1: favourite_colour: unknown column" in text
    assert f"{path}:1: sex: required column missing (性别)" in text


def test_duplicate_student_in_a_file(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup.csv", [screening_row(1), screening_row(2), screening_row(1)])
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError, match=r"dup.csv:4: student_no: same student as line 2"):
            ingest_file(conn, node_home, path)
    finally:
        conn.close()


def test_problem_list_is_capped_and_counted(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = [screening_row(n, sex="?") for n in range(1, 121)]
    path = write_csv(tmp_path / "many.csv", rows)
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_file(conn, node_home, path)
    finally:
        conn.close()
    assert len(caught.value.problems) == 50
    assert caught.value.total == 120
    assert "... and 70 more problems" in str(caught.value)


def test_mixed_years_in_one_file(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = [
        screening_row(1),
        screening_row(2, academic_year="2023-2024", screening_date="2023-10-08"),
    ]
    path = write_csv(tmp_path / "years.csv", rows)
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(IngestError, match=r"years.csv:3: academic_year: 2023-2024 differs"):
            ingest_file(conn, node_home, path)
    finally:
        conn.close()


def test_identifiers_never_reach_the_database(node_home: NodeConfig, tmp_path: Path) -> None:
    row = screening_row(
        7, name="李四", id_number="130102200801017777", guardian_phone="13912345678"
    )
    path = write_csv(tmp_path / "ok.csv", [row])
    conn = store.connect(node_home.database)
    try:
        ingest_file(conn, node_home, path)
    finally:
        conn.close()
    conn.close()
    for suffix in ("", "-wal"):
        raw = Path(f"{node_home.database}{suffix}")
        if raw.exists():
            data = raw.read_bytes()
            for needle in (row["student_no"], "李四", "130102200801017777", "13912345678"):
                assert needle.encode() not in data
