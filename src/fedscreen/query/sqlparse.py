"""Parse the small SQL subset analysts write into a ``QuerySpec``.

Accepted::

    SELECT <group columns>, <measure> FROM <dataset>
    [WHERE <conditions>] [GROUP BY <group columns>]

with one measure: ``COUNT(*)``, ``SUM(col)``, ``AVG(col)``, ``QUANTILE(col, q)``,
``RATE(<condition>)`` (the share of rows meeting the condition), or
``HISTOGRAM(col)`` (a count over the column's public domain). Conditions use
comparisons, ``IN``, ``BETWEEN``, ``AND``, ``OR``, ``NOT`` and parentheses, with
literal values only. ``academic_year = '…'`` or ``academic_year IN (…)`` at the
top level of WHERE sets the period.

Everything else is refused with a message that names the offending part. The
parser checks shape only; the policy decides which columns and values are
allowed (see ``fedscreen.query.compile``). Parsing uses sqlglot, never string
surgery, and nothing of the text reaches SQLite: the compiler emits its own SQL
with parameters.

Limits, checked before anything recursive runs (sqlglot's parser recurses about
25 Python frames per level of nesting): at most ``MAX_SQL_CHARS`` characters;
at most ``MAX_NESTING`` levels of parentheses (also those of function calls and
IN lists), CASE, and NOT or sign operators inside one another, counted on
sqlglot's own tokens; at most ``MAX_CONDITIONS`` comparisons (so fewer AND/OR).
Whatever still overflows the interpreter's stack is refused too, never a
traceback: every text is either a ``QuerySpec`` or a ``QueryRefused``.
"""

from __future__ import annotations

import math
import re
from typing import Final

import sqlglot
from sqlglot import Token, TokenType, exp

from fedscreen.errors import QueryRefused
from fedscreen.query.spec import (
    MAX_CONDITIONS,
    MAX_NESTING,
    BoolOp,
    Comparison,
    Condition,
    Measure,
    QuerySpec,
    Value,
    check_size,
)

__all__ = ["IDENTIFIER", "MAX_CONDITIONS", "MAX_NESTING", "MAX_SQL_CHARS", "parse_sql"]

IDENTIFIER: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
PERIOD_COLUMN: Final = "academic_year"
#: longest query text accepted (characters); also bounds ``--file`` reads
MAX_SQL_CHARS: Final = 4_000


# the pre-scan's view of sqlglot's tokens: what opens and closes a level of nesting,
# the prefix operators that nest without brackets (NOT NOT x, - - 1, INTERVAL INTERVAL),
# what ends such a run, and what a binary minus or NOT follows. By name, as sqlglot
# releases rename some (TILDA became TILDE) and add others (XOR).
def _token_types(*names: str) -> frozenset[TokenType]:
    return frozenset(TokenType[name] for name in names if name in TokenType.__members__)


_OPENING: Final = _token_types("L_PAREN", "L_BRACKET", "L_BRACE", "CASE")
_CLOSING: Final = _token_types("R_PAREN", "R_BRACKET", "R_BRACE", "END")
_PREFIX: Final = _token_types(
    "NOT", "DASH", "PLUS", "TILDE", "TILDA", "PIPE_SLASH", "DPIPE_SLASH", "INTERVAL"
)
_CONNECTIVES: Final = _token_types("AND", "OR", "XOR")
_OPERANDS: Final = _CLOSING | _token_types(
    "NUMBER", "STRING", "VAR", "IDENTIFIER", "STAR", "NULL", "TRUE", "FALSE"
)

_COMPARISON_OPS: Final[dict[type[exp.Expression], str]] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FLIPPED: Final = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_CLAUSES: Final = {
    "joins": "JOIN",
    "having": "HAVING",
    "order": "ORDER BY",
    "limit": "LIMIT",
    "offset": "OFFSET",
    "distinct": "DISTINCT",
    "with_": "WITH",
    "qualify": "QUALIFY",
    "windows": "WINDOW",
    "laterals": "LATERAL",
}


