"""The export files schools send to their county node: columns, header names and vocabularies.

Two kinds of file are accepted:

* a **screening export**: one row per student per screening, with the student's
  direct identifiers (dropped at ingest), school and class, demographics,
  instrument item answers and the follow-up record;
* a **school table**: one row per school and grade, with enrolment, the number of
  students eligible for screening and the school's staffing.

Every column has an English key (also its English header) and a Chinese header;
every coded value has an English code and a Chinese label, and files may use
either. The synthetic generator writes these files and the node's ingest reads
them, so both sides share the definitions below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Column:
    """One column of an export file."""

    key: str
    zh: str
    required: bool = True
    #: a direct identifier: read, used (student number -> keyed hash) or dropped, never stored
    identifier: bool = False


# --- vocabularies: code -> Chinese label ------------------------------------------------

SCHOOL_TYPES: Final = {
    "primary": "小学",
    "junior": "初中",
    "senior": "高中",
    "nine_year": "九年一贯制",
    "complete_secondary": "完全中学",
    "vocational": "中职",
    "university": "高校",
}
LOCATIONS: Final = {"urban": "城区", "town": "镇区", "rural": "乡村"}
SEXES: Final = {"M": "男", "F": "女"}
YES_NO: Final = {"yes": "是", "no": "否"}
PARTICIPATION: Final = {"screened": "已筛查", "absent": "缺席", "refused": "拒绝"}
MODES: Final = {"online": "线上", "paper": "纸质"}
WARNING_LEVELS: Final = {"none": "无", "yellow": "黄", "orange": "橙", "red": "红"}
WARNING_STATUSES: Final = {"none": "无", "open": "在册", "closed": "已解除"}
PLAN_STATUSES: Final = {"none": "无", "active": "进行中", "closed": "已结案"}
RISK_FACTORS: Final = {
    "academic": "学业",
    "employment": "就业",
    "economic": "经济",
    "emotional": "情感危机",
    "family": "家庭变故",
    "bullying": "欺凌",
    "other": "其他",
}
GRADES: Final = {
    "P4": "四年级",
    "P5": "五年级",
    "P6": "六年级",
    "J7": "七年级",
    "J8": "八年级",
    "J9": "九年级",
    "S10": "高一",
    "S11": "高二",
    "S12": "高三",
    "V1": "中职一年级",
    "V2": "中职二年级",
    "V3": "中职三年级",
    "U1": "大一",
}
GRADE_BAND: Final = {
    "P4": "upper_primary",
    "P5": "upper_primary",
    "P6": "upper_primary",
    "J7": "junior",
    "J8": "junior",
    "J9": "junior",
    "S10": "senior",
    "S11": "senior",
    "S12": "senior",
    "V1": "vocational",
    "V2": "vocational",
    "V3": "vocational",
    "U1": "university",
}
GRADE_BANDS: Final = ("upper_primary", "junior", "senior", "vocational", "university")
#: which grades each school type teaches (a screening row's grade must fit its school)
SCHOOL_GRADES: Final = {
    "primary": ("P4", "P5", "P6"),
    "junior": ("J7", "J8", "J9"),
    "senior": ("S10", "S11", "S12"),
    "nine_year": ("P4", "P5", "P6", "J7", "J8", "J9"),
    "complete_secondary": ("J7", "J8", "J9", "S10", "S11", "S12"),
    "vocational": ("V1", "V2", "V3"),
    "university": ("U1",),
}
#: instruments a screened student of each grade band must have answered
BAND_INSTRUMENTS: Final = {
    "upper_primary": ("mht",),
    "junior": ("phq9", "gad7", "mht"),
    "senior": ("phq9", "gad7", "mht"),
    "vocational": ("phq9", "gad7", "mht"),
    "university": ("phq9", "gad7", "upi"),
}
INSTRUMENTS: Final = ("phq9", "gad7", "mht", "upi")
#: age bands released instead of ages; (label, lowest age, highest age)
AGE_BANDS: Final = (
    ("8-10", 8, 10),
    ("11-12", 11, 12),
    ("13-15", 13, 15),
    ("16-18", 16, 18),
    ("19+", 19, 30),
)
MIN_AGE: Final = 8
MAX_AGE: Final = 30


def age_band(age: int) -> str:
    """The released age band of an age in years (MIN_AGE..MAX_AGE)."""
    for label, low, high in AGE_BANDS:
        if low <= age <= high:
            return label
    raise ValueError(f"age {age} outside {MIN_AGE}..{MAX_AGE}")


# --- the screening export ---------------------------------------------------------------

SCREENING_COLUMNS: Final = (
    Column("student_no", "学籍号", identifier=True),
    Column("name", "姓名", required=False, identifier=True),
    Column("id_number", "身份证号", required=False, identifier=True),
    Column("guardian_phone", "监护人电话", required=False, identifier=True),
    Column("county_code", "区县代码"),
    Column("school_id", "学校代码"),
    Column("school_type", "学校类型"),
    Column("location", "学校位置"),
    Column("grade", "年级"),
    Column("class_id", "班级"),
    Column("sex", "性别"),
    Column("age", "年龄"),
    Column("boarding", "住校"),
    Column("left_behind", "留守儿童"),
    Column("single_parent", "单亲家庭"),
    Column("economic_hardship", "经济困难"),
    Column("academic_year", "学年"),
    Column("participation", "参与情况"),
    Column("screening_date", "筛查日期", required=False),
    Column("mode", "筛查方式", required=False),
    Column("consent", "知情同意"),
    Column("phq9_items", "PHQ9作答", required=False),
    Column("phq9_total", "PHQ9总分", required=False),
    Column("gad7_items", "GAD7作答", required=False),
    Column("gad7_total", "GAD7总分", required=False),
    Column("mht_items", "MHT作答", required=False),
    Column("mht_total", "MHT总分", required=False),
    Column("upi_items", "UPI作答", required=False),
    Column("upi_total", "UPI总分", required=False),
    Column("risk_factors", "风险因素", required=False),
    Column("warning_level", "预警等级"),
    Column("warning_status", "预警状态"),
    Column("interview_date", "二次访谈日期", required=False),
    Column("referred", "转介"),
    Column("referral_visited", "转介就诊", required=False),
    Column("plan_status", "一生一策"),
    Column("followups_scheduled", "计划随访次数"),
    Column("followups_done", "已随访次数"),
)

# --- the school table -------------------------------------------------------------------

SCHOOL_COLUMNS: Final = (
    Column("academic_year", "学年"),
    Column("school_id", "学校代码"),
    Column("school_name", "学校名称"),
    Column("county_code", "区县代码"),
    Column("school_type", "学校类型"),
    Column("location", "学校位置"),
    Column("grade", "年级"),
    Column("enrolled_male", "男生人数"),
    Column("enrolled_female", "女生人数"),
    Column("eligible", "应筛查人数"),
    Column("ft_teachers", "专职心理教师"),
    Column("pt_teachers", "兼职心理教师"),
    Column("counselling_room", "心理辅导室"),
)

#: a header that only one kind of file has tells which kind a file is
SCREENING_MARKER: Final = "student_no"
SCHOOL_MARKER: Final = "ft_teachers"

#: items answers are written as one string of digits per instrument ("012300120");
#: separators (comma, space, semicolon) are also accepted on input
ITEM_SEPARATORS: Final = ",; |"


def header_aliases(columns: tuple[Column, ...]) -> dict[str, str]:
    """Map every accepted header spelling (English key, Chinese header) to the column key."""
    aliases: dict[str, str] = {}
    for column in columns:
        aliases[column.key] = column.key
        aliases[column.key.lower()] = column.key
        aliases[column.zh] = column.key
    return aliases


def value_aliases(vocabulary: dict[str, str]) -> dict[str, str]:
    """Map every accepted spelling of a coded value (code, Chinese label) to its code."""
    aliases: dict[str, str] = {}
    for code, zh in vocabulary.items():
        aliases[code] = code
        aliases[code.lower()] = code
        aliases[zh] = code
    return aliases


def academic_year_bounds(year: str) -> tuple[str, str]:
    """First and last ISO date of an academic year "YYYY-YYYY" (1 September to 31 August)."""
    start, end = year.split("-")
    return f"{start}-09-01", f"{end}-08-31"
