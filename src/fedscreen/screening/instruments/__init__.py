"""Screening instruments as data: each ``definitions/*.toml`` file defines one scale.

A definition gives the item count and answer range, which items make the total,
named scales (item groups, optionally with a "high" threshold), an optional
validity rule (e.g. the MHT lie scale), ordered bands (first match wins) and
flags. Adding a scale is adding a file; the node's database columns for an
instrument are derived from its definition (``<code>_total``, ``<code>_band``,
``<code>_valid`` and one ``<code>_<flag>`` per flag).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fedscreen.errors import InstrumentError

__all__ = ["Instrument", "Score", "instruments", "load_instrument", "parse_items"]


@dataclass(frozen=True)
class Score:
    """An instrument's result for one set of answers."""

    total: int
    band: str
    valid: bool
    #: flag name -> raised; ``None`` when the test is invalid (the answers say nothing)
    flags: dict[str, bool | None]


@dataclass(frozen=True)
class Instrument:
    """A compiled instrument definition.

    ``score`` is on ingest's hot path (a million rows, several instruments each),
    so at load time the definition is translated into one small straight-line
    Python function; the generated source is kept in ``source`` for review.
    """

    code: str
    name: str
    items: int
    min: int
    max: int
    allowed: str
    total_runs: tuple[tuple[int, int], ...]
    band_labels_valid: tuple[str, ...]
    flag_names: tuple[str, ...]
    has_validity: bool
    source: str
    _scorer: Callable[[str], tuple[Any, ...]]

    @property
    def band_labels(self) -> tuple[str, ...]:
        """Every band this instrument can give, plus "invalid" when it has a validity rule."""
        if self.has_validity:
            return (*self.band_labels_valid, "invalid")
        return self.band_labels_valid

    @property
    def max_total(self) -> int:
        """The largest possible total."""
        return sum(end - start for start, end in self.total_runs) * self.max

    def score_text(self, answers: str) -> tuple[Any, ...]:
        """Score a validated answer string of exactly ``items`` digits in ``min..max``.

        Returns the stored form, ready for the database: (total, band, valid 1/0,
        then each flag 1/0 in ``flag_names`` order, or None when the answers are
        invalid — they say nothing).
        """
        return self._scorer(answers)

    def score(self, answers: str) -> Score:
        """Score a validated answer string (see ``score_text``) into a ``Score``."""
        total, band, valid, *flags = self._scorer(answers)
        return Score(
            total,
            band,
            bool(valid),
            {
                n: None if f is None else bool(f)
                for n, f in zip(self.flag_names, flags, strict=True)
            },
        )


def parse_items(text: str, instrument: Instrument) -> str:
    """Check answers ("0123..." or "0,1,2,..."); return them as bare digits, or raise ValueError."""
    items = instrument.items
    # counting each allowed digit runs in C; it is the common, clean case
    if len(text) == items and sum(map(text.count, instrument.allowed)) == items:
        return text
    digits = text
    for sep in ITEM_SEPARATORS:
        digits = digits.replace(sep, "")
    if len(digits) != items:
        hint = ""
        if digits.isdigit() and len(digits) < items:
            hint = " (a spreadsheet may have dropped leading zeros: keep this column as text)"
        raise ValueError(f"{items} answers expected, got {len(digits)}{hint}")
    bad = next((c for c in digits if c not in instrument.allowed), None)
    if bad is not None:
        raise ValueError(f"answer {bad!r} outside {instrument.min}..{instrument.max}")
    return digits


ITEM_SEPARATORS = ",; |"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _parse_runs(spec: str, items: int, where: str) -> tuple[tuple[int, int], ...]:
    """Parse "1-4,6,8-9" (1-based, inclusive) into 0-based half-open runs."""
    runs: list[tuple[int, int]] = []
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            start, end = int(first), int(last or first)
            if not 1 <= start <= end <= items:
                raise ValueError
            runs.append((start - 1, end))
    except ValueError:
        raise InstrumentError(f"{where}: bad item range {spec!r} (items 1..{items})") from None
    return tuple(runs)


def _sum_expr(runs: tuple[tuple[int, int], ...], high: int) -> str:
    """Source of an expression summing the digits of ``s`` over ``runs``.

    ``str.count`` runs in C: the sum of digits 1..high over a range is
    sum(v * s.count(str(v), a, b)), with no per-item Python work.
    """
    terms = []
    for start, end in runs:
        for value in range(1, high + 1):
            count = f"s.count({str(value)!r}, {start}, {end})"
            terms.append(count if value == 1 else f"{value} * {count}")
    return " + ".join(terms) or "0"