def _sql(node: exp.Expr) -> str:
    text = node.sql(dialect="sqlite")
    return text if len(text) <= 80 else text[:77] + "..."


def parse_sql(text: str) -> QuerySpec:
    """Parse one query; raises QueryRefused naming what is not allowed (and nothing else)."""
    if len(text) > MAX_SQL_CHARS:
        raise QueryRefused(f"query longer than {MAX_SQL_CHARS} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QueryRefused(
            f"the query is not valid Unicode text (a lone surrogate at character {exc.start})"
        ) from None
    try:
        tokens = sqlglot.tokenize(text, read="sqlite")
    except sqlglot.errors.SqlglotError as exc:
        raise QueryRefused(f"not valid SQL: {_first_line(exc)}") from None
    _prescan(tokens)
    try:
        spec = _parse(text)
    except RecursionError:
        # the last resort: the pre-scan bounds every nesting we know of
        raise QueryRefused(
            f"the query is nested too deeply to parse (at most {MAX_NESTING} levels)"
        ) from None
    check_size(spec)
    return spec


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _prescan(tokens: list[Token]) -> None:
    """Refuse too deep nesting or too many conditions from the tokens, before parsing.

    Each bracket (and CASE … END) opens a level; each prefix NOT, sign or INTERVAL opens
    one that lasts until the next AND/OR or comma at its bracket level (NOT binds
    tighter than AND and OR), or until its bracket closes.
    """
    pending = [0]  # per open bracket: prefix operators not yet ended
    nesting = 0  # open brackets + every pending prefix operator
    connectives = 0
    previous: TokenType | None = None
    for token in tokens:
        kind = token.token_type
        if kind in _OPENING:
            pending.append(0)
            nesting += 1
        elif kind in _CLOSING:
            if len(pending) > 1:
                nesting -= pending.pop() + 1
        elif kind in _CONNECTIVES or kind == TokenType.COMMA:
            nesting -= pending[-1]
            pending[-1] = 0
            if kind in _CONNECTIVES:
                connectives += 1
                if connectives >= MAX_CONDITIONS:
                    raise QueryRefused(
                        f"more than {MAX_CONDITIONS} comparisons in one query "
                        f"({connectives} AND/OR at character {token.start})"
                    )
        elif kind in _PREFIX and previous not in _OPERANDS:
            pending[-1] += 1
            nesting += 1
        if nesting > MAX_NESTING:
            raise QueryRefused(
                f"the query is nested deeper than {MAX_NESTING} levels (parentheses, CASE, "
                f"NOT and signs inside one another) at character {token.start}"
            )
        previous = kind


def _parse(text: str) -> QuerySpec:
    try:
        statements = [s for s in sqlglot.parse(text, read="sqlite") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise QueryRefused(f"not valid SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement allowed, got {len(statements)}")
    select = statements[0]
    if not isinstance(select, exp.Select):
        raise QueryRefused(f"only SELECT is allowed, not {select.key.upper()}")
    for arg, clause in _CLAUSES.items():
        if select.args.get(arg):
            raise QueryRefused(f"{clause} is not allowed")
    for nested in select.find_all(exp.Subquery, exp.Union, exp.Select):
        if nested is not select:
            raise QueryRefused(f"subqueries are not allowed: {_sql(nested)}")
    dataset = _dataset(select)

    group_by: list[str] = []
    measures: list[Measure] = []
    selected_columns: list[str] = []
    for item in select.expressions:
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Column):
            selected_columns.append(_column(node))
        else:
            measures.append(_measure(node))
    if len(measures) != 1:
        raise QueryRefused(f"exactly one measure per query, got {len(measures)}")
    measure = measures[0]

    group = select.args.get("group")
    if group is not None:
        for node in group.expressions:
            if isinstance(node, exp.Literal) and not node.is_string:
                if not re.fullmatch(r"\d{1,3}", str(node.this)):
                    raise QueryRefused(f"GROUP BY {_sql(node)} does not point at a column")
                position = int(node.this) - 1
                items = select.expressions
                if not 0 <= position < len(items) or not isinstance(items[position], exp.Column):
                    raise QueryRefused(f"GROUP BY {node.this} does not point at a column")
                group_by.append(_column(items[position]))
            elif isinstance(node, exp.Column):
                group_by.append(_column(node))
            else:
                raise QueryRefused(f"GROUP BY only on columns, not {_sql(node)}")
    if measure.kind == "count" and measure.column is not None:
        # HISTOGRAM(col): a count grouped by the column
        group_by.append(measure.column)
        measure = Measure("count")
    if len(set(group_by)) != len(group_by):
        raise QueryRefused("a column is grouped twice")
    if selected_columns and sorted(selected_columns) != sorted(group_by):
        missing = set(selected_columns) ^ set(group_by)
        raise QueryRefused(
            f"selected columns must be the GROUP BY columns: {', '.join(sorted(missing))}"
        )

    where_node = select.args.get("where")
    where = _condition(where_node.this) if where_node is not None else None
    years, where = _period(where)
    return QuerySpec(dataset, measure, tuple(group_by), where, years)


