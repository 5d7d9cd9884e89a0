"""The public face: `parse_filter` and the `Filter` it returns."""

from __future__ import annotations

from collections.abc import Iterator

from longrun_core.filtering.ast import And, Expr, Not, Or, to_text
from longrun_core.filtering.evaluate import Values, evaluate, evaluate_values
from longrun_core.filtering.firestore import FirestoreQuery, to_firestore
from longrun_core.filtering.index_terms import IndexTerms, index_terms
from longrun_core.filtering.parser import parse
from longrun_core.filtering.sql import SqlFilter, to_sql
from longrun_core.model import OperationRecord


class Filter:
    """A checked ListOperations filter (implements `longrun_core.store.RecordFilter`)."""

    __slots__ = ("expr", "text")

    def __init__(self, expr: Expr) -> None:
        self.expr = expr
        #: Canonical text: equal for filters that differ only in spelling
        #: (spaces, `-` vs NOT, juxtaposition vs AND, `:` vs `=`, aliases,
        #: quoting, timestamp offsets). Meant for binding page tokens; it may
        #: be longer than the original and need not respect MAX_LENGTH.
        self.text = to_text(expr)

    def matches(self, rec: OperationRecord) -> bool:
        return evaluate(self.expr, rec)

    def matches_values(self, values: Values) -> bool:
        """`matches` on the values of `attrs` a store read for one record."""
        return evaluate_values(self.expr, values)

    @property
    def attrs(self) -> frozenset[str]:
        """The `attr` names (longrun_core.filtering.fields) of the fields the filter reads."""
        return frozenset(_attrs(self.expr))

    def to_sql(self) -> SqlFilter:
        return to_sql(self.expr)

    def index_terms(self) -> IndexTerms:
        """The equalities and create_time bounds an index can serve."""
        return index_terms(self.expr)

    def to_firestore(self) -> FirestoreQuery:
        """What a Firestore list query can push down (see `filtering.firestore`)."""
        return to_firestore(self.index_terms())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"


def parse_filter(text: str) -> Filter | None:
    """The filter in `text`; None when it is empty or blank.
    Raises longrun_core.errors.InvalidArgument (reason FILTER_INVALID) naming the
    column and the problem."""
    if not text.strip():
        return None
    return Filter(parse(text))


def _attrs(expr: Expr) -> Iterator[str]:
    if isinstance(expr, And | Or):
        for operand in expr.operands:
            yield from _attrs(operand)
    elif isinstance(expr, Not):
        yield from _attrs(expr.operand)
    else:
        yield expr.field.attr
