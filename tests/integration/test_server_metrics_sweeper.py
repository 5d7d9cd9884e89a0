"""`longrun_leases_expired_total`: what the sweeper takes back from a silent
worker is counted once per operation, through the sweep's real path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from longrun_core import transitions
from longrun_core.model import State
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_server.dispatcher import Dispatcher
from longrun_server.metrics import ServerMetrics, count_lease_expiries
from tests.contract.records import make_record
from tests.support.clock import FakeClock

LEASE = timedelta(seconds=10)
RETENTION = timedelta(seconds=60)


@pytest.fixture
async def parts(
    tmp_path: Path,
) -> AsyncIterator[tuple[SqliteOperationStore, Dispatcher, FakeClock]]:
    backend = SqliteBackend(tmp_path / "sweep.db")
    store, queue = SqliteOperationStore(backend), SqliteTaskQueue(backend)
    await store.start()
    await queue.start()
    clock = FakeClock(datetime.now(UTC))
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(hours=1),
        retention=RETENTION,
        sweep_interval=0.05,
        monotonic=clock.monotonic,
    )
    try:
        yield store, dispatcher, clock
    finally:
        await queue.close()
        await store.close()


async def test_each_lease_taken_back_is_counted_once(
    parts: tuple[SqliteOperationStore, Dispatcher, FakeClock],
) -> None:
    store, dispatcher, clock = parts
    registry = CollectorRegistry()
    count_lease_expiries(dispatcher, ServerMetrics(registry))

    def expired() -> float:
        return registry.get_sample_value("longrun_leases_expired_total") or 0.0

    names = []
    for _ in range(2):
        rec = (await store.create(make_record(dispatch_due_time=None))).record
        held = await store.update(
            rec.name,
            lambda r: transitions.claim(
                r, worker="gone", now=clock.now(), lease=LEASE, retention=RETENTION
            ),
        )
        assert held.state is State.RUNNING
        names.append(held.name)
    await dispatcher.sweep_once()  # first sighting: the silence starts
    assert expired() == 0
    clock.advance(LEASE.total_seconds() - 1)
    await dispatcher.sweep_once()
    assert expired() == 0
    clock.advance(1)
    await dispatcher.sweep_once()
    assert expired() == 2
    assert [(await store.get(n)).state for n in names] == [State.QUEUED] * 2
    clock.advance(LEASE.total_seconds() * 3)
    await dispatcher.sweep_once()  # nothing held any more: nothing more counted
    assert expired() == 2
