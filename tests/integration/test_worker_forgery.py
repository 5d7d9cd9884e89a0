"""The pull worker over the embedded store and queue, in one process: it runs
the task of the operation's record, never the one a message names; it
never runs a message it cannot verify; failed tasks leak no traceback
unless the worker was started with debug errors.

Both ways the embedded queue works: as a seam apart from the store (as
with Pub/Sub: the worker claims) and paired with it (the queue claims in
the transaction that takes the message)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from longrun.v1 import jobs_pb2
from longrun_core.clock import SystemClock, uuid_ids
from longrun_core.model import OperationRecord, State
from longrun_core.queue import TaskMessage
from longrun_core.signing import TASK_MISMATCH, UNSIGNED, Rejections, SigningKeys
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.dispatcher import Dispatcher
from longrun_server.jobs_service import JobsService
from longrun_worker.runtime import Worker, WorkerSettings
from tests.contract.conftest import publish_raw
from tests.support.waiting import wait_until

REGISTRY = load_tasks(["longrun_worker.builtin_tasks"])
SETTINGS = WorkerSettings(concurrency=2, lease=2.0, heartbeat=0.5, receive_timeout=0.2)


@dataclass
class Env:
    store: SqliteOperationStore
    queue: SqliteTaskQueue
    jobs: JobsService
    rejections: Rejections
    workers: list[tuple[Worker, asyncio.Task[None]]] = field(default_factory=list)

    async def create(self, task: str, params: dict[str, Any]) -> OperationRecord:
        """Store an operation without enqueueing its message."""
        struct = struct_pb2.Struct()
        struct.update(params)
        rec = self.jobs.new_record(jobs_pb2.CreateJobRequest(task=task, params=struct))
        outbox, self.store.outbox = self.store.outbox, None
        try:
            return (await self.store.create(rec)).record
        finally:
            self.store.outbox = outbox

    def start_worker(self, settings: WorkerSettings = SETTINGS) -> Worker:
        worker = Worker(
            store=self.store,
            queue=self.queue,
            registry=REGISTRY,
            settings=settings,
            rejections=self.rejections,
        )
        self.workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def dead_reason(self, name: str) -> str:
        async def found() -> str | None:
            for message, reason in await self.queue.dead_letters():
                if message.operation == name:
                    return reason
            return None

        return await wait_until(found, 10, description=f"a dead letter for {name}")


@pytest.fixture(params=["separate", "paired"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
    store = SqliteOperationStore(backend)
    rejections = Rejections()
    queue = SqliteTaskQueue(backend, visibility_timeout=5.0, rejections=rejections)
    if request.param == "paired":
        queue.attach(store)
    await store.start()
    await queue.start()
    clock = SystemClock()
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=30),
        retention=timedelta(days=1),
        sweep_interval=1.0,
    )
    jobs = JobsService(store, dispatcher, REGISTRY, clock=clock, ids=uuid_ids)
    environment = Env(store, queue, jobs, rejections)
    try:
        yield environment
    finally:
        for worker, _ in environment.workers:
            worker.stop()
        for _, task in environment.workers:
            await asyncio.wait_for(task, 15)
        await queue.close()
        await store.close()


async def test_a_message_naming_another_task_runs_nothing(env: Env) -> None:
    """Signed with the deployment's key (a leaked key, a publisher bug): the
    worker still refuses to run `noop` for a sleep(3600) operation."""
    rec = await env.create("sleep", {"worktime": 3600})
    await env.queue.publish(TaskMessage(rec.name, "noop", 0))
    worker = env.start_worker()
    reason = await env.dead_reason(rec.name)
    assert reason.startswith("rejected (task_mismatch): the message names task 'noop'")
    assert env.rejections.count(TASK_MISMATCH) == 1
    after = await env.store.get(rec.name)
    # Not claimed: no attempt used up, no response; the sweeper republishes it.
    assert (after.state, after.attempt, after.response) == (State.QUEUED, 0, None)
    assert after.dispatch_due_time is not None
    assert worker.completed == 0
    # Its genuine message runs the record's task and params.
    quick = await env.create("noop", {"x": 1})
    await env.queue.publish(TaskMessage(quick.name, "noop", 0))
    done = await wait_until(
        lambda: _done(env, quick.name), 10, description="the genuine message ran"
    )
    assert done.state is State.SUCCEEDED


async def _done(env: Env, name: str) -> OperationRecord | None:
    rec = await env.store.get(name)
    return rec if rec.done else None


async def test_an_unsigned_row_is_never_claimed(env: Env) -> None:
    rec = await env.create("noop", {})
    await publish_raw(env.queue, TaskMessage(rec.name, "noop", 0))
    env.start_worker()
    reason = await env.dead_reason(rec.name)
    assert reason.startswith("rejected (unsigned): ")
    assert env.rejections.count(UNSIGNED) == 1
    after = await env.store.get(rec.name)
    assert (after.state, after.attempt) == (State.QUEUED, 0)


async def test_the_database_key_is_shared_and_a_configured_key_replaces_it(
    tmp_path: Path,
) -> None:
    """Without configured keys every process on one file signs with the key
    kept in it; a queue configured with its own keys refuses those messages."""
    path = tmp_path / "shared.db"
    first = SqliteTaskQueue(SqliteBackend(path))
    second = SqliteTaskQueue(SqliteBackend(path))
    configured = SqliteTaskQueue(
        SqliteBackend(path), signing_keys=SigningKeys.parse("ops-1:" + "c" * 32)
    )
    for q in (first, second, configured):
        await q.start()
    try:
        assert first.signing_keys == second.signing_keys
        assert first.signing_keys is not None and first.signing_keys.kids == ("local",)
        await first.publish(TaskMessage("operations/a", "noop"))
        [delivery] = await second.receive(1, 5.0)
        assert delivery.message == TaskMessage("operations/a", "noop")
        await delivery.ack()
        await first.publish(TaskMessage("operations/b", "noop"))
        assert await configured.receive(1, 1.0) == []
        assert configured.rejections.count("unknown_key") == 1
    finally:
        for q in (first, second, configured):
            await q.close()


async def test_an_old_database_gets_the_signature_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, operation TEXT NOT NULL, "
        "task TEXT NOT NULL, attempt INTEGER NOT NULL, visible_us INTEGER NOT NULL, "
        "lease_token TEXT, deliveries INTEGER NOT NULL DEFAULT 0, enqueued_us INTEGER NOT NULL)"
    )
    conn.execute(
        "INSERT INTO tasks (operation, task, attempt, visible_us, enqueued_us) "
        "VALUES ('operations/old', 'noop', 0, 0, 0)"
    )
    conn.commit()
    conn.close()
    queue = SqliteTaskQueue(SqliteBackend(path))
    await queue.start()
    try:
        # A message enqueued before signing existed is unsigned: dead-lettered
        # (the sweeper republishes its operation, signed).
        assert await queue.receive(1, 0.5) == []
        [(message, reason)] = await queue.dead_letters()
        assert message.operation == "operations/old"
        assert reason.startswith("rejected (unsigned)")
        await queue.publish(TaskMessage("operations/new", "noop"))
        [delivery] = await queue.receive(1, 5.0)
        assert delivery.message.operation == "operations/new"
    finally:
        await queue.close()


# ---- what a failed task's error shows ----


def _debug_info(rec: OperationRecord) -> error_details_pb2.DebugInfo | None:
    op = rec.to_operation()
    for detail in op.error.details:
        debug = error_details_pb2.DebugInfo()
        if detail.Unpack(debug):
            return debug
    return None


async def _failed(env: Env, settings: WorkerSettings) -> OperationRecord:
    rec = await env.create("fail", {"permanent": True, "message": "no such input"})
    await env.queue.publish(TaskMessage(rec.name, "fail", 0))
    env.start_worker(settings)
    return await wait_until(lambda: _done(env, rec.name), 10, description="failed")


async def test_a_failed_task_shows_no_traceback_by_default(env: Env) -> None:
    rec = await _failed(env, SETTINGS)
    op = rec.to_operation()
    assert op.error.message == "PermanentError: no such input"
    assert _debug_info(rec) is None
    assert b"Traceback" not in (rec.error or b"")
    assert str(Path(__file__).parents[2]).encode() not in (rec.error or b"")


async def test_debug_errors_add_the_traceback_without_absolute_paths(env: Env) -> None:
    rec = await _failed(env, replace(SETTINGS, debug_errors=True))
    debug = _debug_info(rec)
    assert debug is not None
    stack = "".join(debug.stack_entries)
    assert 'File "longrun_worker/builtin_tasks.py"' in stack
    assert "PermanentError: no such input" in stack
    assert re.search(r"(^|[\s'\"(])/[\w.-]+/", stack + debug.detail) is None, stack
