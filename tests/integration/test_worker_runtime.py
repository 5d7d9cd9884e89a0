"""The worker runtime against the real SQLite store and queue, in one process:
outcomes, progress, retries, cancellation, deletion, sharing work, lease
takeover and graceful shutdown."""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.clock import SystemClock, uuid_ids
from longrun_core.errors import NotFound
from longrun_core.model import OperationRecord, State
from longrun_core.queue import Delivery, TaskMessage, TaskQueue, Transition
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore
from longrun_core.tasks import (
    PermanentError,
    RetryPolicy,
    TaskContext,
    TaskRegistry,
    TaskSet,
    TransientError,
)
from longrun_server.dispatcher import Dispatcher
from longrun_server.jobs_service import JobsService
from longrun_worker.context import SharedFlag
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.queues import ForwardingQueue
from tests.support.waiting import wait_until

RETENTION = timedelta(days=1)
SETTINGS = WorkerSettings(
    concurrency=2, lease=1.0, heartbeat=0.25, shutdown_grace=0.5, receive_timeout=0.2
)

# ---- test-only tasks; they report to PROBE, which is fresh for every test ----


@dataclass
class Probe:
    #: (operation, attempt) per handler invocation, in order.
    calls: list[tuple[str, int]] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)
    #: Operations whose handler returned or raised (not abandoned mid-way).
    returned: list[str] = field(default_factory=list)
    #: Lets `gated` and `progress` handlers return (they run on the worker's
    #: task loop, another thread: hence a flag any loop can wait on).
    release: SharedFlag = field(default_factory=SharedFlag)
    #: Lets the handlers that ignore cancellation return (thread-safe).
    unblock: threading.Event = field(default_factory=threading.Event)
    cancel_seen_at: float | None = None
    swallowed_cancels: int = 0
    contexts: list[TaskContext] = field(default_factory=list)

    def record(self, ctx: TaskContext) -> None:
        self.contexts.append(ctx)
        self.calls.append((ctx.operation, ctx.attempt))
        self.call_times.append(time.monotonic())

    def attempts(self, name: str) -> list[int]:
        return [attempt for op, attempt in self.calls if op == name]


PROBE = Probe()
tasks = TaskSet()


