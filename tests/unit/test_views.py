from __future__ import annotations

from dataclasses import replace

from google.protobuf import struct_pb2

from longrun_core.model import State, pack
from longrun_server.views import OperationViews
from tests.contract.records import make_record


def test_a_view_is_built_once_per_version() -> None:
    views = OperationViews()
    rec = replace(make_record(), version=1)
    first = views.of(rec)
    assert views.of(rec) is first
    assert (views.hits, views.misses) == (1, 1)
    newer = replace(rec, version=2, state=State.RUNNING, attempt=1)
    second = views.of(newer)
    assert second is not first
    assert second == newer.to_operation()
    assert views.misses == 2


def test_views_are_evicted_least_recently_used_first() -> None:
    views = OperationViews(capacity=2)
    a, b, c = (replace(make_record(), version=1) for _ in range(3))
    view_a = views.of(a)
    views.of(b)
    assert views.of(a) is view_a  # a is now the most recent
    views.of(c)  # evicts b
    assert views.of(a) is view_a
    misses = views.misses
    views.of(b)
    assert views.misses == misses + 1


def test_views_are_bounded_in_bytes() -> None:
    """Operations holding a 100 KiB result each: a 1 MiB view cache keeps about
    ten of them, whatever its entry capacity."""
    views = OperationViews(capacity=20_000, max_bytes=1024 * 1024)
    result = pack(struct_pb2.Value(string_value="x" * 100_000))
    recs = [
        replace(make_record(), version=3, state=State.SUCCEEDED, response=result) for _ in range(20)
    ]
    for rec in recs:
        views.of(rec)
    cached = [rec.id for rec in recs if rec.id in views._views]
    assert 8 <= len(cached) <= 10
    assert cached == [rec.id for rec in recs[-len(cached) :]]  # the most recent ones
    assert views._views.bytes <= 1024 * 1024
    misses = views.misses
    views.of(recs[0])  # evicted: built again
    assert views.misses == misses + 1


def test_a_view_comes_with_its_serialized_size_computed_once() -> None:
    views = OperationViews()
    rec = replace(make_record(), version=2)
    op, size = views.sized(rec)
    assert size == op.ByteSize() == len(op.SerializeToString())
    assert views.sized(rec) == (op, size)
    assert views.sized(rec)[0] is op
    assert (views.hits, views.misses) == (2, 1)