def _dataset(select: exp.Select) -> str:
    source = select.args.get("from_") or select.args.get("from")
    if source is None:
        raise QueryRefused("FROM <dataset> is required")
    table = source.this
    if not isinstance(table, exp.Table) or table.args.get("db") or table.args.get("catalog"):
        raise QueryRefused(f"FROM must name one dataset, not {_sql(source)}")
    if table.alias:
        raise QueryRefused("table aliases are not allowed")
    return _name(table.name, "dataset")


def _name(name: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise QueryRefused(f"{what} name {name!r} is not a plain lowercase identifier")
    return name


def _column(node: exp.Expression) -> str:
    if not isinstance(node, exp.Column):
        raise QueryRefused(f"expected a column, got {_sql(node)}")
    if node.table:
        raise QueryRefused(f"qualified column {_sql(node)} is not allowed")
    if node.this.args.get("quoted"):
        raise QueryRefused(f"quoted identifier {_sql(node)} is not allowed")
    return _name(node.name, "column")


def _literal(node: exp.Expression, column: str = "") -> Value:
    negative = False
    if isinstance(node, exp.Neg):
        negative, node = True, node.this
    if not isinstance(node, exp.Literal):
        raise QueryRefused(f"only literal values may be compared, not {_sql(node)}")
    if node.is_string:
        if negative:
            raise QueryRefused(f"cannot negate a string: {_sql(node)}")
        return str(node.this)
    text = str(node.this)
    try:
        number: int | float = int(text) if re.fullmatch(r"\d+", text) else float(text)
    except ValueError:
        raise QueryRefused(f"not a number: {text[:40]!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        where = f" for {column}" if column else ""
        raise QueryRefused(f"number out of range{where}: {text[:40]}")
    return -number if negative else number


def _measure(node: exp.Expression) -> Measure:
    if isinstance(node, exp.Count):
        if not isinstance(node.this, exp.Star) or node.args.get("distinct"):
            raise QueryRefused(f"only COUNT(*) is allowed, not {_sql(node)}")
        return Measure("count")
    if isinstance(node, exp.Sum | exp.Avg):
        if node.args.get("distinct") or isinstance(node.this, exp.Distinct):
            raise QueryRefused(f"DISTINCT is not allowed: {_sql(node)}")
        return Measure("sum" if isinstance(node, exp.Sum) else "mean", column=_column(node.this))
    if isinstance(node, exp.Quantile):
        q = _literal(node.args["quantile"])
        if not isinstance(q, int | float) or not 0 < q < 1:
            raise QueryRefused(f"QUANTILE needs a level strictly between 0 and 1: {_sql(node)}")
        return Measure("quantile", column=_column(node.this), q=float(q))
    if isinstance(node, exp.Anonymous):
        name = str(node.this).upper()
        args = node.expressions
        if name == "RATE" and len(args) == 1:
            return Measure("rate", condition=_condition(args[0]))
        if name == "HISTOGRAM" and len(args) == 1:
            return Measure("count", column=_column(args[0]))
        if name == "QUANTILE" and len(args) == 2:
            return _measure(exp.Quantile(this=args[0], quantile=args[1]))
        raise QueryRefused(f"function {name} is not allowed")
    if isinstance(node, exp.Func):
        raise QueryRefused(f"function {_sql(node)} is not allowed")
    raise QueryRefused(f"cannot select {_sql(node)}: select group columns and one measure")


def _condition(node: exp.Expression) -> Condition:
    if isinstance(node, exp.Paren):
        return _condition(node.this)
    if isinstance(node, exp.And | exp.Or):
        op = "and" if isinstance(node, exp.And) else "or"
        # sqlglot nests a chain a AND b AND c to the left: walk it without recursing
        chain, operands = [node], []
        while chain:
            link = chain.pop()
            if type(link) is type(node):
                chain += [link.expression, link.this]
            else:
                operands.append(link)
        args: list[Condition] = []
        for side in operands:
            cond = _condition(side)
            # flatten a AND (b AND c) so the canonical form does not depend on parentheses
            args.extend(cond.args if isinstance(cond, BoolOp) and cond.op == op else (cond,))
        return BoolOp(op, tuple(args))
    if isinstance(node, exp.Not):
        inner = node.this.this if isinstance(node.this, exp.Paren) else node.this
        if isinstance(inner, exp.In):
            base = _condition(inner)
            assert isinstance(base, Comparison)
            return Comparison(base.column, "not in", base.values)
        return BoolOp("not", (_condition(node.this),))
    compared = _COMPARISON_OPS.get(type(node))
    if compared is not None:
        op = compared
        left, right = node.this, node.expression
        if isinstance(left, exp.Column):
            column = _column(left)
            return Comparison(column, op, (_literal(right, column),))
        if isinstance(right, exp.Column):
            column = _column(right)
            return Comparison(column, _FLIPPED[op], (_literal(left, column),))
        raise QueryRefused(f"a comparison needs a column and a value: {_sql(node)}")
    if isinstance(node, exp.In):
        if node.args.get("query") or node.args.get("unnest"):
            raise QueryRefused(f"subqueries are not allowed: {_sql(node)}")
        column = _column(node.this)
        values = tuple(_literal(v, column) for v in node.expressions)
        if not values:
            raise QueryRefused(f"IN needs values: {_sql(node)}")
        return Comparison(column, "in", values)
    if isinstance(node, exp.Between):
        column = _column(node.this)
        return BoolOp(
            "and",
            (
                Comparison(column, ">=", (_literal(node.args["low"], column),)),
                Comparison(column, "<=", (_literal(node.args["high"], column),)),
            ),
        )
    raise QueryRefused(f"condition not allowed: {_sql(node)}")


def _period(where: Condition | None) -> tuple[tuple[str, ...], Condition | None]:
    """Take ``academic_year = …`` / ``IN (…)`` from the top level of WHERE as the period."""
    if where is None:
        return (), None
    conjuncts = list(where.args) if isinstance(where, BoolOp) and where.op == "and" else [where]
    years: tuple[str, ...] = ()
    rest: list[Condition] = []
    for cond in conjuncts:
        if isinstance(cond, Comparison) and cond.column == PERIOD_COLUMN and cond.op in ("=", "in"):
            if years:
                raise QueryRefused("academic_year is given twice")
            years = tuple(sorted(str(v) for v in cond.values))
        else:
            rest.append(cond)
    remaining: Condition | None
    if not rest:
        remaining = None
    elif len(rest) == 1:
        remaining = rest[0]
    else:
        remaining = BoolOp("and", tuple(rest))
    return years, remaining
