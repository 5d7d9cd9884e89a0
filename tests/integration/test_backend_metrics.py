"""Store and queue instrumentation on the embedded backends: every primitive
call is timed once, a request_id replay is not a created job, and the queue
depth is read from the embedded queue's table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from longrun_core.backends import Backends, build_backends
from longrun_core.errors import NotFound
from longrun_core.model import OperationRecord
from longrun_core.observability.backend_metrics import (
    BackendMetrics,
    instrument_queue,
    instrument_store,
)
from longrun_core.observability.queue_depth import sqlite_depth_reader
from longrun_core.queue import TaskMessage
from longrun_core.settings import BackendSettings
from tests.contract.records import make_record
from tests.support.clock import FakeClock


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[tuple[Backends, FakeClock]]:
    clock = FakeClock()
    backends = build_backends(BackendSettings(sqlite_path=tmp_path / "m.db"), clock)
    await backends.start()
    try:
        yield backends, clock
    finally:
        await backends.close()


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(f"{name}_count", labels) or 0.0


async def test_store_calls_are_timed_and_replays_are_not_created_jobs(
    embedded: tuple[Backends, FakeClock],
) -> None:
    backends, _ = embedded
    registry = CollectorRegistry()
    created: list[OperationRecord] = []
    instrument_store(backends.store, BackendMetrics(registry), on_created=created.append)
    store_calls = "longrun_store_call_duration_seconds"

    first = make_record(project="p1", request_id="r-1", request_hash="h")
    replay = make_record(project="p1", request_id="r-1", request_hash="h")
    other = make_record(project="p2")
    assert (await backends.store.create(first)).created
    assert not (await backends.store.create(replay)).created
    assert (await backends.store.create(other)).created
    assert [(r.id, r.project) for r in created] == [(first.id, "p1"), (other.id, "p2")]
    assert _count(registry, store_calls, call="insert", result="ok") == 3

    await backends.store.get(first.name)
    with pytest.raises(NotFound):
        await backends.store.get("projects/p1/operations/absent")
    assert _count(registry, store_calls, call="read", result="ok") == 2
    await backends.store.delete(other.name)
    assert _count(registry, store_calls, call="delete", result="ok") == 1
    # get inside update: one read, one replace (the verbs are not timed twice).
    await backends.store.update(first.name, lambda r: None)
    assert _count(registry, store_calls, call="read", result="ok") == 3
    assert _count(registry, store_calls, call="replace", result="ok") == 0


async def test_queue_publishes_are_timed_and_depth_counts_ready_messages(
    embedded: tuple[Backends, FakeClock],
) -> None:
    backends, clock = embedded
    registry = CollectorRegistry()
    instrument_queue(backends.queue, BackendMetrics(registry))
    read = sqlite_depth_reader(backends.queue)
    assert read is not None
    empty = await read()
    assert (empty.ready, empty.oldest_ready_age) == (0, 0.0)

    for i in range(3):
        await backends.queue.publish(TaskMessage(f"projects/p/operations/q{i}", "noop"))
        clock.advance(1.0)
    assert _count(registry, "longrun_queue_call_duration_seconds", call="publish", result="ok") == 3
    depth = await read()
    assert depth.ready == 3
    assert depth.oldest_ready_age == pytest.approx(3.0)

    (taken,) = await backends.queue.receive(1, timeout=1.0)
    depth = await read()
    assert depth.ready == 2  # the received one is leased, not ready
    assert depth.oldest_ready_age == pytest.approx(2.0)
    await taken.ack()
    capped = sqlite_depth_reader(backends.queue, cap=1)
    assert capped is not None
    assert (await capped()).ready == 1


async def test_on_ended_counts_each_write_that_ends_an_operation(tmp_path: Path) -> None:
    from longrun_core import transitions
    from longrun_core.model import State, evolve
    from longrun_core.sqlite.backend import SqliteBackend
    from longrun_core.sqlite.store import SqliteOperationStore
    from tests.contract.records import make_record

    store = SqliteOperationStore(SqliteBackend(tmp_path / "ended.db"))
    await store.start()
    ended: list[State] = []
    instrument_store(
        store, BackendMetrics(CollectorRegistry()), on_ended=lambda r: ended.append(r.state)
    )
    try:
        rec = make_record()
        await store.create(rec)
        now = rec.create_time + timedelta(seconds=1)
        await store.update(
            rec.name, lambda r: transitions.request_cancel(r, now=now, retention=timedelta(days=1))
        )
        # A write to an operation already done is not another end.
        await store.update(rec.name, lambda r: evolve(r, labels={"seen": "yes"}))
        assert (await store.get(rec.name)).labels == {"seen": "yes"}
        assert ended == [State.CANCELLED]
    finally:
        await store.close()
