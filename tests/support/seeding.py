"""Fill an embedded database with many operations fast (tests and benchmarks
that need a large table): rows made by the store's own `to_row`, inserted
in one transaction, the list indexes built once at the end."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from google.protobuf import struct_pb2
from google.rpc import status_pb2

from longrun_core.clock import to_micros
from longrun_core.model import OperationRecord, State, pack
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.list_scan import ensure_list_indexes
from longrun_core.sqlite.store import COLUMNS, migrate, to_row


def finished(index: int, created: datetime) -> OperationRecord:
    """A finished noop: two in three succeeded, one failed with "boom"."""
    common = {
        "id": f"seed{index:09d}",
        "task": "noop",
        "params": struct_pb2.Struct().SerializeToString(),
        "create_time": created,
        "update_time": created,
        "labels": {"batch": str(index % 10)},
        "attempt": 1,
        "max_attempts": 1,
        "progress_percent": 100,
        "version": 3,
    }
    if index % 3 == 0:
        error = status_pb2.Status(code=13, message="boom").SerializeToString()
        return OperationRecord(state=State.FAILED, error=error, **common)  # type: ignore[arg-type]
    response = pack(struct_pb2.Struct())
    return OperationRecord(state=State.SUCCEEDED, response=response, **common)  # type: ignore[arg-type]


def seed_operations(
    path: Path, count: int, *, newest: datetime, extra: Sequence[OperationRecord] = ()
) -> None:
    """`count` finished operations created one microsecond apart, the newest
    at `newest` (ids `seed000000000`, ... oldest first), plus `extra` as
    they are. Creates the database if needed; run it before the server
    starts (or while nothing else writes)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        migrate(conn)  # the columns added since SCHEMA
        marks = ", ".join(["?"] * len(COLUMNS))
        sql = f"INSERT INTO operations ({', '.join(COLUMNS)}) VALUES ({marks})"
        conn.execute("BEGIN")
        conn.executemany(sql, _rows(count, newest))
        conn.executemany(sql, ([to_row(r)[c] for c in COLUMNS] for r in extra))
        conn.execute("COMMIT")
        ensure_list_indexes(conn)
    finally:
        conn.close()


def _rows(count: int, newest: datetime) -> Iterator[list[object]]:
    """Rows from two templates (succeeded, failed), with id, times and labels set."""
    oldest = newest - timedelta(microseconds=count - 1)
    templates = [[to_row(finished(i, oldest))[c] for c in COLUMNS] for i in (0, 1)]
    at = {c: COLUMNS.index(c) for c in ("id", "create_us", "update_us", "labels")}
    base_us = to_micros(oldest)
    for i in range(count):
        row = list(templates[0 if i % 3 == 0 else 1])
        row[at["id"]] = f"seed{i:09d}"
        row[at["create_us"]] = row[at["update_us"]] = base_us + i
        row[at["labels"]] = f'{{"batch": "{i % 10}"}}'
        yield row
