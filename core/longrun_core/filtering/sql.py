"""Translation to a SQLite WHERE clause over the `operations` table.

Every node becomes an SQL expression that is 1 or 0 where SQL can decide,
and NULL ("unknown") where it cannot: a field with no column
(`error.message`), or a value holding a NUL character where SQLite would see
only the text before it (GLOB with an inner or leading wildcard; label
values, which json_extract cuts at NUL). Equality and order on columns, and
prefix wildcards (`abc*`), are exact for every value.
SQL's three-valued AND / OR / NOT then keep "unknown" exactly where the
answer depends on it, so NOT is safe too. Rows where the filter is unknown are
admitted (`... IS NOT 0`) and `exact` is False: the caller re-checks them with
`Filter.matches`. No row that matches is ever excluded.

User text never enters the SQL: values, label paths and GLOB patterns are `?`
parameters; column names come from `longrun_core.filtering.fields`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from longrun_core.filtering.ast import And, Compare, Expr, Not, Op, Or, Pattern, Present, Timestamp
from longrun_core.filtering.fields import Field, Kind
from longrun_core.model import State
from longrun_core.names import COLLECTION, PROJECTS

_FULL_NAME = f"('{PROJECTS}/' || project || '/{COLLECTION}/' || id)"
_SQL_OPS = {Op.EQ: "=", Op.NE: "<>", Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">="}
_GLOB_ESCAPES = {"*": "[*]", "?": "[?]", "[": "[[]"}
#: json.dumps writes a NUL in a label as this escape (never a raw NUL).
_LABELS_HAVE_NUL = "instr(labels, '\\u0000') > 0"


@dataclass(frozen=True, slots=True)
class SqlFilter:
    """What of a filter SQLite can evaluate on the `operations` table.

    `where` is a boolean expression with `?` placeholders bound to `params`
    (None: nothing to push down). Join it to other conditions with AND (or
    wrap it in parentheses). When `exact` is False, the rows it selects are a
    superset of the matching ones: call `Filter.matches` on each."""

    where: str | None
    params: tuple[object, ...]
    exact: bool


@dataclass(frozen=True, slots=True)
class _Sql:
    text: str
    params: tuple[object, ...] = ()
    #: May be NULL (unknown) for some rows.
    nullable: bool = False


TRUE = _Sql("1")
FALSE = _Sql("0")
UNKNOWN = _Sql("NULL", nullable=True)


def to_sql(expr: Expr) -> SqlFilter:
    conjuncts = expr.operands if isinstance(expr, And) else (expr,)
    texts: list[str] = []
    params: list[object] = []
    exact = True
    for part in map(_translate, conjuncts):
        if part == FALSE:
            return SqlFilter("0", (), exact=True)
        if part == TRUE:
            continue
        if part == UNKNOWN:
            exact = False
            continue
        if part.nullable:
            exact = False
            texts.append(f"({part.text}) IS NOT 0")
        else:
            texts.append(part.text)
        params.extend(part.params)
    return SqlFilter(" AND ".join(texts) or None, tuple(params), exact)


def _translate(expr: Expr) -> _Sql:
    if isinstance(expr, And):
        return _and(map(_translate, expr.operands))
    if isinstance(expr, Or):
        return _or(map(_translate, expr.operands))
    if isinstance(expr, Not):
        return _not(_translate(expr.operand))
    if expr.field.column is None:
        return UNKNOWN
    if isinstance(expr, Present):
        return _present(expr.field)
    return _compare(expr)


# ---- connectives, folding constants ----


def _and(parts: Iterable[_Sql]) -> _Sql:
    kept: list[_Sql] = []
    for part in parts:
        if part == FALSE:
            return FALSE
        if part != TRUE:
            kept.append(part)
    return _join(kept, " AND ", TRUE)


def _or(parts: Iterable[_Sql]) -> _Sql:
    kept: list[_Sql] = []
    for part in parts:
        if part == TRUE:
            return TRUE
        if part != FALSE:
            kept.append(part)
    joined = _join(kept, " OR ", FALSE)
    if len(kept) < 2 or joined == UNKNOWN:
        return joined
    return _Sql(f"({joined.text})", joined.params, joined.nullable)


def _join(parts: list[_Sql], glue: str, empty: _Sql) -> _Sql:
    if not parts:
        return empty
    if all(p == UNKNOWN for p in parts):
        return UNKNOWN
    if len(parts) == 1:
        return parts[0]
    params = tuple(x for p in parts for x in p.params)
    return _Sql(glue.join(p.text for p in parts), params, any(p.nullable for p in parts))


def _not(part: _Sql) -> _Sql:
    if part == TRUE:
        return FALSE
    if part == FALSE:
        return TRUE
    if part == UNKNOWN:
        return UNKNOWN
    return _Sql(f"NOT ({part.text})", part.params, part.nullable)


# ---- leaves ----


def _present(field: Field) -> _Sql:
    col = str(field.column)
    if field.path == "name":
        return TRUE
    if field.kind is Kind.MAP:
        return _Sql("EXISTS (SELECT 1 FROM json_each(labels))")
    if field.kind is Kind.LABEL:
        return _Sql("json_type(labels, ?) IS NOT NULL", (_label_path(field),))
    if field.kind in (Kind.MESSAGE, Kind.TIMESTAMP):
        return _Sql(f"{col} IS NOT NULL") if field.nullable else TRUE
    if field.kind is Kind.STRING:
        return _Sql(f"{col} <> ''")
    return _compare_column(field, Op.NE, 0)


def _compare(expr: Compare) -> _Sql:
    field, op, value = expr.field, expr.op, expr.value
    if isinstance(value, Pattern):
        if field.path == "name":
            return _name(op, value)
        if field.kind is Kind.LABEL:
            return _label(field, op, value)
        return _text(str(field.column), op, value)
    if isinstance(value, Timestamp):
        return _time(field, op, value.nanos)
    param: object = int(value) if isinstance(value, bool | State) else value
    return _compare_column(field, op, param)


def _compare_column(field: Field, op: Op, param: object) -> _Sql:
    col = field.column
    if field.nullable:
        return _Sql(f"({col} IS NOT NULL AND {col} {_SQL_OPS[op]} ?)", (param,))
    return _Sql(f"{col} {_SQL_OPS[op]} ?", (param,))


def _time(field: Field, op: Op, nanos: int) -> _Sql:
    """Columns hold microseconds; a literal may have nanoseconds."""
    micros, rest = divmod(nanos, 1000)
    if rest:
        if op is Op.EQ:
            return FALSE
        if op is Op.NE:
            return _present(field)
        if op in (Op.GE, Op.LT):  # col*1000 >= nanos  <=>  col >= ceil(nanos / 1000)
            micros += 1
    return _compare_column(field, op, micros)


def _text(column: str, op: Op, pattern: Pattern) -> _Sql:
    """A NOT NULL text column (or expression)."""
    if not pattern.has_wildcard:
        return _Sql(f"{column} {_SQL_OPS[op]} ?", (pattern.literal,))
    if pattern.matches_all:
        return TRUE if op is Op.EQ else FALSE
    if _is_prefix(pattern):
        glob = _Sql(f"{column} GLOB ?", (_glob(pattern),))
    else:
        glob = _Sql(
            f"CASE WHEN instr({column}, char(0)) > 0 THEN NULL ELSE {column} GLOB ? END",
            (_glob(pattern),),
            nullable=True,
        )
    return glob if op is Op.EQ else _not(glob)


def _name(op: Op, pattern: Pattern) -> _Sql:
    """Names are `projects/{project}/operations/{id}`; the table stores the
    project and the id (an exact name compares both columns)."""
    if op in (Op.EQ, Op.NE) and not pattern.has_wildcard:
        parts = pattern.literal.split("/")
        if len(parts) == 4 and parts[0] == PROJECTS and parts[2] == COLLECTION:
            same = _Sql("(project = ? AND id = ?)", (parts[1], parts[3]))
            return same if op is Op.EQ else _not(same)
    return _text(_FULL_NAME, op, pattern)


def _label(field: Field, op: Op, pattern: Pattern) -> _Sql:
    path = _label_path(field)
    if pattern.matches_all:
        return _present(field) if op is Op.EQ else FALSE
    if not pattern.has_wildcard:
        test = f"json_extract(labels, ?) {_SQL_OPS[op]} ?"
        params: tuple[object, ...] = (path, pattern.literal)
    else:
        test = "json_extract(labels, ?) GLOB ?"
        if op is Op.NE:
            test = f"NOT ({test})"
        params = (path, _glob(pattern))
    if _is_prefix(pattern):
        return _Sql(f"IFNULL({test}, 0)", params)
    return _Sql(
        f"CASE WHEN {_LABELS_HAVE_NUL} THEN NULL ELSE IFNULL({test}, 0) END",
        params,
        nullable=True,
    )


def _is_prefix(pattern: Pattern) -> bool:
    """`abc*`: GLOB decides it exactly even on a value that SQLite cuts at
    its first NUL, since the prefix holds no NUL."""
    return len(pattern.parts) == 2 and not pattern.parts[1]


def _label_path(field: Field) -> str:
    # The key matched LABEL_KEY ([A-Za-z0-9_-]), so it needs no JSON escaping.
    return f'$."{field.label_key}"'


def _glob(pattern: Pattern) -> str:
    return "*".join("".join(_GLOB_ESCAPES.get(c, c) for c in part) for part in pattern.parts)
