"""The parts of a filter an index can serve: equalities on the indexed
fields and bounds on `metadata.create_time`, read from the top-level
conjuncts (`a AND b AND ...`).

A store picks one equality as the *driver* of its scan (it walks the index
on (field, create_time desc, id desc), so the list order needs no sort) and
turns the create_time bounds into the range of that walk. Everything the
driver and the range do not decide is checked per row afterwards (in SQL or
with `Filter.matches`), so a store may ignore any term here: the terms only
narrow which rows are read, never which rows match.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from longrun_core.filtering.ast import And, Compare, Expr, Not, Op, Pattern, Present, Timestamp
from longrun_core.filtering.fields import Kind
from longrun_core.model import State


class Indexed(enum.Enum):
    """Fields with an index on (field, create_time desc, id desc)."""

    DONE = "done"
    STATE = "state"
    TASK = "task"
    LABEL = "label"


@dataclass(frozen=True, slots=True)
class Equality:
    """`field = value` for every matching record. For LABEL, `value` is the
    label value and `label_key` its key; for STATE, `value` is a tuple of the
    allowed states (one for `=`, the others for `!=`)."""

    field: Indexed
    value: bool | str | tuple[State, ...]
    label_key: str | None = None


@dataclass(frozen=True, slots=True)
class IndexTerms:
    """What of a filter an index can serve."""

    #: Driver candidates, the likely most selective first.
    equalities: tuple[Equality, ...]
    #: Every matching record has lo <= create_time (microseconds) <= hi.
    create_lo_us: int | None
    create_hi_us: int | None
    #: True when the filter is exactly the AND of these terms (each
    #: conjunct was read into one of them, losing nothing).
    complete: bool

    @property
    def empty_range(self) -> bool:
        return (
            self.create_lo_us is not None
            and self.create_hi_us is not None
            and self.create_lo_us > self.create_hi_us
        )


_PREFERENCE = {Indexed.LABEL: 0, Indexed.TASK: 1, Indexed.STATE: 2, Indexed.DONE: 3}


def index_terms(expr: Expr) -> IndexTerms:
    equalities: list[Equality] = []
    lo: int | None = None
    hi: int | None = None
    complete = True
    for conjunct in _conjuncts(expr):
        bound = _create_bound(conjunct)
        if bound is not None:
            b_lo, b_hi = bound
            if b_lo is not None:
                lo = b_lo if lo is None else max(lo, b_lo)
            if b_hi is not None:
                hi = b_hi if hi is None else min(hi, b_hi)
            continue
        equality = _equality(conjunct)
        if equality is None:
            complete = False
        else:
            equalities.append(equality)
    equalities.sort(key=lambda e: _PREFERENCE[e.field])
    return IndexTerms(tuple(equalities), lo, hi, complete)


def _conjuncts(expr: Expr) -> Iterator[Expr]:
    if isinstance(expr, And):
        for operand in expr.operands:
            yield from _conjuncts(operand)
    else:
        yield expr


def _equality(expr: Expr) -> Equality | None:
    negated = False
    if isinstance(expr, Not) and isinstance(expr.operand, Compare | Present):
        negated, expr = True, expr.operand
    if isinstance(expr, Present):
        if expr.field.path == "done":  # done:*  means  done = true
            return Equality(Indexed.DONE, not negated)
        return None
    if not isinstance(expr, Compare) or expr.op not in (Op.EQ, Op.NE):
        return None
    equal = (expr.op is Op.EQ) != negated
    field, value = expr.field, expr.value
    if field.path == "done" and isinstance(value, bool):
        return Equality(Indexed.DONE, value if equal else not value)
    if field.path == "metadata.state" and isinstance(value, State):
        states = (value,) if equal else tuple(s for s in State if s is not value)
        return Equality(Indexed.STATE, states)
    if not equal or not isinstance(value, Pattern) or value.has_wildcard:
        return None
    if field.path == "metadata.task":
        return Equality(Indexed.TASK, value.literal)
    if field.kind is Kind.LABEL and field.label_key is not None and not negated:
        # `NOT labels.k != "v"` also holds for a record without the label.
        return Equality(Indexed.LABEL, value.literal, field.label_key)
    return None


def _create_bound(expr: Expr) -> tuple[int | None, int | None] | None:
    """(lo, hi) in microseconds for a create_time comparison, else None."""
    if not isinstance(expr, Compare) or expr.field.path != "metadata.create_time":
        return None
    if not isinstance(expr.value, Timestamp) or expr.op is Op.NE:
        return None
    nanos = expr.value.nanos
    floor_us = nanos // 1000
    ceil_us = -(-nanos // 1000)
    # A record's time t (microseconds) compares as t * 1000 against the literal.
    if expr.op is Op.EQ:
        return (ceil_us, floor_us)  # empty when the literal has sub-microsecond digits
    if expr.op is Op.LT:
        return (None, ceil_us - 1)
    if expr.op is Op.LE:
        return (None, floor_us)
    if expr.op is Op.GT:
        return (floor_us + 1, None)
    return (ceil_us, None)  # GE
