"""Latency figures on the emulators, printed (run with -s to see them):

* watch wake-up: store.update returned -> a waiter's `watch.changed()` returned,
  for a waiter on another store instance (woken by the Firestore listener:
  the server/worker case) and on the writing store (woken locally);
* queue: publish() called -> receive() returned the message.

The assertions are loose sanity bounds; the numbers are what matters."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from longrun_core.google.firestore_store import FirestoreOperationStore
from longrun_core.model import OperationRecord
from longrun_core.queue import TaskMessage
from tests.contract.google_backends import (
    fresh_project,
    make_firestore_store,
    make_pubsub_queue,
    percentiles,
    require_emulators,
)
from tests.contract.records import make_record

pytestmark = [pytest.mark.google, pytest.mark.slow]

SAMPLES = 200


def _report(capsys: pytest.CaptureFixture[str], what: str, samples: list[float]) -> None:
    p50, p99 = percentiles(samples)
    with capsys.disabled():
        print(
            f"\n{what}: n={len(samples)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
            f"max={max(samples) * 1000:.1f} ms"
        )


def _bump(r: OperationRecord) -> OperationRecord:
    return replace(r, progress_percent=(r.progress_percent + 1) % 100)


async def _wake_latencies(
    waiting: FirestoreOperationStore, writing: FirestoreOperationStore
) -> tuple[list[float], list[float]]:
    """(update returned -> woke, update called -> woke) per sample."""
    rec = make_record()
    await writing.create(rec)
    samples: list[float] = []
    from_start: list[float] = []
    async with waiting.watch(rec.name) as watch:
        for _ in range(SAMPLES):
            while await watch.changed(0.0):  # drain anything left over
                pass
            woke = asyncio.get_running_loop().create_future()

            async def wait(woke: asyncio.Future[float] = woke) -> None:
                assert await watch.changed(10.0)
                woke.set_result(time.perf_counter())

            waiter = asyncio.create_task(wait())
            await asyncio.sleep(0)  # the waiter is waiting now
            started = time.perf_counter()
            await writing.update(rec.name, _bump)
            done = time.perf_counter()
            await waiter
            samples.append(max(0.0, woke.result() - done))
            from_start.append(woke.result() - started)
    return samples, from_start


async def test_watch_wake_up_latency(capsys: pytest.CaptureFixture[str]) -> None:
    require_emulators()
    project = fresh_project()
    server = await make_firestore_store(project=project)
    worker = await make_firestore_store(project=project)
    try:
        remote, remote_total = await _wake_latencies(server, worker)
        local, local_total = await _wake_latencies(worker, worker)
    finally:
        await server.close()
        await worker.close()
    _report(capsys, "watch wake-up after update returned, other store (listener)", remote)
    _report(capsys, "watch wake-up after update was called, other store", remote_total)
    _report(capsys, "watch wake-up after update returned, same store (local)", local)
    _report(capsys, "watch wake-up after update was called, same store", local_total)
    assert percentiles(remote)[0] < 1.0
    assert percentiles(local)[1] < 0.5


async def test_publish_to_receive_latency(capsys: pytest.CaptureFixture[str]) -> None:
    require_emulators()
    q = await make_pubsub_queue(visibility_timeout=30.0, concurrency=4)
    try:
        assert await q.receive(4, 0.2) == []  # the streaming pull is open now
        latencies: list[float] = []
        publish_times: list[float] = []
        for i in range(SAMPLES):
            msg = TaskMessage(f"operations/lat{i}", "noop")
            receiving = asyncio.create_task(q.receive(1, 10.0))
            await asyncio.sleep(0)
            started = time.perf_counter()
            await q.publish(msg)
            publish_times.append(time.perf_counter() - started)
            got = await receiving
            latencies.append(time.perf_counter() - started)
            assert [d.message for d in got] == [msg]
            await got[0].ack()
    finally:
        await q.close()
    _report(capsys, "queue publish() awaited", publish_times)
    _report(capsys, "queue publish -> receive", latencies)
    assert percentiles(latencies)[0] < 1.0
