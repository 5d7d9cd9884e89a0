"""The SQLite store's record cache: a row already converted is not converted
again, and a changed row never hits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from longrun_core.clock import to_micros
from longrun_core.model import RECORD_OVERHEAD, OperationRecord, State, evolve
from longrun_core.sqlite.store import _FIELDS, COLUMNS, RecordCache, to_row
from tests.contract.records import make_record


def row_of(rec: OperationRecord) -> tuple[Any, ...]:
    row = to_row(rec)
    return tuple(row[c] for c in COLUMNS[: len(_FIELDS)])


def test_the_same_row_gives_the_same_record_object() -> None:
    cache = RecordCache()
    rec = make_record(version=3)
    first = cache.of(row_of(rec))
    assert first == rec
    assert cache.of(row_of(rec)) is first


def test_a_new_version_is_converted_again() -> None:
    cache = RecordCache()
    rec = make_record(version=3)
    cache.of(row_of(rec))
    newer = evolve(rec, version=4, state=State.RUNNING)
    assert cache.of(row_of(newer)) == newer


def test_the_same_version_with_another_update_time_is_converted_again() -> None:
    """An operation deleted and stored again under its id restarts at version 1."""
    cache = RecordCache()
    rec = make_record(version=1)
    cache.of(row_of(rec))
    again = evolve(rec, update_time=rec.update_time + timedelta(seconds=1), labels={"x": "y"})
    assert cache.of(row_of(again)) == again


def test_the_least_recently_used_record_is_evicted_at_capacity() -> None:
    cache = RecordCache(capacity=2)
    a, b, c = (make_record(version=1) for _ in range(3))
    first_a = cache.of(row_of(a))
    cache.of(row_of(b))
    assert cache.of(row_of(a)) is first_a  # a is now the most recent
    cache.of(row_of(c))  # evicts b
    assert cache.of(row_of(a)) is first_a
    assert len(cache._records) == 2
    assert b.id not in cache._records


def test_a_record_put_after_its_write_hits_when_its_row_is_read() -> None:
    cache = RecordCache()
    rec = make_record(version=2)
    cache.put(rec)
    assert cache.of(row_of(rec)) is rec


def test_get_answers_only_for_the_exact_version_and_update_time() -> None:
    cache = RecordCache()
    rec = make_record(version=5)
    cache.put(rec)
    update_us = to_micros(rec.update_time)
    assert cache.get(rec.id, 5, update_us) is rec
    assert cache.get(rec.id, 6, update_us) is None
    assert cache.get(rec.id, 5, update_us + 1) is None
    assert cache.get("other", 5, update_us) is None


def test_records_are_evicted_by_bytes_as_well_as_by_count() -> None:
    """Records holding 200 KiB of params each: a 2 MiB cache keeps ten, not 4,096."""
    cache = RecordCache(max_bytes=2 * 1024 * 1024)
    big = [
        make_record(version=1, params=b"\x0a" * (200 * 1024), response=b"r" * 100) for _ in range(8)
    ]
    for rec in big:
        cache.put(rec)
    kept = [rec.id for rec in big if rec.id in cache._records]
    assert kept == [rec.id for rec in big[-10:]]
    assert cache._records.bytes == sum(rec.approx_bytes() for rec in big[-10:])
    assert cache._records.bytes <= 2 * 1024 * 1024


def test_a_record_too_big_for_the_cache_is_not_kept() -> None:
    cache = RecordCache(max_bytes=1024 * 1024)  # keeps records up to 128 KiB
    small = make_record(version=1)
    big = make_record(version=1, params=b"\x0a" * (200 * 1024))
    cache.put(small)
    cache.put(big)
    assert small.id in cache._records
    assert big.id not in cache._records


def test_a_record_counts_its_blobs_labels_and_a_fixed_overhead() -> None:
    rec = make_record(params=b"p" * 1000, response=b"r" * 500, labels={"k": "v"})
    assert rec.approx_bytes() == RECORD_OVERHEAD + 1000 + 500 + (1 + 1 + 100)
