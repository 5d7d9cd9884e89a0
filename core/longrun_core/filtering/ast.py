"""The checked filter tree, and its canonical text.

Leaves are already typed: `Compare.value` is a `Pattern` for string fields,
an int or float for numbers, a bool, a `State`, or a `Timestamp`. `field:value`
(has) becomes `Compare(EQ)`; `field:*` and `labels:key` become `Present`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from longrun_core.filtering.fields import Field
from longrun_core.model import State


class Op(enum.Enum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


@dataclass(frozen=True, slots=True)
class Pattern:
    """A string, possibly with `*` wildcards: `parts` are the pieces between
    them (one part: no wildcard). Matching is case-sensitive, over the whole
    value, in time linear in its length per part."""

    parts: tuple[str, ...]

    @staticmethod
    def of(parts: tuple[str, ...]) -> Pattern:
        """Collapse runs of wildcards (`a**b` is `a*b`)."""
        if len(parts) <= 2:
            return Pattern(parts)
        middle = tuple(p for p in parts[1:-1] if p)
        return Pattern((parts[0], *middle, parts[-1]))

    @property
    def has_wildcard(self) -> bool:
        return len(self.parts) > 1

    @property
    def matches_all(self) -> bool:
        return self.has_wildcard and not any(self.parts)

    @property
    def literal(self) -> str:
        """The value of a pattern without wildcards."""
        return self.parts[0]

    def matches(self, value: str) -> bool:
        if not self.has_wildcard:
            return value == self.parts[0]
        first, *middle, last = self.parts
        end = len(value) - len(last)
        if end < len(first) or not value.startswith(first) or not value.endswith(last):
            return False
        pos = len(first)
        for part in middle:
            found = value.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
        return True


@dataclass(frozen=True, slots=True)
class Timestamp:
    """An instant as nanoseconds since the epoch (RFC 3339 allows 9 digits;
    records hold microseconds)."""

    nanos: int


Value = Pattern | bool | int | float | State | Timestamp


@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: Op
    value: Value


@dataclass(frozen=True, slots=True)
class Present:
    """`field:*`: the field is set (see the package docstring)."""

    field: Field


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]


Expr = Compare | Present | Not | And | Or


def conjunction(operands: list[Expr]) -> Expr:
    """AND of `operands`, flattening nested ANDs."""
    flat: list[Expr] = []
    for e in operands:
        flat.extend(e.operands if isinstance(e, And) else (e,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjunction(operands: list[Expr]) -> Expr:
    """OR of `operands`, flattening nested ORs."""
    flat: list[Expr] = []
    for e in operands:
        flat.extend(e.operands if isinstance(e, Or) else (e,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# ---- canonical text ----


def to_text(expr: Expr) -> str:
    """Canonical filter text: one spelling per tree, parentheses only where
    the grammar needs them, so it nests no deeper than the text it came from."""
    if isinstance(expr, And):
        return " AND ".join(to_text(e) for e in expr.operands)
    if isinstance(expr, Or):
        return " OR ".join(_group(e, isinstance(e, And)) for e in expr.operands)
    if isinstance(expr, Not):
        return "NOT " + _group(expr.operand, not isinstance(expr.operand, Compare | Present))
    if isinstance(expr, Present):
        return f"{expr.field.path}:*"
    return f"{expr.field.path} {expr.op.value} {literal_text(expr.value)}"


def _group(expr: Expr, parenthesize: bool) -> str:
    return f"({to_text(expr)})" if parenthesize else to_text(expr)


def literal_text(value: Value) -> str:
    if isinstance(value, Pattern):
        return '"' + "*".join(_quote(p) for p in value.parts) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, State):
        return value.name
    if isinstance(value, Timestamp):
        return f'"{format_timestamp(value.nanos)}"'
    return repr(value)


def _quote(part: str) -> str:
    out: list[str] = []
    for c in part:
        if c in '\\"*':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_timestamp(nanos: int) -> str:
    """RFC 3339 in UTC with as many fraction digits as needed."""
    seconds, frac = divmod(nanos, 1_000_000_000)
    d = _EPOCH + timedelta(seconds=seconds)
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"