@tasks.task("noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    return ctx.params


@tasks.task("sync_noop", isolation="thread")
def sync_noop(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    return ctx.params


@tasks.task("proto")
async def proto(ctx: TaskContext) -> duration_pb2.Duration:
    PROBE.record(ctx)
    return duration_pb2.Duration(seconds=5, nanos=6)


@tasks.task("returns_object")
async def returns_object(ctx: TaskContext) -> object:
    PROBE.record(ctx)
    return object()


@tasks.task("returns_list_of_object")
async def returns_list_of_object(ctx: TaskContext) -> object:
    PROBE.record(ctx)
    return [object()]


@tasks.task("progress")
async def progress(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    await ctx.progress(42, "halfway")
    await PROBE.release.wait()
    return {}


@tasks.task(
    "flaky", retry=RetryPolicy(max_attempts=3, min_backoff=0.3, max_backoff=0.3, jitter=False)
)
async def flaky(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    if ctx.attempt == 1:
        raise TransientError("try again")
    return {"attempt": ctx.attempt}


@tasks.task("permanent", retry=RetryPolicy(max_attempts=3, min_backoff=0.01, max_backoff=0.01))
async def permanent(ctx: TaskContext) -> None:
    PROBE.record(ctx)
    raise PermanentError("bad input")


@tasks.task("always_fails", retry=RetryPolicy(max_attempts=3, min_backoff=0.05, max_backoff=0.1))
async def always_fails(ctx: TaskContext) -> None:
    PROBE.record(ctx)
    raise TransientError("still broken")


@tasks.task("gated")
async def gated(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    await PROBE.release.wait()
    PROBE.returned.append(ctx.operation)
    return {"attempt": ctx.attempt}


@tasks.task("slow")
async def slow(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    await asyncio.sleep(0.2)
    return {}


@tasks.task("cooperative")
async def cooperative(ctx: TaskContext) -> None:
    PROBE.record(ctx)
    if await ctx.wait_cancelled(10):
        PROBE.cancel_seen_at = time.monotonic()
    PROBE.returned.append(ctx.operation)


@tasks.task("ignores_cancel_in_thread", cancel_grace=0.3, isolation="thread")
def ignores_cancel_in_thread(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    PROBE.unblock.wait(10)  # a blocking call that never looks at ctx.cancelled
    PROBE.returned.append(ctx.operation)
    return {}


@tasks.task("ignores_cancel_async", cancel_grace=0.3)
async def ignores_cancel_async(ctx: TaskContext) -> dict[str, Any]:
    PROBE.record(ctx)
    deadline = time.monotonic() + 10
    while not PROBE.unblock.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:  # swallowed: the worker cannot stop it
            PROBE.swallowed_cancels += 1
    PROBE.returned.append(ctx.operation)
    return {}


REGISTRY = TaskRegistry(list(tasks.specs.values()))


@pytest.fixture(autouse=True)
def probe() -> Iterator[Probe]:
    global PROBE
    PROBE = Probe()
    yield PROBE
    PROBE.unblock.set()  # never leave a handler thread behind


# ---- a queue that records what workers do with deliveries ----


@dataclass(frozen=True)
class Event:
    action: str  # publish | ack | nack | dead_letter
    message: TaskMessage
    delay: float | None = None


class RecordingDelivery(Delivery):
    def __init__(self, inner: Delivery, events: list[Event]) -> None:
        self._inner = inner
        self._events = events
        self.message = inner.message
        self.delivery_attempt = inner.delivery_attempt
        self.claimed = inner.claimed

    async def settle(
        self,
        store: OperationStore,
        name: str,
        transition: Transition,
        *,
        dead_letter_if: Callable[[OperationRecord], str | None],
        between: Callable[[], None] = lambda: None,
    ) -> OperationRecord:
        # The inner delivery settles (in one transaction when paired): record
        # what it decided, once it has.
        reasons: list[str | None] = []

        def decide(rec: OperationRecord) -> str | None:
            reasons.append(dead_letter_if(rec))
            return reasons[-1]

        rec = await self._inner.settle(
            store, name, transition, dead_letter_if=decide, between=between
        )
        self._events.append(Event("ack" if reasons[-1] is None else "dead_letter", self.message))
        return rec

    async def ack(self) -> None:
        await self._inner.ack()
        self._events.append(Event("ack", self.message))

    async def nack(self, delay: float = 0.0) -> None:
        await self._inner.nack(delay)
        self._events.append(Event("nack", self.message, delay))

    async def extend(self, seconds: float) -> None:
        await self._inner.extend(seconds)

    async def dead_letter(self, reason: str) -> None:
        await self._inner.dead_letter(reason)
        self._events.append(Event("dead_letter", self.message))


class RecordingQueue(ForwardingQueue):
    def __init__(
        self, inner: TaskQueue, events: list[Event] | None = None, *, record_publish: bool = True
    ) -> None:
        super().__init__(inner)
        self.events: list[Event] = [] if events is None else events
        self.record_publish = record_publish

    async def publish(self, message: TaskMessage) -> None:
        await self.inner.publish(message)
        if self.record_publish:
            self.events.append(Event("publish", message))

    async def receive(
        self, max_messages: int, timeout: float, *, claim: Transition | None = None
    ) -> list[Delivery]:
        deliveries = await self.inner.receive(max_messages, timeout, claim=claim)
        return [RecordingDelivery(d, self.events) for d in deliveries]

    def actions(self, name: str) -> list[str]:
        return [e.action for e in self.events if e.message.operation == name]


class OutboxRecordingQueue(SqliteTaskQueue):
    """The SQLite queue paired with the store: CreateJob enqueues through the
    store's transaction (`insert`), not through `publish`; record every
    enqueue there (`publish` goes through `insert` too)."""

    def __init__(self, backend: SqliteBackend, events: list[Event]) -> None:
        super().__init__(backend, visibility_timeout=5.0)
        self.events = events

    def insert(self, conn: sqlite3.Connection, message: TaskMessage) -> None:
        super().insert(conn, message)
        self.events.append(Event("publish", message))


# ---- the environment ----


@dataclass
class Env:
    store: SqliteOperationStore
    queue: RecordingQueue
    dispatcher: Dispatcher
    jobs: JobsService
    workers: dict[Worker, asyncio.Task[None]] = field(default_factory=dict)

    def new_record(self, task: str, params: dict[str, Any] | None) -> OperationRecord:
        """Validate and build the record the way CreateJob does."""
        struct = struct_pb2.Struct()
        struct.update(params or {})
        return self.jobs.new_record(jobs_pb2.CreateJobRequest(task=task, params=struct))

    async def create(self, task: str, params: dict[str, Any] | None = None) -> OperationRecord:
        """Store an operation the way CreateJob does, without publishing."""
        rec = self.new_record(task, params)
        outbox, self.store.outbox = self.store.outbox, None  # paired: do not enqueue either
        try:
            return (await self.store.create(rec)).record
        finally:
            self.store.outbox = outbox

    async def submit(self, task: str, params: dict[str, Any] | None = None) -> str:
        """Store and publish, like CreateJob (in one transaction when paired)."""
        rec = self.new_record(task, params)
        result = await self.store.create(rec)
        if not result.enqueued:
            await self.dispatcher.dispatch(rec, mark=False)
        return rec.name

    def start_worker(self, worker_id: str, settings: WorkerSettings = SETTINGS) -> Worker:
        worker = Worker(
            store=self.store,
            queue=self.queue,
            registry=REGISTRY,
            settings=settings,
            worker_id=worker_id,
        )
        self.workers[worker] = asyncio.create_task(worker.run(), name=worker_id)
        return worker

    async def stop_worker(self, worker: Worker, timeout: float = 10) -> None:
        worker.stop()
        await asyncio.wait_for(self.workers[worker], timeout)

    async def wait_state(self, name: str, *states: State, timeout: float = 10) -> OperationRecord:
        async def reached() -> OperationRecord | None:
            rec = await self.store.get(name)
            return rec if rec.state in states else None

        return await wait_until(
            reached, timeout, description=f"{name} in {[s.name for s in states]}"
        )

    async def cancel(self, name: str) -> OperationRecord:
        return await self.store.update(
            name,
            lambda r: transitions.request_cancel(r, now=SystemClock().now(), retention=RETENTION),
        )


@pytest.fixture(params=["separate", "paired"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The worker on the embedded backend, its store and queue either used as
    two seams (each write apart, as with Firestore + Pub/Sub) or paired
    (claims, outcomes and acks in shared transactions)."""
    backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
    store = SqliteOperationStore(backend)
    events: list[Event] = []
    if request.param == "paired":
        inner: SqliteTaskQueue = OutboxRecordingQueue(backend, events)
        inner.attach(store)
    else:
        inner = SqliteTaskQueue(backend, visibility_timeout=5.0)
    queue = RecordingQueue(inner, events, record_publish=request.param == "separate")
    await store.start()
    await queue.start()
    clock = SystemClock()
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=30),
        retention=RETENTION,
        sweep_interval=0.1,
    )
    jobs = JobsService(store, dispatcher, REGISTRY, clock=clock, ids=uuid_ids)
    environment = Env(store, queue, dispatcher, jobs)
    try:
        yield environment
    finally:
        PROBE.release.set()
        PROBE.unblock.set()
        for worker in environment.workers:
            worker.stop()
        for task in environment.workers.values():
            if not task.cancelled():  # a test's wait_for may have cancelled it already
                await asyncio.wait_for(task, 15)
        await queue.close()
        await store.close()


def metadata(rec: OperationRecord) -> jobs_pb2.JobMetadata:
    md = jobs_pb2.JobMetadata()
    assert rec.to_operation().metadata.Unpack(md)
    return md


def error_info(rec: OperationRecord) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    op = rec.to_operation()
    assert op.WhichOneof("result") == "error"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in op.error.details)
    return op.error, info


# ---- outcomes ----


@pytest.mark.parametrize("task", ["noop", "sync_noop"])
async def test_a_task_succeeds_and_its_result_is_the_response(env: Env, task: str) -> None:
    params: dict[str, Any] = {"size": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    env.start_worker("w1")

    name = await env.submit(task, params)
    rec = await env.wait_state(name, State.SUCCEEDED)

    op = rec.to_operation()
    assert op.done
    result = struct_pb2.Struct()
    assert op.response.Unpack(result)
    expected = struct_pb2.Struct()
    expected.update(params)
    assert result == expected
    md = metadata(rec)
    assert (md.attempt, md.progress_percent) == (1, 100)
    assert PROBE.calls == [(name, 1)]
    # The ack follows the outcome's write.
    await wait_until(lambda: env.queue.actions(name) == ["publish", "ack"])


async def test_a_returned_protobuf_message_is_the_response_as_it_is(env: Env) -> None:
    env.start_worker("w1")

    rec = await env.wait_state(await env.submit("proto"), State.SUCCEEDED)

    op = rec.to_operation()
    assert op.response.Is(duration_pb2.Duration.DESCRIPTOR)
    result = duration_pb2.Duration()
    assert op.response.Unpack(result)
    assert result == duration_pb2.Duration(seconds=5, nanos=6)


async def test_an_unpackable_result_fails_the_operation_at_once(env: Env) -> None:
    env.start_worker("w1")

    name = await env.submit("returns_object")
    rec = await env.wait_state(name, State.FAILED)

    status, info = error_info(rec)
    assert "task returned object" in status.message
    assert info.metadata["exception"] == "TypeError"
    assert PROBE.attempts(name) == [1]


async def test_a_list_with_an_unpackable_item_fails_the_operation_at_once(env: Env) -> None:
    env.start_worker("w1")

    name = await env.submit("returns_list_of_object")
    rec = await env.wait_state(name, State.FAILED, State.SUCCEEDED, timeout=3)

    _, info = error_info(rec)
    assert info.metadata["exception"] == "TypeError"
    assert PROBE.attempts(name) == [1]


async def test_progress_is_visible_in_the_metadata_while_the_task_runs(env: Env) -> None:
    env.start_worker("w1")
    name = await env.submit("progress")

    async def progress_shown() -> jobs_pb2.JobMetadata | None:
        md = metadata(await env.store.get(name))
        return md if md.progress_percent == 42 else None

    md = await wait_until(progress_shown, description="progress 42% in the metadata")
    assert md.progress_message == "halfway"
    assert jobs_pb2.JobMetadata.State.Name(md.state) == "RUNNING"
    assert not (await env.store.get(name)).to_operation().done

    PROBE.release.set()
    rec = await env.wait_state(name, State.SUCCEEDED)
    assert rec.progress_percent == 100


# ---- errors and retries ----


async def test_a_transient_error_is_retried_after_the_backoff(env: Env) -> None:
    env.start_worker("w1")

    name = await env.submit("flaky")
    rec = await env.wait_state(name, State.SUCCEEDED)

    assert PROBE.attempts(name) == [1, 2]
    assert PROBE.call_times[1] - PROBE.call_times[0] >= 0.3 - 0.01  # the backoff
    md = metadata(rec)
    assert (md.attempt, md.max_attempts) == (2, 3)
    op = rec.to_operation()
    assert op.WhichOneof("result") == "response"
    result = struct_pb2.Struct()
    assert op.response.Unpack(result)
    assert result["attempt"] == 2
    assert await env.queue.dead_letters() == []


async def test_a_permanent_error_fails_at_once(env: Env) -> None:
    env.start_worker("w1")

    name = await env.submit("permanent")
    rec = await env.wait_state(name, State.FAILED)

    assert PROBE.attempts(name) == [1]
    status, info = error_info(rec)
    assert status.code == code_pb2.UNKNOWN
    assert status.message == "PermanentError: bad input"
    assert info.reason == "TASK_FAILED"
    assert dict(info.metadata) == {
        "exception": "PermanentError",
        "attempt": "1",
        "max_attempts": "3",
    }
    assert metadata(rec).attempt == 1


async def test_a_task_that_always_fails_is_failed_and_dead_lettered_after_max_attempts(
    env: Env,
) -> None:
    env.start_worker("w1")

    name = await env.submit("always_fails")
    rec = await env.wait_state(name, State.FAILED)

    assert PROBE.attempts(name) == [1, 2, 3]
    status, info = error_info(rec)
    assert status.message == "TransientError: still broken"
    assert (info.metadata["attempt"], info.metadata["max_attempts"]) == ("3", "3")
    assert metadata(rec).attempt == 3

    async def dead_lettered() -> list[tuple[TaskMessage, str]]:
        return [d for d in await env.queue.dead_letters() if d[0].operation == name]

    [(message, reason)] = await wait_until(dead_lettered, description="message dead-lettered")
    assert message.task == "always_fails"
    assert "3 attempts" in reason


# ---- cancellation ----


async def test_a_cancelled_queued_operation_never_runs(env: Env) -> None:
    name = await env.submit("noop")  # published; no worker yet

    cancelled = await env.cancel(name)
    assert cancelled.state is State.CANCELLED

    worker = Worker(store=env.store, queue=env.queue, registry=REGISTRY, settings=SETTINGS)
    await asyncio.wait_for(worker.run(burst=True), 10)  # drains the queue

    assert PROBE.calls == []
    assert env.queue.actions(name) == ["publish", "ack"], env.queue.events
    rec = await env.store.get(name)
    assert rec.state is State.CANCELLED
    assert rec.attempt == 0
    assert rec.to_operation().error.code == 1


async def test_a_cooperative_running_task_sees_the_cancel_promptly(env: Env) -> None:
    env.start_worker("w1")
    name = await env.submit("cooperative")
    await env.wait_state(name, State.RUNNING)
    await wait_until(lambda: PROBE.calls)

    asked_at = time.monotonic()
    await env.cancel(name)
    rec = await env.wait_state(name, State.CANCELLED)

    assert PROBE.cancel_seen_at is not None
    assert PROBE.cancel_seen_at - asked_at < 1.0
    op = rec.to_operation()
    assert op.error.code == 1
    assert "during attempt 1" in op.error.message
    assert metadata(rec).cancel_requested


@pytest.mark.parametrize("task", ["ignores_cancel_in_thread", "ignores_cancel_async"])
async def test_a_task_ignoring_the_cancel_is_abandoned_after_its_grace(env: Env, task: str) -> None:
    env.start_worker("w1")
    name = await env.submit(task)
    await env.wait_state(name, State.RUNNING)
    await wait_until(lambda: PROBE.calls)

    asked_at = time.monotonic()
    await env.cancel(name)
    rec = await env.wait_state(name, State.CANCELLED, timeout=3)
    took = time.monotonic() - asked_at

    assert 0.3 <= took < 1.5  # cancel_grace is 0.3 s
    assert PROBE.returned == []  # ended without waiting for the handler
    assert rec.to_operation().error.code == 1
    if task == "ignores_cancel_async":
        assert PROBE.swallowed_cancels >= 1

    PROBE.unblock.set()
    await wait_until(lambda: PROBE.returned == [name])
    assert (await env.store.get(name)).state is State.CANCELLED


# ---- deletion ----


async def test_a_deleted_running_operation_is_not_brought_back_by_its_worker(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.start_worker("w1")
    name = await env.submit("gated")
    await env.wait_state(name, State.RUNNING)

    caplog.set_level(logging.INFO, logger="longrun.worker")
    await env.store.delete(name)
    # DeleteOperation does not cancel (operations.proto): once the worker has
    # seen the deletion, its task still runs, uncancelled, to the end.
    await wait_until(
        lambda: any(getattr(r, "action", None) == "deleted_while_running" for r in caplog.records)
    )
    assert [ctx.cancelled for ctx in PROBE.contexts] == [False]
    PROBE.release.set()
    await wait_until(lambda: PROBE.returned == [name])
    await wait_until(lambda: env.queue.actions(name) == ["publish", "ack"])

    with pytest.raises(NotFound):
        await env.store.get(name)
    assert (await env.store.list(page_size=10, after=None)).records == []


# ---- several workers ----


async def test_two_workers_share_the_work_and_run_each_operation_once(env: Env) -> None:
    a = env.start_worker("worker-a")
    b = env.start_worker("worker-b")

    names = [await env.submit("slow") for _ in range(8)]
    for name in names:
        await env.wait_state(name, State.SUCCEEDED)

    assert collections.Counter(op for op, _ in PROBE.calls) == dict.fromkeys(names, 1)
    # A worker counts a completion just after its write is seen.
    await wait_until(lambda: a.completed + b.completed == len(names))
    assert a.completed > 0
    assert b.completed > 0


async def test_a_duplicate_message_for_a_live_lease_is_deferred_not_run_twice(env: Env) -> None:
    env.start_worker("worker-a")
    env.start_worker("worker-b")
    name = await env.submit("gated")
    running = await env.wait_state(name, State.RUNNING)

    await env.queue.publish(TaskMessage(name, "gated", 0))  # a redelivered duplicate

    def deferrals() -> list[Event]:
        return [e for e in env.queue.events if e.message.operation == name and e.action == "nack"]

    [deferral] = await wait_until(deferrals, description="the duplicate is deferred")
    assert deferral.delay is not None
    # ... until the live lease would end (it is renewed every heartbeat), not at once.
    assert 0.2 < deferral.delay <= SETTINGS.lease
    assert PROBE.attempts(name) == [1]

    PROBE.release.set()
    rec = await env.wait_state(name, State.SUCCEEDED)
    assert rec.attempt == running.attempt == 1
    # The deferred duplicate comes back, finds the operation done and is dropped.
    await wait_until(lambda: env.queue.actions(name).count("ack") == 2, timeout=5)
    assert PROBE.attempts(name) == [1]


async def test_an_expired_lease_is_taken_over_and_the_stale_worker_is_fenced(env: Env) -> None:
    rec = await env.create("gated")  # stored, not yet published
    name = rec.name
    clock = SystemClock()
    # Worker A claims with a short lease and then goes silent (crashed, partitioned...).
    held = await env.store.update(
        name,
        lambda r: transitions.claim(
            r, worker="worker-a", now=clock.now(), lease=timedelta(seconds=0.3), retention=RETENTION
        ),
    )
    assert held.lease_expire_time is not None
    lease_end = held.lease_expire_time

    first_look = time.monotonic()
    assert await env.dispatcher.sweep_once() == 0  # the lease is live: nothing to do
    await wait_until(env.dispatcher.sweep_once, description="A's lease is seen to lapse")
    assert time.monotonic() - first_look >= 0.3  # seen silent for the whole lease
    assert datetime.now(UTC) >= lease_end

    requeued = await env.store.get(name)
    assert (requeued.state, requeued.lease_owner, requeued.attempt) == (State.QUEUED, None, 1)
    assert env.queue.actions(name) == ["publish"]

    env.start_worker("worker-b")
    running = await env.wait_state(name, State.RUNNING)
    assert (running.lease_owner, running.attempt) == ("worker-b", 2)
    assert PROBE.attempts(name) == [2]

    def late_finish_by_a(r: OperationRecord) -> OperationRecord:
        return transitions.finish(
            r,
            worker="worker-a",
            attempt=1,
            now=clock.now(),
            retention=RETENTION,
            response=transitions.status_bytes(0, "A's stale outcome"),
        )

    with pytest.raises(transitions.LeaseLost):
        await env.store.update(name, late_finish_by_a)

    PROBE.release.set()
    done = await env.wait_state(name, State.SUCCEEDED)
    with pytest.raises(transitions.AlreadyDone):
        await env.store.update(name, late_finish_by_a)

    result = struct_pb2.Struct()
    assert (await env.store.get(name)).to_operation().response.Unpack(result)
    assert result["attempt"] == 2
    assert metadata(done).attempt == 2


@pytest.mark.parametrize(
    "concurrency",
    [
        pytest.param(2, id="a_slot_free"),
        pytest.param(1, id="all_slots_busy"),
    ],
)
async def test_graceful_shutdown_releases_the_lease_for_another_worker(
    env: Env, concurrency: int
) -> None:
    a = env.start_worker(
        "worker-a",
        WorkerSettings(
            concurrency=concurrency,
            lease=2.0,
            heartbeat=0.25,
            shutdown_grace=0.2,
            receive_timeout=0.2,
        ),
    )
    name = await env.submit("gated")
    running = await env.wait_state(name, State.RUNNING)
    assert running.lease_owner == "worker-a"

    await env.stop_worker(a, timeout=1.5)  # the grace is 0.2 s

    released = await env.store.get(name)
    assert (released.state, released.lease_owner) == (State.QUEUED, None)
    assert (released.attempt, released.releases) == (0, 1)  # the attempt was given back
    assert PROBE.returned == []

    starting = time.monotonic()
    env.start_worker("worker-b")
    taken = await env.wait_state(name, State.RUNNING, timeout=2)
    assert time.monotonic() - starting < 1.0  # well before A's 2 s lease would have ended
    assert (taken.lease_owner, taken.attempt, taken.releases) == ("worker-b", 1, 1)

    PROBE.release.set()
    await env.wait_state(name, State.SUCCEEDED)
    assert PROBE.attempts(name) == [1, 1]
