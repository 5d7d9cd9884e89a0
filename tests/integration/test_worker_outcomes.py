"""What a worker stores when a task's outcome cannot be stored as it is: a
result JSON cannot hold, one too big, one whose packing blows up, an
exception whose text raises. Each ends FAILED at once with the cause, on
the first attempt (never "worker lost" after the lease), and the worker
goes on serving. Real SQLite store and queue, in one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_core.clock import SystemClock, uuid_ids
from longrun_core.model import OperationRecord, State
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import PermanentError, TaskContext, TaskRegistry, TaskSet
from longrun_server.dispatcher import Dispatcher
from longrun_server.jobs_service import JobsService
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.waiting import wait_until

#: A lease far longer than the tests wait: an outcome the worker failed to
#: write would only show up as "worker lost" after it.
LEASE = 60.0
LIMIT = 100_000

tasks = TaskSet()


@tasks.task("echo")
async def echo(ctx: TaskContext) -> Any:
    return ctx.params


@tasks.task("nan")
async def nan(ctx: TaskContext) -> Any:
    return {"ratio": float("nan")}


@tasks.task("deep")
async def deep(ctx: TaskContext) -> Any:
    value: dict[str, Any] = {}
    for _ in range(5000):  # far past the recursion limit of any packer
        value = {"a": value}
    return value


@tasks.task("cyclic")
async def cyclic(ctx: TaskContext) -> Any:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


@tasks.task("big")
async def big(ctx: TaskContext) -> Any:
    return {"blob": "x" * int(ctx.params["size"])}


class Unprintable(PermanentError):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@tasks.task("unprintable_error")
async def unprintable_error(ctx: TaskContext) -> Any:
    raise Unprintable()


@tasks.task("long_error")
async def long_error(ctx: TaskContext) -> Any:
    # error_status keeps 2,000 characters of the message (and of the last
    # stack line): 4-byte characters make the status over 16 KB.
    raise PermanentError("\U0001f600" * 2000)


REGISTRY = TaskRegistry(list(tasks.specs.values()))


class SmallDocumentStore(SqliteOperationStore):
    """A store that, like Firestore, can hold less than the worker's limit."""

    capacity = 50_000

    def max_outcome_bytes(self, rec: OperationRecord) -> int | None:
        return self.capacity


@dataclass
class Env:
    store: SqliteOperationStore
    jobs: JobsService
    dispatcher: Dispatcher
    worker: Worker

    async def submit(self, task: str, params: dict[str, Any] | None = None) -> str:
        struct = struct_pb2.Struct()
        struct.update(params or {})
        rec = self.jobs.new_record(jobs_pb2.CreateJobRequest(task=task, params=struct))
        result = await self.store.create(rec)
        if not result.enqueued:
            await self.dispatcher.dispatch(rec, mark=False)
        return rec.name

    async def done(self, name: str, timeout: float = 10) -> OperationRecord:
        async def finished() -> OperationRecord | None:
            rec = await self.store.get(name)
            return rec if rec.done else None

        return await wait_until(finished, timeout, description=f"{name} done")


@pytest.fixture(params=["sqlite", "small_documents"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
    store_cls = SqliteOperationStore if request.param == "sqlite" else SmallDocumentStore
    store = store_cls(backend)
    queue = SqliteTaskQueue(backend, visibility_timeout=LEASE)
    queue.attach(store)
    await store.start()
    await queue.start()
    clock = SystemClock()
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=LEASE),
        retention=timedelta(days=1),
        sweep_interval=0.1,
    )
    jobs = JobsService(store, dispatcher, REGISTRY, clock=clock, ids=uuid_ids)
    worker = Worker(
        store=store,
        queue=queue,
        registry=REGISTRY,
        settings=WorkerSettings(
            concurrency=2,
            lease=LEASE,
            heartbeat=LEASE / 4,
            receive_timeout=0.2,
            max_result_bytes=LIMIT,
        ),
        worker_id="w1",
    )
    running = asyncio.create_task(worker.run())
    try:
        yield Env(store, jobs, dispatcher, worker)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 15)
        await queue.close()
        await store.close()


def failure(rec: OperationRecord) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    assert rec.state is State.FAILED, rec.state
    assert rec.attempt == 1
    assert rec.error is not None
    status = status_pb2.Status.FromString(rec.error)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info


@pytest.mark.parametrize(
    ("task", "says"),
    [
        ("nan", "result.ratio is nan, which is not a JSON number"),
        ("deep", "nested 33 levels deep; at most 32 are allowed"),
        ("cyclic", "nested 33 levels deep"),
    ],
)
async def test_a_result_json_cannot_hold_fails_the_operation_with_the_cause(
    env: Env, task: str, says: str
) -> None:
    started = time.monotonic()
    rec = await env.done(await env.submit(task))
    assert time.monotonic() - started < LEASE / 4  # at once, not after the lease
    status, info = failure(rec)
    assert status.code == code_pb2.UNKNOWN
    assert says in status.message
    assert info.reason == "RESULT_INVALID"


async def test_an_exception_whose_text_raises_fails_the_operation_with_its_type(
    env: Env,
) -> None:
    rec = await env.done(await env.submit("unprintable_error"))
    status, info = failure(rec)
    assert status.message.startswith("Unprintable: <str() of the Unprintable raised RuntimeError>")
    assert info.reason == "TASK_FAILED"
    assert info.metadata["exception"] == "Unprintable"


async def test_a_result_over_the_limit_fails_with_result_too_large(env: Env) -> None:
    rec = await env.done(await env.submit("big", {"size": 200_000}))
    status, info = failure(rec)
    limit = env.worker.outcome_limit(rec)
    assert limit == (LIMIT if type(env.store) is SqliteOperationStore else 50_000)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert info.reason == "RESULT_TOO_LARGE"
    assert int(info.metadata["size"]) > 200_000
    assert info.metadata["limit"] == str(limit)
    assert rec.response is None


async def test_the_store_limit_applies_when_it_is_the_smaller(env: Env) -> None:
    """60 KB fits the worker's 100 KB but not a store that holds 50 KB."""
    rec = await env.done(await env.submit("big", {"size": 60_000}))
    if type(env.store) is SqliteOperationStore:
        assert rec.state is State.SUCCEEDED
        assert rec.response is not None and len(rec.response) > 60_000
    else:
        _, info = failure(rec)
        assert info.reason == "RESULT_TOO_LARGE"
        assert info.metadata["limit"] == "50000"


async def test_an_error_over_the_limit_is_replaced_by_result_too_large(env: Env) -> None:
    """error_status keeps errors small; a limit below even that (with the
    DebugInfo of --debug-errors) still holds."""
    env.worker.settings = WorkerSettings(
        lease=LEASE,
        heartbeat=LEASE / 4,
        receive_timeout=0.2,
        max_result_bytes=10_000,
        debug_errors=True,
    )
    rec = await env.done(await env.submit("long_error"))
    status, info = failure(rec)
    assert rec.error is not None and len(rec.error) < 10_000
    assert info.reason == "RESULT_TOO_LARGE"
    assert info.metadata["what"] == "error"
    assert "PermanentError" in status.message  # the start of the original


async def test_the_worker_goes_on_after_an_outcome_it_could_not_store(env: Env) -> None:
    for task in ("nan", "deep", "unprintable_error"):
        await env.done(await env.submit(task))
    rec = await env.done(await env.submit("echo", {"ok": True}))
    assert rec.state is State.SUCCEEDED
