"""What a Firestore list scan reads to check the part of a filter the query
did not push down: a projection of the fields the filter names, checked as
the filter's `Values` without building a record."""

from __future__ import annotations

from dataclasses import MISSING, fields
from datetime import UTC, datetime
from typing import Any

from longrun_core.clock import from_micros, to_micros
from longrun_core.filtering.evaluate import error_values
from longrun_core.model import OperationRecord, State
from longrun_core.names import DEFAULT_PROJECT, operation_name
from longrun_core.store import Cursor

#: The document fields each filter `attr` (longrun_core.filtering.fields) is read from.
_ATTR_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("id", "project"),
    "done": ("state",),
    "error": ("state", "error"),
    "error_code": ("state", "error"),
    "error_message": ("state", "error"),
}
#: What a record holds for a field its document lacks (written by an older version).
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(OperationRecord) if f.default is not MISSING
}
_TIMES = frozenset({"create_time", "update_time", "start_time", "end_time", "expire_time"})
_ERROR_ATTRS = {"error": 0, "error_code": 1, "error_message": 2}


def value_fields(attrs: frozenset[str]) -> list[str]:
    """The fields to project for a filter that reads `attrs` (with the
    position fields `id` and `create_time`)."""
    wanted = {"id", "create_time"}
    for attr in attrs:
        wanted.update(_ATTR_FIELDS.get(attr, (attr,)))
    return sorted(wanted)


class DocValues:
    """A filter's `Values` (longrun_core.filtering.evaluate) of one projected document."""

    __slots__ = ("_doc", "_error")

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc
        self._error: tuple[Any, Any, Any] | None = None

    def get(self, attr: str) -> Any:
        doc = self._doc
        if attr in _TIMES:
            when = doc.get(attr)
            return None if when is None else _micros(when) * 1000
        if attr in _ERROR_ATTRS:
            if self._error is None:
                error = doc.get("error")
                done = State(int(doc["state"])).done
                self._error = error_values(done, None if error is None else bytes(error))
            return self._error[_ERROR_ATTRS[attr]]
        if attr == "name":
            return operation_name(str(doc.get("project") or DEFAULT_PROJECT), str(doc["id"]))
        if attr == "done":
            return State(int(doc["state"])).done
        if attr == "state":
            return State(int(doc["state"]))
        if attr == "labels":
            return {str(k): str(v) for k, v in (doc.get("labels") or {}).items()}
        if attr == "cancel_requested":
            return bool(doc.get("cancel_requested"))
        return doc.get(attr, _DEFAULTS.get(attr))


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return to_micros(when)


def doc_position(doc: dict[str, Any]) -> Cursor:
    """The list position of a projected document."""
    return Cursor(from_micros(_micros(doc["create_time"])), str(doc["id"]))
