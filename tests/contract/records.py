"""Records for the contract tests."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from google.protobuf import struct_pb2

from longrun_core.model import OperationRecord, State

BASE = datetime(2026, 1, 1, tzinfo=UTC)
_seq = itertools.count()


def make_record(**changes: object) -> OperationRecord:
    n = next(_seq)
    params = struct_pb2.Struct()
    params.update({"n": n, "text": "héllo"})
    created = BASE + timedelta(seconds=n)
    rec = OperationRecord(
        id=f"op{n:06d}",
        task="noop",
        params=params.SerializeToString(),
        state=State.QUEUED,
        create_time=created,
        update_time=created,
        labels={"env": "test"},
        max_attempts=3,
        dispatch_due_time=created,
    )
    return replace(rec, **changes)  # type: ignore[arg-type]