def _compile(data: dict[str, Any], source: str) -> Instrument:
    """Translate a definition into an Instrument with a generated scoring function.

    Every name and number in the generated source is checked first (names match
    ``_NAME``, numbers are ints), so the source holds nothing from the file but
    identifiers and integers.
    """
    try:
        code = str(data["code"])
        if not _NAME.fullmatch(code):
            raise InstrumentError(f"{source}: code {code!r} must be a lowercase identifier")
        items = int(data["items"])
        low, high = int(data["min"]), int(data["max"])
        if not 0 <= low < high <= 9:
            raise InstrumentError(f"{source}: answers must be single digits, min < max")
        lines = [
            "def score(s):",
            f"    total = {_sum_expr(_parse_runs(str(data['total']), items, source), high)}",
        ]
        scale_names: list[str] = []
        highs: list[str] = []
        for scale in data.get("scale", []):
            name = str(scale["name"])
            if not _NAME.fullmatch(name) or name in scale_names:
                raise InstrumentError(f"{source}: bad or repeated scale name {name!r}")
            scale_names.append(name)
            runs = _parse_runs(str(scale["items"]), items, source)
            lines.append(f"    scale_{name} = {_sum_expr(runs, high)}")
            if "high" in scale:
                highs.append(f"(scale_{name} >= {int(scale['high'])})")
        lines.append(f"    scales_high = {' + '.join(highs) or '0'}")

        def score_expr(score: str) -> str:
            kind, _, arg = score.partition(":")
            if score in ("total", "scales_high"):
                return score
            if kind == "item" and arg.isdigit() and 1 <= int(arg) <= items:
                return f"int(s[{int(arg) - 1}])"
            if kind == "scale" and arg in scale_names:
                return f"scale_{arg}"
            raise InstrumentError(f"{source}: unknown score {score!r}")

        def condition(rule: dict[str, Any]) -> str:
            terms = [
                f"{score_expr(str(c['score']))} >= {int(c['ge'])}" for c in rule.get("any", [])
            ]
            return " or ".join(terms) or "True"

        flag_names = tuple(str(f["name"]) for f in data.get("flag", []))
        if any(not _NAME.fullmatch(n) for n in flag_names) or len(set(flag_names)) < len(
            flag_names
        ):
            raise InstrumentError(f"{source}: flag names must be distinct lowercase identifiers")
        has_validity = "validity" in data
        if has_validity:
            scale = str(data["validity"]["score"]).removeprefix("scale:")
            if scale not in scale_names:
                raise InstrumentError(f"{source}: validity refers to unknown scale {scale!r}")
            invalid = "".join(", None" for _ in flag_names)
            lines.append(f"    if scale_{scale} >= {int(data['validity']['invalid_ge'])}:")
            lines.append(f"        return (total, 'invalid', 0{invalid})")
        bands = [(str(b["label"]), condition(b)) for b in data["band"]]
        if not bands or bands[-1][1] != "True":
            raise InstrumentError(f"{source}: the last band must have no conditions (default)")
        if any(not _NAME.fullmatch(label.lower()) for label, _ in bands):
            raise InstrumentError(f"{source}: band labels must be identifiers")
        for label, cond in bands[:-1]:
            lines.append(f"    if {cond}:\n        band = {label!r}")
            lines[-1] = (
                lines[-1].replace("    if", "    elif", 1) if label != bands[0][0] else lines[-1]
            )
        lines.append(
            f"    {'else' if len(bands) > 1 else 'if True'}:\n        band = {bands[-1][0]!r}"
        )
        flags = "".join(f", int({condition(f)})" for f in data.get("flag", []))
        lines.append(f"    return (total, band, 1{flags})")
        text = "\n".join(lines) + "\n"
        namespace: dict[str, Any] = {}
        exec(compile(text, f"<instrument {code}>", "exec"), namespace)  # noqa: S102 - see docstring
        return Instrument(
            code=code,
            name=str(data.get("name", code)),
            items=items,
            min=low,
            max=high,
            allowed="".join(str(v) for v in range(low, high + 1)),
            total_runs=_parse_runs(str(data["total"]), items, source),
            band_labels_valid=tuple(label for label, _ in bands),
            flag_names=flag_names,
            has_validity=has_validity,
            source=text,
            _scorer=namespace["score"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InstrumentError(f"{source}: malformed instrument definition ({exc!r})") from None


def load_instrument(text: str, *, source: str = "<instrument>") -> Instrument:
    """Compile an instrument definition from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstrumentError(f"{source}: {exc}") from None
    return _compile(data, source)


@cache
def instruments() -> dict[str, Instrument]:
    """The packaged instruments, by code."""
    found: dict[str, Instrument] = {}
    for entry in sorted(
        resources.files("fedscreen.screening.instruments").joinpath("definitions").iterdir(),
        key=lambda e: e.name,
    ):
        if entry.name.endswith(".toml"):
            inst = load_instrument(entry.read_text("utf-8"), source=entry.name)
            found[inst.code] = inst
    return found
