"""The screening model behind ``fedscreen synth``: instrument answers, warning, follow-up.

It follows ``DOMAIN.md`` ("Realistic synthetic data"): a latent PHQ-9 severity band is
drawn from the grade band's shares, with the positive (≥10) probability scaled by the
sex / rural / left-behind / single-parent multipliers; the PHQ-9 total, item 9, the GAD-7
total, the MHT and the UPI are drawn conditionally on that band, item answers are built to
sum exactly to the chosen totals, and the warning level and follow-up record are drawn
from the scores. The row loop in ``generator`` does the per-student draws with these tables.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import truediv
from typing import Final

from fedscreen.screening import exports
from fedscreen.synth._roster import (
    LEFT_BEHIND_RATE,
    LOCATION_SIZE,
    LOCATIONS,
    MALE_SHARE,
    PROFILES,
    SINGLE_PARENT_RATE,
)
from fedscreen.synth.prng import ONE, Stream, cumulative, normal_table, threshold

# --- targets from DOMAIN.md ------------------------------------------------------------

#: PHQ-9 band shares none / mild / moderate / moderately severe / severe, per grade band
PHQ_SHARES: Final = {
    "upper_primary": (0.70, 0.20, 0.06, 0.03, 0.01),
    "junior": (0.55, 0.25, 0.11, 0.06, 0.03),
    "senior": (0.50, 0.27, 0.12, 0.07, 0.04),
    "vocational": (0.52, 0.26, 0.12, 0.06, 0.04),
    "university": (0.62, 0.24, 0.08, 0.04, 0.02),
}
#: PHQ-9 totals of each band (the instrument's cut-offs 5/10/15/20)
PHQ_RANGES: Final = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 27))
#: relative risk of PHQ-9 >= 10
SEX_RISK: Final = {"M": 0.87, "F": 1.15}
RURAL_RISK: Final = 1.15
LEFT_BEHIND_RISK: Final = 1.3
SINGLE_PARENT_RISK: Final = 1.5
#: PHQ-9 item 9 >= 1 share per grade band (the primary figure is moot: PHQ-9 is not
#: given to upper primary, see exports.BAND_INSTRUMENTS)
ITEM9_RATE: Final = {
    "upper_primary": 0.04,
    "junior": 0.08,
    "senior": 0.08,
    "vocational": 0.08,
    "university": 0.06,
}
#: MHT content total >= 65 share per grade band
MHT_OBVIOUS_RATE: Final = {
    "upper_primary": 0.015,
    "junior": 0.05,
    "senior": 0.05,
    "vocational": 0.05,
}
UPI_CLASS_I: Final = 0.08
UPI_CLASS_II: Final = 0.10

# --- the model's own assumptions -------------------------------------------------------

#: PHQ-9 within-band weight ratio: lower totals of a band are more common
PHQ_TOTAL_DECAY: Final = (0.85, 0.85, 0.85, 0.85, 0.75)
#: relative chance of item 9 >= 1, of MHT >= 65 and of UPI class I / II by latent PHQ-9 band;
#: scaled per grade band so the overall rates meet the targets above
ITEM9_BY_BAND: Final = (0.01, 0.06, 0.20, 0.35, 0.60)
MHT_BY_BAND: Final = (0.2, 0.8, 2.5, 4.5, 7.0)
UPI_I_BY_BAND: Final = (0.03, 0.08, 0.20, 0.35, 0.50)
UPI_II_BY_BAND: Final = (0.07, 0.13, 0.17, 0.20, 0.20)
#: MHT content total of a student without an obvious problem: mean by grade band, shift by
#: latent band, spread (MHT norms: secondary means around 30 of 90)
MHT_MEAN: Final = {"upper_primary": 24.0, "junior": 30.0, "senior": 31.0, "vocational": 30.0}
MHT_SHIFT: Final = (-4.0, 2.0, 6.0, 9.0, 12.0)
MHT_SD: Final = 10.0
#: MHT lie-scale totals: valid 0..6, invalid 7..10
LIE_VALID_WEIGHTS: Final = (14, 22, 22, 18, 12, 8, 4)
LIE_INVALID_WEIGHTS: Final = (6, 3, 1.5, 0.5)
#: GAD-7 total = a * PHQ-9 total + b + sd * z: correlation ~0.7, >=10 rate ~0.7 x PHQ-9's
GAD_SLOPE: Final = 0.61
GAD_INTERCEPT: Final = 0.8
GAD_SD: Final = 3.5
#: UPI item 25 (suicidal thoughts) "yes" chance with / without PHQ-9 item 9 >= 1 (~1% overall)
UPI_ITEM25: Final = (0.001, 0.14)
#: warning level chances (red, orange, yellow) by risk tier from the scores:
#: 3 = crisis signs (item 9 >= 2, PHQ-9 severe, UPI item 25), 2 = PHQ-9 moderately severe,
#: item 9 = 1, UPI class I, MHT >= 65; 1 = PHQ-9 or GAD-7 >= 10, UPI class II; 0 = none
WARNING_BY_TIER: Final = (
    (0.0, 0.001, 0.012),
    (0.0, 0.03, 0.18),
    (0.01, 0.12, 0.42),
    (0.11, 0.38, 0.30),
)
WARNING_LEVELS: Final = ("none", "yellow", "orange", "red")


@dataclass(frozen=True)
class _FollowUp:
    """How a warning of one colour is followed up."""

    closed: float  # share already lifted by the time of the export
    plan: float  # share with a one-student-one-plan
    interview: float  # share with the second-stage interview done
    delay: tuple[int, int]  # days from screening to the interview
    referred: float
    scheduled: tuple[int, int]  # follow-ups scheduled


FOLLOW_UP: Final = {
    "red": _FollowUp(0.08, 0.95, 1.0, (0, 3), 0.50, (8, 16)),
    "orange": _FollowUp(0.15, 0.85, 0.97, (1, 10), 0.20, (4, 8)),
    "yellow": _FollowUp(0.30, 0.25, 0.85, (3, 30), 0.02, (1, 4)),
}
REFERRAL_VISITED: Final = 0.78
FOLLOW_UP_COMPLETION: Final = (0.80, 0.95)
#: risk-factor chances among warned students; family and economic depend on the flags so
#: that they land near 20% and 15%
RISK_ACADEMIC: Final = 0.60
RISK_FAMILY: Final = (0.15, 0.50)  # (not single-parent, single-parent)
RISK_EMOTIONAL: Final = 0.20
RISK_ECONOMIC: Final = (0.10, 0.60)  # (no hardship, hardship)
RISK_BULLYING: Final = {
    "upper_primary": 0.12, "junior": 0.13, "senior": 0.07, "vocational": 0.09, "university": 0.04,
}  # fmt: skip
RISK_EMPLOYMENT: Final = {"V1": 0.10, "V2": 0.15, "V3": 0.30, "U1": 0.35}
RISK_OTHER: Final = 0.08


# --- answers ---------------------------------------------------------------------------

NORMAL: Final = normal_table(4096)

_ASCII_DIGITS: Final = bytes((48 + i) % 256 for i in range(256))  # value -> "0".."9"


class _Pool(dict[int, tuple[str, ...]]):
    """Answer strings by total: ``pool[t][i]`` is one of 64 answer patterns summing to ``t``.

    Building item answers per student would dominate the run time, so each instrument
    keeps 64 patterns per total, drawn once per county (items weighted so that some
    are endorsed more often than others), and a student picks one with a random index.
    Item answers are local-only data; the ingest checks and scores them, nobody reads them.
    """

    SIZE: Final = 64

    def __init__(self, seed: int, name: str, weights: Sequence[float], cap: int) -> None:
        super().__init__()
        self._seed, self._name, self._weights, self._cap = seed, name, tuple(weights), cap

    def __missing__(self, total: int) -> tuple[str, ...]:
        # each item has ``cap`` slots; a weighted sample of ``total`` slots without
        # replacement (Efraimidis-Spirakis keys) gives item answers summing to ``total``
        slots = [i for i, _ in enumerate(self._weights) for _ in range(self._cap)]
        slot_weights = [self._weights[i] for i in slots]
        if not 0 <= total <= len(slots):
            raise ValueError(f"{self._name}: total {total} out of 0..{len(slots)}")
        rng = Stream(self._seed, "pool", self._name, total)
        patterns: list[str] = []
        for _ in range(self.SIZE):
            # keys log(u) / w: the largest win; map() keeps the arithmetic in C
            keys = list(map(truediv, map(math.log, rng.floats(len(slots))), slot_weights))
            counts = bytearray(len(self._weights))
            for j in sorted(range(len(slots)), key=keys.__getitem__, reverse=True)[:total]:
                counts[slots[j]] += 1
            patterns.append(counts.translate(_ASCII_DIGITS).decode("ascii"))
        value = tuple(patterns)
        self[total] = value
        return value


#: PHQ-9 items 1-8 (item 9 is drawn on its own): sleep and tiredness are endorsed most
_PHQ_WEIGHTS: Final = (1.0, 1.0, 1.3, 1.4, 0.9, 0.9, 1.1, 0.6)
_GAD_WEIGHTS: Final = (1.2, 1.0, 1.2, 1.0, 0.8, 1.1, 0.8)
#: MHT content items by scale: learning anxiety is the most endorsed scale in Chinese norms
_MHT_WEIGHTS: Final = (
    (1.6,) * 15 + (1.1,) * 10 + (0.8,) * 10 + (1.2,) * 10 + (1.2,) * 10 + (0.9,) * 15
    + (0.8,) * 10 + (0.9,) * 10
)  # fmt: skip
_UPI_AUX: Final = (("000",), ("100", "010", "001"), ("110", "101", "011"), ("111",))


@dataclass(frozen=True)
class _Pools:
    phq: _Pool
    gad: _Pool
    mht: _Pool
    lie: _Pool
    upi: _Pool


@lru_cache(maxsize=8)
def answer_pools(seed: int) -> _Pools:
    # shared by every model of a seed: building the MHT patterns is the costly part of set-up
    return _Pools(
        phq=_Pool(seed, "phq9", _PHQ_WEIGHTS, 3),
        gad=_Pool(seed, "gad7", _GAD_WEIGHTS, 3),
        mht=_Pool(seed, "mht", _MHT_WEIGHTS, 1),
        lie=_Pool(seed, "mht-lie", (1.0,) * 10, 1),
        upi=_Pool(seed, "upi", (1.0,) * 52, 1),
    )


ITEM9_VALUE: Final = cumulative((0.70, 0.30 * 0.65, 0.30 * 0.35))  # 1, 2, 3 given >= 1
MHT_OBVIOUS_TOTALS: Final = cumulative([0.8**k for k in range(21)])  # 65 .. 85
LIE_VALID: Final = cumulative(LIE_VALID_WEIGHTS)
LIE_INVALID: Final = cumulative(LIE_INVALID_WEIGHTS)
WARNING_CUTS: Final = tuple(
    cumulative((1 - sum(p), p[2], p[1], p[0])) for p in WARNING_BY_TIER
)  # none, yellow, orange, red


class BandTables:
    """Cuts for one grade band at one kind of location, scaled so the band meets its targets."""

    def __init__(self, band: str, rural: bool, reference: float) -> None:
        shares = PHQ_SHARES[band]
        place = RURAL_RISK if rural else 1.0
        self.latent = [
            _latent_cuts(
                shares,
                SEX_RISK["M" if male else "F"] * place * (LEFT_BEHIND_RISK if lb else 1.0)
                * (SINGLE_PARENT_RISK if sp else 1.0) / reference,
            )
            for male in (False, True) for lb in (False, True) for sp in (False, True)
        ]  # fmt: skip
        self.phq_totals = [
            cumulative([decay**k for k in range(high - low + 1)])
            for (low, high), decay in zip(PHQ_RANGES, PHQ_TOTAL_DECAY, strict=True)
        ]
        self.item9 = _scaled_cuts(ITEM9_RATE[band], shares, ITEM9_BY_BAND)
        self.mht_obvious = _scaled_cuts(MHT_OBVIOUS_RATE.get(band, 0.0), shares, MHT_BY_BAND)
        self.mht_mean = [MHT_MEAN.get(band, 0.0) + shift for shift in MHT_SHIFT]
        one = UPI_CLASS_I / _dot(shares, UPI_I_BY_BAND)
        two = UPI_CLASS_II / _dot(shares, UPI_II_BY_BAND)
        self.upi = [
            cumulative((a * one, b * two, max(0.0, 1 - a * one - b * two)))
            for a, b in zip(UPI_I_BY_BAND, UPI_II_BY_BAND, strict=True)
        ]


def _scaled_cuts(rate: float, shares: Sequence[float], relative: Sequence[float]) -> list[int]:
    """Per latent band, cuts for an event with chances ``relative`` scaled to ``rate`` overall."""
    scale = rate / _dot(shares, relative)
    return [threshold(min(1.0, r * scale)) for r in relative]


def upi_answers(
    s: tuple[int, ...], level: int, item9: int, cuts: tuple[int, ...], pool: _Pool
) -> tuple[str, int, str, bool]:
    """UPI answers for a class drawn from the latent band; totals are exact by construction."""
    item25 = s[18] < threshold(UPI_ITEM25[item9 >= 1])
    upi_class = "I" if item25 else ("I", "II", "III")[bisect_right(cuts, s[19])]
    z = NORMAL[s[21] >> 4]
    reason = s[20] % 100
    specials = [0, 0, 0]  # items 8, 16, 26
    aux = counselling = 0
    if upi_class == "III":
        total = clamp(round(5 + 2.5 * level + 4 * z), 0, 19)
    elif upi_class == "II":
        if reason < 35:
            total = 20 + s[22] % 5
        else:
            if reason < 75:
                specials[s[22] % 3] = 1
            else:
                aux = 1
            total = clamp(round(8 + 2 * level + 4 * z), 1, 19)
    else:
        if item25:
            total = clamp(round(16 + 3 * level + 6 * z), 1, 45)
        elif reason < 40:
            total = 25 + clamp(round(abs(5 * z)), 0, 20)
        elif reason < 65:
            aux = 2 + (s[22] % 4 == 0)
            total = clamp(round(12 + 2 * level + 6 * z), 0, 40)
        else:
            counselling = 1
            total = clamp(round(12 + 2 * level + 6 * z), 0, 40)
    others = total - sum(specials) - item25
    if others < 0:
        others, total = 0, total - others
    o = pool[others][s[24] & 63]
    lie = s[25]
    lies = ["1" if (lie >> (2 * k)) & 3 == 0 else "0" for k in range(4)]  # each yes 1 in 4
    s8, s16, s26 = map(str, specials)
    items = (
        o[0:4] + lies[0] + o[4:6] + s8 + o[6:13] + s16 + o[13:16] + lies[1] + o[16:20]
        + ("1" if item25 else "0") + s26 + o[20:28] + lies[2] + o[28:42] + lies[3] + o[42:52]
        + _UPI_AUX[aux][s[23] % len(_UPI_AUX[aux])] + str(counselling)
    )  # fmt: skip
    return items, total, upi_class, item25


def follow_up(
    f: tuple[int, ...],
    warning: str,
    day: int,
    band: str,
    grade: str,
    sp: bool,
    hardship: bool,
    iso: Mapping[int, str],
    year_end: int,
) -> tuple[str | int, ...]:
    """risk_factors .. followups_done for a warned student, from its follow-up values ``f``."""
    rule = FOLLOW_UP[warning]
    factors = [
        name
        for name, p, value in (
            ("academic", RISK_ACADEMIC, f[8]),
            ("employment", RISK_EMPLOYMENT.get(grade, 0.0), f[9]),
            ("economic", RISK_ECONOMIC[hardship], f[10]),
            ("emotional", RISK_EMOTIONAL, f[11]),
            ("family", RISK_FAMILY[sp], f[12]),
            ("bullying", RISK_BULLYING[band], f[13]),
            ("other", RISK_OTHER, f[14]),
        )
        if value < threshold(p)
    ]
    closed = f[0] < threshold(rule.closed)
    plan = ("closed" if closed else "active") if f[1] < threshold(rule.plan) else "none"
    interview = ""
    if f[2] < threshold(rule.interview):
        low, high = rule.delay
        interview = iso[min(year_end, day + low + f[3] % (high - low + 1))]
    referred = f[4] < threshold(rule.referred)
    visited = ("yes" if f[5] < threshold(REFERRAL_VISITED) else "no") if referred else ""
    low, high = rule.scheduled
    scheduled = low + f[6] % (high - low + 1)
    low_rate, high_rate = FOLLOW_UP_COMPLETION
    done = round(scheduled * (low_rate + (high_rate - low_rate) * f[7] / ONE))
    return (
        ";".join(factors), warning, "closed" if closed else "open", interview,
        "yes" if referred else "no", visited, plan, scheduled, done,
    )  # fmt: skip


def clamp(x: int, low: int, high: int) -> int:
    return low if x < low else high if x > high else x


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _latent_cuts(shares: Sequence[float], risk: float) -> tuple[int, ...]:
    """Cuts over the five PHQ-9 bands with the positive share scaled by ``risk``."""
    positive = sum(shares[2:])
    scaled = min(0.9, positive * risk)
    negative = 1.0 - positive
    weights = [shares[0] / negative * (1 - scaled), shares[1] / negative * (1 - scaled)]
    weights += [share / positive * scaled for share in shares[2:]]
    return cumulative(weights)


def reference_risk(band: str) -> float:
    """Mean risk multiplier of a grade band in the "mixed" reference county.

    Dividing by it keeps the band's PHQ-9 >= 10 rate at its target in a mixed county,
    while rural counties (more rural and left-behind pupils) come out higher, as they should.
    """
    mixed = PROFILES["mixed"]
    weights = dict.fromkeys(LOCATIONS, 0.0)
    for kind, share in [*mixed.school_types.items(), ("university", 1.0)]:
        if any(exports.GRADE_BAND[g] == band for g in exports.SCHOOL_GRADES[kind]):
            for location, loc_share in zip(LOCATIONS, mixed.locations[kind], strict=True):
                weights[location] += share * loc_share * LOCATION_SIZE[location]
    sex = MALE_SHARE * SEX_RISK["M"] + (1 - MALE_SHARE) * SEX_RISK["F"]
    single = 1 + SINGLE_PARENT_RATE * (SINGLE_PARENT_RISK - 1)
    place = 0.0
    for location, weight in weights.items():
        lb = 0.0 if band == "university" else LEFT_BEHIND_RATE[location]
        rural = RURAL_RISK if location == "rural" else 1.0
        place += weight * rural * (1 + lb * (LEFT_BEHIND_RISK - 1))
    return sex * single * place / sum(weights.values())
