"""The dispatcher and its sweeper against the real SQLite store and queue, on
a FakeClock: publishing what was never published, taking back expired
leases, and deleting expired operations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.clock import uuid_ids
from longrun_core.errors import NotFound, Unavailable
from longrun_core.model import OperationRecord, State, pack
from longrun_core.queue import TaskMessage, TaskQueue, Transition
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import TaskContext, TaskRegistry, TaskSet
from longrun_server.dispatcher import Dispatcher
from longrun_server.jobs_service import JobsService
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.clock import FakeClock
from tests.support.queues import ForwardingQueue
from tests.support.waiting import wait_until

REDISPATCH = timedelta(seconds=30)
RETENTION = timedelta(seconds=10)
LEASE = timedelta(seconds=10)

invocations: list[tuple[str, int]] = []
tasks = TaskSet()


@tasks.task("noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    invocations.append((ctx.operation, ctx.attempt))
    return ctx.params


REGISTRY = TaskRegistry(list(tasks.specs.values()))


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[tuple[str, int]]]:
    invocations.clear()
    yield invocations
    invocations.clear()


class WatchedQueue(ForwardingQueue):
    """Records what is published; can be told to fail publishing."""

    def __init__(self, inner: TaskQueue) -> None:
        super().__init__(inner)
        self.published: list[TaskMessage] = []
        self.unavailable = False

    async def publish(self, message: TaskMessage) -> None:
        if self.unavailable:
            raise Unavailable("queue unreachable (test)")
        await self.inner.publish(message)
        self.published.append(message)


@dataclass
class Env:
    store: SqliteOperationStore
    queue: WatchedQueue
    clock: FakeClock
    dispatcher: Dispatcher
    jobs: JobsService

    async def create(self, **changes: Any) -> OperationRecord:
        """Store an operation the way CreateJob does, then 'crash' before publishing."""
        params = struct_pb2.Struct()
        params.update({"n": 1})
        rec = self.jobs.new_record(jobs_pb2.CreateJobRequest(task="noop", params=params))
        return (await self.store.create(replace(rec, **changes))).record

    async def drain(self) -> Worker:
        """Run a worker until the queue is empty and nothing is in flight."""
        worker = Worker(
            store=self.store,
            queue=self.queue,
            registry=REGISTRY,
            settings=WorkerSettings(lease=2.0, heartbeat=0.5, receive_timeout=0.2),
        )
        await asyncio.wait_for(worker.run(burst=True), 15)
        return worker

    async def exists(self, rec: OperationRecord) -> bool:
        try:
            await self.store.get(rec.name)
        except NotFound:
            return False
        return True

    async def update(self, rec: OperationRecord, transition: Transition) -> OperationRecord:
        return await self.store.update(rec.name, transition)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
    store = SqliteOperationStore(backend)
    queue = WatchedQueue(SqliteTaskQueue(backend, visibility_timeout=5.0))
    await store.start()
    await queue.start()
    clock = FakeClock(datetime.now(UTC))
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=REDISPATCH,
        retention=RETENTION,
        sweep_interval=0.05,
        monotonic=clock.monotonic,
        # The sweeper's own behaviour on the fake clock; the on-time timers
        # (real time) have their own test.
        lookahead=timedelta(0),
    )
    jobs = JobsService(store, dispatcher, REGISTRY, clock=clock, ids=uuid_ids)
    try:
        yield Env(store, queue, clock, dispatcher, jobs)
    finally:
        await dispatcher.stop()
        await queue.close()
        await store.close()


def claim(clock: FakeClock, lease: timedelta = LEASE) -> Transition:
    return lambda r: transitions.claim(
        r, worker="gone", now=clock.now(), lease=lease, retention=RETENTION
    )


# ---- publishing what never reached the queue ----


async def test_work_due_within_the_lookahead_is_published_on_time_by_a_timer(env: Env) -> None:
    env.dispatcher.lookahead = timedelta(seconds=1)
    soon = await env.create(dispatch_due_time=env.clock.now() + timedelta(seconds=0.3))
    later = await env.create(dispatch_due_time=env.clock.now() + timedelta(seconds=5))
    assert await env.dispatcher.sweep_once() == 0  # nothing due yet
    assert env.queue.published == [] and env.dispatcher.pending_timers == 1
    assert await env.dispatcher.sweep_once() == 0  # no second timer for the same one
    assert env.dispatcher.pending_timers == 1
    await wait_until(lambda: env.queue.published, 5, description="the timer's publish")
    assert env.queue.published == [TaskMessage(soon.name, "noop", 0)]
    marked = await env.store.get(soon.name)
    assert marked.dispatch_due_time == env.clock.now() + REDISPATCH
    assert env.dispatcher.pending_timers == 0
    assert (await env.store.get(later.name)).dispatch_due_time == later.dispatch_due_time


async def test_stop_cancels_the_pending_timers(env: Env) -> None:
    env.dispatcher.lookahead = timedelta(seconds=10)
    await env.create(dispatch_due_time=env.clock.now() + timedelta(seconds=0.5))
    await env.dispatcher.sweep_once()
    assert env.dispatcher.pending_timers == 1
    await env.dispatcher.stop()
    assert env.dispatcher.pending_timers == 0
    await asyncio.sleep(0.7)
    assert env.queue.published == []


async def test_an_operation_stored_but_never_published_is_published_once_due(env: Env) -> None:
    rec = await env.create()
    assert rec.dispatch_due_time == env.clock.now() + REDISPATCH

    await env.drain()  # nothing on the queue: the 'crash' lost the publish
    assert invocations == []

    env.clock.advance(REDISPATCH.total_seconds() - 0.000001)
    assert await env.dispatcher.sweep_once() == 0
    assert env.queue.published == []

    env.clock.advance(0.000001)
    assert await env.dispatcher.sweep_once() == 1
    assert env.queue.published == [TaskMessage(rec.name, "noop", 0)]
    marked = await env.store.get(rec.name)
    assert marked.state is State.QUEUED
    assert marked.dispatch_due_time == env.clock.now() + REDISPATCH  # not again right away
    assert await env.dispatcher.sweep_once() == 0

    await env.drain()

    done = await env.store.get(rec.name)
    assert done.state is State.SUCCEEDED
    assert invocations == [(rec.name, 1)]
    result = struct_pb2.Struct()
    assert done.to_operation().response.Unpack(result)
    assert result["n"] == 1
    assert len(env.queue.published) == 1


async def test_a_failed_publish_is_logged_and_left_to_the_sweeper(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    rec = await env.create()
    env.queue.unavailable = True

    with caplog.at_level(logging.WARNING, logger="longrun.dispatcher"):
        await env.dispatcher.dispatch(rec)  # does not raise

    assert rec.name in caplog.text
    assert "sweeper" in caplog.text
    assert await env.store.get(rec.name) == rec  # still due when it was

    env.queue.unavailable = False
    env.clock.advance(REDISPATCH.total_seconds())
    assert await env.dispatcher.sweep_once() == 1
    await env.drain()
    assert (await env.store.get(rec.name)).state is State.SUCCEEDED


async def test_dispatching_a_deleted_operation_is_harmless(env: Env) -> None:
    rec = await env.create()
    await env.store.delete(rec.name)

    await env.dispatcher.dispatch(rec)  # publishes; marking finds nothing; no error
    await env.drain()  # the worker finds nothing and acks

    assert invocations == []
    assert not await env.exists(rec)


# ---- taking back expired leases ----


async def test_a_lease_seen_silent_for_its_duration_is_requeued_and_published(env: Env) -> None:
    rec = await env.update(await env.create(), claim(env.clock))
    assert await env.dispatcher.sweep_once() == 0  # first seen: its silence starts now

    env.clock.advance(LEASE.total_seconds() - 0.000001)
    assert await env.dispatcher.sweep_once() == 0
    assert (await env.store.get(rec.name)).lease_owner == "gone"

    env.clock.advance(0.000001)
    assert await env.dispatcher.sweep_once() == 1

    requeued = await env.store.get(rec.name)
    assert (requeued.state, requeued.lease_owner, requeued.attempt) == (State.QUEUED, None, 1)
    assert env.queue.published == [TaskMessage(rec.name, "noop", 1)]
    await env.drain()
    done = await env.store.get(rec.name)
    assert (done.state, done.attempt) == (State.SUCCEEDED, 2)
    assert invocations == [(rec.name, 2)]


async def test_a_lapsed_lease_on_the_last_attempt_fails_the_operation(env: Env) -> None:
    rec = await env.update(await env.create(max_attempts=1), claim(env.clock))
    assert await env.dispatcher.sweep_once() == 0

    env.clock.advance(LEASE.total_seconds())
    assert await env.dispatcher.sweep_once() == 1

    failed = await env.store.get(rec.name)
    assert failed.state is State.FAILED
    error = failed.to_operation().error
    assert error.code == code_pb2.ABORTED
    assert "attempt 1 of 1" in error.message
    assert env.queue.published == []
    assert await env.dispatcher.sweep_once() == 0


async def test_a_lapsed_lease_after_a_cancel_request_ends_cancelled(env: Env) -> None:
    rec = await env.update(await env.create(), claim(env.clock))
    await env.update(
        rec, lambda r: transitions.request_cancel(r, now=env.clock.now(), retention=RETENTION)
    )
    assert await env.dispatcher.sweep_once() == 0

    env.clock.advance(LEASE.total_seconds())
    assert await env.dispatcher.sweep_once() == 1

    cancelled = await env.store.get(rec.name)
    assert cancelled.state is State.CANCELLED
    assert cancelled.to_operation().error.code == 1
    assert env.queue.published == []


GRACE = 15.0  # the dispatcher's default outage_lease_grace


def store_down(patch: pytest.MonkeyPatch, store: SqliteOperationStore, why: str) -> None:
    """Every read a sweep makes fails as in a storage outage."""

    async def leased(limit: int) -> list[OperationRecord]:
        raise Unavailable(why)

    async def due(now: datetime, limit: int) -> list[OperationRecord]:
        raise Unavailable(why)

    patch.setattr(store, "leased", leased)
    patch.setattr(store, "due_for_dispatch", due)


async def test_leases_that_expired_during_an_outage_are_left_to_their_workers_a_while(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage outage stops renewals as surely as a dead worker: once the
    store is back, a lease is left to its holder for `outage_lease_grace`
    (15 s), and its silence is measured afresh after that: it is taken back
    only once the sweeper has seen it unchanged for its whole lease after the
    grace, on the sweeper's monotonic clock."""
    running = await env.update(await env.create(), claim(env.clock))
    assert await env.dispatcher.sweep_once() == 0  # first seen: its silence starts

    env.clock.advance(LEASE.total_seconds() / 2)
    with monkeypatch.context() as patch:
        store_down(patch, env.store, "disk full (test)")
        with pytest.raises(Unavailable):
            await env.dispatcher.sweep_once()
        env.clock.advance(LEASE.total_seconds())  # the outage outlasts the lease
        with pytest.raises(Unavailable):
            await env.dispatcher.sweep_once()

    # Store back: 15 s of silence seen so far, more than the lease, yet kept.
    assert await env.dispatcher.sweep_once() == 0
    assert (await env.store.get(running.name)).state is State.RUNNING
    env.clock.advance(GRACE - 0.001)
    assert await env.dispatcher.sweep_once() == 0
    env.clock.advance(0.001)  # the grace is over: seen again for the first time
    assert await env.dispatcher.sweep_once() == 0
    assert (await env.store.get(running.name)).lease_owner == "gone"
    env.clock.advance(LEASE.total_seconds() - 0.000001)
    assert await env.dispatcher.sweep_once() == 0
    assert env.queue.published == []

    env.clock.advance(0.000001)  # a whole lease of silence after the grace
    assert await env.dispatcher.sweep_once() == 1
    requeued = await env.store.get(running.name)
    assert (requeued.state, requeued.lease_owner) == (State.QUEUED, None)
    assert env.queue.published == [TaskMessage(running.name, "noop", 1)]


