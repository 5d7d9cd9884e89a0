"""The fields a filter may name, their types, and where they live.

`attr` names the attribute of `longrun_core.filtering.evaluate.RecordView` that holds
the value in memory; `column` the column of the SQLite `operations` table
(None: not stored there, so only `matches` can decide it).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    STRING = "a string"
    INT = "a number"
    BOOL = "a bool"
    ENUM = "an enum"
    TIMESTAMP = "a timestamp"
    MAP = "a map"
    LABEL = "a label value"
    MESSAGE = "a message"


@dataclass(frozen=True, slots=True)
class Field:
    #: Canonical name, as printed in `Filter.text`.
    path: str
    kind: Kind
    attr: str
    column: str | None
    #: The column may be NULL (the field is absent on some records).
    nullable: bool = False
    #: For `labels.<key>`.
    label_key: str | None = None


LABEL_KEY = re.compile(r"[A-Za-z0-9_-]{1,63}")
LABELS_PREFIXES = ("labels.", "metadata.labels.")

_TABLE = (
    Field("name", Kind.STRING, "name", "id"),
    Field("done", Kind.BOOL, "done", "done"),
    Field("metadata.state", Kind.ENUM, "state", "state"),
    Field("metadata.task", Kind.STRING, "task", "task"),
    Field("metadata.attempt", Kind.INT, "attempt", "attempt"),
    Field("metadata.max_attempts", Kind.INT, "max_attempts", "max_attempts"),
    Field("metadata.progress_percent", Kind.INT, "progress_percent", "progress_percent"),
    Field("metadata.progress_message", Kind.STRING, "progress_message", "progress_message"),
    Field("metadata.cancel_requested", Kind.BOOL, "cancel_requested", "cancel_requested"),
    Field("metadata.create_time", Kind.TIMESTAMP, "create_time", "create_us"),
    Field("metadata.update_time", Kind.TIMESTAMP, "update_time", "update_us"),
    Field("metadata.start_time", Kind.TIMESTAMP, "start_time", "start_us", nullable=True),
    Field("metadata.end_time", Kind.TIMESTAMP, "end_time", "end_us", nullable=True),
    Field("metadata.expire_time", Kind.TIMESTAMP, "expire_time", "expire_us", nullable=True),
    Field("labels", Kind.MAP, "labels", "labels"),
    Field("error", Kind.MESSAGE, "error", "error_code", nullable=True),
    Field("error.code", Kind.INT, "error_code", "error_code", nullable=True),
    Field("error.message", Kind.STRING, "error_message", None, nullable=True),
)
FIELDS: dict[str, Field] = {f.path: f for f in _TABLE}
FIELDS["metadata.labels"] = FIELDS["labels"]

KNOWN_FIELDS = ", ".join([f.path for f in _TABLE] + ["labels.<key>", "metadata.labels.<key>"])


def label_field(key: str) -> Field:
    """`labels.<key>`; the caller has checked `key` against LABEL_KEY."""
    return Field(f"labels.{key}", Kind.LABEL, "labels", "labels", nullable=True, label_key=key)
