"""In-memory evaluation: the full truth of a filter for one record."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import cached_property
from typing import Any, Protocol

from google.rpc import status_pb2

from longrun_core.clock import to_micros
from longrun_core.filtering.ast import And, Compare, Expr, Not, Op, Or, Pattern, Present, Timestamp
from longrun_core.filtering.fields import Field, Kind
from longrun_core.model import OperationRecord

_OPS: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
}


_TIMES = frozenset({"create_time", "update_time", "start_time", "end_time", "expire_time"})


class Values(Protocol):
    """The values a filter sees on one record (None: absent), by the `attr`
    names of `longrun_core.filtering.fields`: times as nanoseconds since the
    epoch, `error` as the google.rpc.Status of a done operation (None
    otherwise), `error_code` / `error_message` from it, `done` a bool,
    `labels` a dict, the others as the record holds them."""

    def get(self, attr: str) -> Any: ...


class RecordView:
    """`Values` of an OperationRecord."""

    def __init__(self, rec: OperationRecord) -> None:
        self.rec = rec

    @cached_property
    def error(self) -> status_pb2.Status | None:
        """The error of a done operation (what `Operation.error` shows)."""
        if self.rec.done and self.rec.error is not None:
            return status_pb2.Status.FromString(self.rec.error)
        return None

    def get(self, attr: str) -> Any:
        if attr in _TIMES:
            when = getattr(self.rec, attr)
            return None if when is None else to_micros(when) * 1000
        if attr == "error":
            return self.error
        if attr == "error_code":
            return None if self.error is None else int(self.error.code)
        if attr == "error_message":
            return None if self.error is None else str(self.error.message)
        return getattr(self.rec, attr)  # name, done, state, task, labels, numbers


def evaluate(expr: Expr, rec: OperationRecord) -> bool:
    return _eval(expr, RecordView(rec))


def evaluate_values(expr: Expr, values: Values) -> bool:
    """`evaluate` on values a store read without building a record (a list
    scan reads only the columns the filter names)."""
    return _eval(expr, values)


def error_values(done: bool, error: bytes | None) -> tuple[Any, Any, Any]:
    """(`error`, `error_code`, `error_message`) of a record's error blob."""
    if not done or error is None:
        return None, None, None
    status = status_pb2.Status.FromString(error)
    return status, int(status.code), str(status.message)


def _eval(expr: Expr, view: Values) -> bool:
    if isinstance(expr, And):
        return all(_eval(e, view) for e in expr.operands)
    if isinstance(expr, Or):
        return any(_eval(e, view) for e in expr.operands)
    if isinstance(expr, Not):
        return not _eval(expr.operand, view)
    if isinstance(expr, Present):
        return _present(expr.field, view)
    return _compare(expr, view)


def _value(field: Field, view: Values) -> Any:
    value = view.get(field.attr)
    if field.label_key is not None:
        return value.get(field.label_key)
    return value


def _present(field: Field, view: Values) -> bool:
    value = _value(field, view)
    if value is None:
        return False
    if field.kind in (Kind.LABEL, Kind.TIMESTAMP, Kind.MESSAGE):
        return True
    # Scalars are set when not the default: non-empty, non-zero, true.
    return bool(value)


def _compare(expr: Compare, view: Values) -> bool:
    actual = _value(expr.field, view)
    if actual is None:  # absent: every comparison is false
        return False
    want = expr.value
    if isinstance(want, Pattern):
        if expr.op is Op.EQ:
            return want.matches(actual)
        if expr.op is Op.NE:
            return not want.matches(actual)
        return _OPS[expr.op](actual, want.literal)
    if isinstance(want, Timestamp):
        return _OPS[expr.op](actual, want.nanos)
    return _OPS[expr.op](actual, want)