async def test_a_renewal_within_the_grace_keeps_the_operation_with_its_worker(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await env.update(await env.create(), claim(env.clock))
    assert await env.dispatcher.sweep_once() == 0

    with monkeypatch.context() as patch:
        store_down(patch, env.store, "read-only (test)")
        env.clock.advance(LEASE.total_seconds() + 1)  # its lease lapsed in the outage
        with pytest.raises(Unavailable):
            await env.dispatcher.sweep_once()
    assert await env.dispatcher.sweep_once() == 0

    env.clock.advance(2)  # the worker renews within the grace
    rec = await env.update(
        running,
        lambda r: transitions.renew(r, worker="gone", attempt=1, now=env.clock.now(), lease=LEASE),
    )
    env.clock.advance(GRACE)  # past the grace
    for _ in range(6):  # and it goes on renewing every 4 s of its 10 s lease
        assert await env.dispatcher.sweep_once() == 0
        env.clock.advance(4)
        rec = await env.update(
            rec,
            lambda r: transitions.renew(
                r, worker="gone", attempt=1, now=env.clock.now(), lease=LEASE
            ),
        )
    assert await env.dispatcher.sweep_once() == 0
    assert await env.store.get(running.name) == rec
    assert rec.state is State.RUNNING
    assert env.queue.published == []


async def test_a_renewing_holder_is_never_taken_over_whatever_its_clock_says(env: Env) -> None:
    """Its clock runs a minute behind the sweeper's, so every lease_expire_time
    it writes is long past; it renews every 4 s of a 10 s lease: never lost."""
    behind = FakeClock(env.clock.now() - timedelta(seconds=60))
    rec = await env.update(await env.create(), claim(behind))
    for _ in range(10):
        assert await env.dispatcher.sweep_once() == 0
        env.clock.advance(4)
        behind.advance(4)
        rec = await env.update(
            rec,
            lambda r: transitions.renew(r, worker="gone", attempt=1, now=behind.now(), lease=LEASE),
        )
    assert rec.lease_expire_time is not None and rec.lease_expire_time < env.clock.now()
    assert await env.dispatcher.sweep_once() == 0
    assert (await env.store.get(rec.name)).state is State.RUNNING
    assert env.queue.published == []


async def test_a_silent_holder_whose_clock_is_ahead_is_taken_over_after_its_lease(
    env: Env,
) -> None:
    ahead = FakeClock(env.clock.now() + timedelta(seconds=60))
    rec = await env.update(await env.create(), claim(ahead))  # lease "ends" in 70 s
    assert await env.dispatcher.sweep_once() == 0

    env.clock.advance(LEASE.total_seconds())  # 10 s of silence, 60 s before its stamp
    assert await env.dispatcher.sweep_once() == 1
    requeued = await env.store.get(rec.name)
    assert (requeued.state, requeued.attempt) == (State.QUEUED, 1)
    assert env.queue.published == [TaskMessage(rec.name, "noop", 1)]


async def test_leases_are_read_once_per_lease_check_interval(env: Env) -> None:
    checker = Dispatcher(
        env.store,
        env.queue,
        clock=env.clock,
        redispatch_after=REDISPATCH,
        retention=RETENTION,
        sweep_interval=0.05,
        lease_check_interval=5,
        monotonic=env.clock.monotonic,
    )
    rec = await env.update(await env.create(), claim(env.clock))
    assert await checker.check_leases() == 0  # first look: silence starts
    env.clock.advance(LEASE.total_seconds())
    assert await checker.check_leases() == 1  # 10 s later: lapsed
    other = await env.update(await env.create(), claim(env.clock))
    env.clock.advance(4.9)
    assert await checker.check_leases() == 0  # too soon to look again: not even seen
    env.clock.advance(0.1)
    assert await checker.check_leases() == 0  # seen now, for the first time
    env.clock.advance(LEASE.total_seconds())
    assert await checker.check_leases() == 1
    assert {m.operation for m in env.queue.published} == {rec.name, other.name}


# ---- deleting expired operations ----


async def test_expired_finished_operations_are_deleted_and_the_rest_kept(env: Env) -> None:
    start = env.clock.now()
    cancelled = await env.update(
        await env.create(),
        lambda r: transitions.request_cancel(r, now=env.clock.now(), retention=RETENTION),
    )
    assert cancelled.expire_time == start + RETENTION
    running = await env.update(await env.create(), claim(env.clock, lease=timedelta(days=1)))
    queued = await env.create()
    succeeded = await env.update(await env.create(), claim(env.clock))
    env.clock.advance(5)
    succeeded = await env.update(
        succeeded,
        lambda r: transitions.finish(
            r,
            worker="gone",
            attempt=1,
            now=env.clock.now(),
            retention=RETENTION,
            response=pack(struct_pb2.Struct()),
        ),
    )
    assert succeeded.expire_time == start + timedelta(seconds=5) + RETENTION

    env.clock.advance(4.999999)  # just before the first expiry
    assert await env.dispatcher.sweep_once() == 0
    assert [await env.exists(r) for r in (cancelled, succeeded, running, queued)] == [True] * 4

    env.clock.advance(0.000001)  # the expiry instant itself counts
    assert await env.dispatcher.sweep_once() == 1
    assert [await env.exists(r) for r in (cancelled, succeeded, running, queued)] == [
        False,
        True,
        True,
        True,
    ]

    env.clock.advance(5)
    assert await env.dispatcher.sweep_once() == 1
    assert [await env.exists(r) for r in (cancelled, succeeded, running, queued)] == [
        False,
        False,
        True,
        True,
    ]
    assert env.queue.published == []


async def test_expired_operations_are_deleted_in_batches(env: Env) -> None:
    small = Dispatcher(
        env.store,
        env.queue,
        clock=env.clock,
        redispatch_after=REDISPATCH,
        retention=RETENTION,
        sweep_interval=0.05,
        batch=2,
    )
    for _ in range(5):
        await env.update(
            await env.create(),
            lambda r: transitions.request_cancel(r, now=env.clock.now(), retention=RETENTION),
        )
    env.clock.advance(RETENTION.total_seconds())

    assert [await small.sweep_once() for _ in range(4)] == [2, 2, 1, 0]
    assert (await env.store.list(page_size=10, after=None)).records == []


async def test_the_sweeper_loop_runs_in_the_background_until_stopped(env: Env) -> None:
    rec = await env.create()
    env.clock.advance(REDISPATCH.total_seconds())

    env.dispatcher.start()
    await wait_until(lambda: env.queue.published, description="the sweeper publishes")
    await env.dispatcher.stop()

    assert env.queue.published == [TaskMessage(rec.name, "noop", 0)]
    await env.drain()
    assert (await env.store.get(rec.name)).state is State.SUCCEEDED
