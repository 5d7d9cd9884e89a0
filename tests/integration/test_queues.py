"""Queues end to end in one process: a real gRPC server (create_server) and
a worker with its queue view, on SQLite and on the emulators.

Queue CRUD and its errors, who may do what, CreateJob's queue fields and
their bounds, and what the dispatch path does with them: schedule_time,
pause / resume, purge, a queue's retry_config (backoff doubling, attempts,
max_retry_duration) and dispatch_deadline."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc, queues_pb2, queues_pb2_grpc
from longrun_core.access import ALL_PROJECTS, Permission, denied
from longrun_core.auth.roles import PERMISSIONS, Role
from longrun_core.queue_stores import queue_store_for
from longrun_core.settings import ServerSettings
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore
from longrun_core.tasks import RetryPolicy, TaskContext, TaskRegistry, TaskSet, TransientError
from longrun_server.app import create_server
from longrun_worker.queue_view import QueueView
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.waiting import wait_until

tasks = TaskSet()
#: When (time.time()) each operation's attempts started, by operation name.
STARTS: dict[str, list[float]] = defaultdict(list)


@tasks.task(name="noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    STARTS[ctx.operation].append(time.time())
    return {}


@tasks.task(name="sleep")
async def sleep(ctx: TaskContext) -> dict[str, Any]:
    STARTS[ctx.operation].append(time.time())
    await ctx.wait_cancelled(float(ctx.params.get("worktime", 1)))
    return {}


@tasks.task(name="flaky", retry=RetryPolicy(max_attempts=2, min_backoff=5.0, max_backoff=5.0))
async def flaky(ctx: TaskContext) -> dict[str, Any]:
    STARTS[ctx.operation].append(time.time())
    raise TransientError("always")


REGISTRY = TaskRegistry(list(tasks.specs.values()))
REFRESH = 0.2


@dataclass
class Grants:
    """An Access granting, per project, the permissions of a role."""

    roles: dict[str, Role] = field(default_factory=dict)
    everything: bool = True

    def require(self, permission: Permission, project: str) -> None:
        role = self.roles.get(project)
        if self.everything or (role is not None and permission in PERMISSIONS[role]):
            return
        raise denied(permission, f"projects/{project}")

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        return ALL_PROJECTS if self.everything else frozenset(self.roles)


@dataclass
class Env:
    store: OperationStore
    access: Grants
    queues: queues_pb2_grpc.QueuesStub
    jobs: jobs_pb2_grpc.JobsStub
    ops: operations_pb2_grpc.OperationsStub

    async def create(self, task: str = "noop", **fields: Any) -> operations_pb2.Operation:
        params = struct_pb2.Struct()
        params.update(fields.pop("params", {}))
        request = jobs_pb2.CreateJobRequest(
            parent=fields.pop("parent", "projects/p1"), task=task, params=params, **fields
        )
        op: operations_pb2.Operation = await self.jobs.CreateJob(request)
        return op

    async def get(self, name: str) -> operations_pb2.Operation:
        op: operations_pb2.Operation = await self.ops.GetOperation(
            operations_pb2.GetOperationRequest(name=name)
        )
        return op

    async def done(self, name: str, timeout: float = 15) -> operations_pb2.Operation:
        async def finished() -> operations_pb2.Operation | None:
            op = await self.get(name)
            return op if op.done else None

        return await wait_until(finished, timeout, 0.05, description=f"{name} done")


def metadata(op: operations_pb2.Operation) -> jobs_pb2.JobMetadata:
    md = jobs_pb2.JobMetadata()
    assert op.metadata.Unpack(md)
    return md


@pytest.fixture(params=["sqlite", pytest.param("google", marks=pytest.mark.google)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    STARTS.clear()
    store: OperationStore
    if request.param == "sqlite":
        backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
        store = SqliteOperationStore(backend)
        queue: Any = SqliteTaskQueue(backend, visibility_timeout=10.0)
        queue.attach(store)
        await store.start()
        await queue.start()
    else:
        from tests.contract.google_backends import (
            make_firestore_store,
            make_pubsub_queue,
            require_emulators,
        )

        require_emulators()
        store = await make_firestore_store()
        queue = await make_pubsub_queue(visibility_timeout=10.0, max_deliveries=20)
    access = Grants()
    settings = ServerSettings(
        address="localhost:0", sweep_interval=0.05, queue_resume_repeat=2 * REFRESH
    )
    server, port, dispatcher = await create_server(
        store=store, queue=queue, registry=REGISTRY, settings=settings, access=access
    )
    await server.start()
    dispatcher.start()
    worker = Worker(
        store=store,
        queue=queue,
        registry=REGISTRY,
        settings=WorkerSettings(
            concurrency=4,
            lease=5.0,
            heartbeat=1.0,
            receive_timeout=0.2,
            # Long: a job waiting for a slot runs promptly only if it is woken.
            limit_retry_min=20.0,
            limit_retry_max=30.0,
        ),
        queues=QueueView(queue_store_for(store), interval=REFRESH),
    )
    running = asyncio.create_task(worker.run())
    channel = grpc.aio.insecure_channel(f"localhost:{port}")
    try:
        yield Env(
            store,
            access,
            queues_pb2_grpc.QueuesStub(channel),
            jobs_pb2_grpc.JobsStub(channel),
            operations_pb2_grpc.OperationsStub(channel),
        )
    finally:
        await channel.close()
        worker.stop()
        await asyncio.wait_for(running, 20)
        await dispatcher.stop()
        await server.stop(0)
        await queue.close()
        await store.close()


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    status = status_pb2.Status()
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)  # type: ignore[arg-type]
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


Q = "projects/p1/queues/"


# ---- the resource ----


async def test_the_default_queue_exists_until_changed_and_is_listed(env: Env) -> None:
    got = await env.queues.GetQueue(queues_pb2.GetQueueRequest(name=Q + "default"))
    assert got.name == Q + "default" and got.state == queues_pb2.Queue.RUNNING
    assert not got.HasField("create_time")
    listed = await env.queues.ListQueues(queues_pb2.ListQueuesRequest(parent="projects/p1"))
    assert [q.name for q in listed.queues] == [Q + "default"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.queues.CreateQueue(
            queues_pb2.CreateQueueRequest(
                parent="projects/p1", queue_id="default", queue=queues_pb2.Queue()
            )
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_get_list_update_delete(env: Env) -> None:
    created = await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1",
            queue_id="emails",
            queue=queues_pb2.Queue(
                retry_config=queues_pb2.RetryConfig(
                    max_attempts=4, min_backoff=duration_pb2.Duration(seconds=1)
                )
            ),
        )
    )
    assert created.name == Q + "emails" and created.HasField("create_time")
    for queue_id in ("zeta", "alpha"):
        await env.queues.CreateQueue(
            queues_pb2.CreateQueueRequest(
                parent="projects/p1", queue_id=queue_id, queue=queues_pb2.Queue()
            )
        )
    page = await env.queues.ListQueues(
        queues_pb2.ListQueuesRequest(parent="projects/p1", page_size=2)
    )
    assert [q.name for q in page.queues] == [Q + "alpha", Q + "default"]
    rest = await env.queues.ListQueues(
        queues_pb2.ListQueuesRequest(
            parent="projects/p1", page_size=2, page_token=page.next_page_token
        )
    )
    assert [q.name for q in rest.queues] == [Q + "emails", Q + "zeta"]
    assert rest.next_page_token == ""
    updated = await env.queues.UpdateQueue(
        queues_pb2.UpdateQueueRequest(
            queue=queues_pb2.Queue(
                name=Q + "emails", retry_config=queues_pb2.RetryConfig(max_attempts=9)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["retry_config.max_attempts"]),
        )
    )
    assert updated.retry_config.max_attempts == 9
    assert updated.retry_config.min_backoff.seconds == 1  # not in the mask: kept
    got = await env.queues.GetQueue(queues_pb2.GetQueueRequest(name=Q + "emails"))
    assert got == updated
    await env.queues.DeleteQueue(queues_pb2.DeleteQueueRequest(name=Q + "emails"))
    for call in (
        env.queues.GetQueue(queues_pb2.GetQueueRequest(name=Q + "emails")),
        env.queues.DeleteQueue(queues_pb2.DeleteQueueRequest(name=Q + "emails")),
        env.queues.PauseQueue(queues_pb2.PauseQueueRequest(name=Q + "emails")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == "QUEUE_NOT_FOUND"


async def test_bad_queue_requests_say_what_is_wrong(env: Env) -> None:
    cases = [
        (
            env.queues.CreateQueue(
                queues_pb2.CreateQueueRequest(
                    parent="projects/p1", queue_id="bad_id", queue=queues_pb2.Queue()
                )
            ),
            "QUEUE_ID_INVALID",
        ),
        (
            env.queues.CreateQueue(
                queues_pb2.CreateQueueRequest(
                    parent="projects/p1",
                    queue_id="ok",
                    queue=queues_pb2.Queue(retry_config=queues_pb2.RetryConfig(max_attempts=1000)),
                )
            ),
            "QUEUE_CONFIG_INVALID",
        ),
        (
            env.queues.UpdateQueue(
                queues_pb2.UpdateQueueRequest(
                    queue=queues_pb2.Queue(name=Q + "default"),
                    update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                )
            ),
            "UPDATE_MASK_INVALID",
        ),
        (env.queues.GetQueue(queues_pb2.GetQueueRequest(name="queues/x")), "QUEUE_NAME_INVALID"),
    ]
    for call, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == reason


async def test_viewers_read_queues_and_only_admins_change_them(env: Env) -> None:
    env.access.everything = False
    env.access.roles = {"p1": Role.VIEWER, "p2": Role.ADMIN}
    await env.queues.GetQueue(queues_pb2.GetQueueRequest(name=Q + "default"))
    await env.queues.ListQueues(queues_pb2.ListQueuesRequest(parent="projects/p1"))
    for call in (
        env.queues.PauseQueue(queues_pb2.PauseQueueRequest(name=Q + "default")),
        env.queues.PurgeQueue(queues_pb2.PurgeQueueRequest(name=Q + "default")),
        env.queues.CreateQueue(
            queues_pb2.CreateQueueRequest(
                parent="projects/p1", queue_id="x", queue=queues_pb2.Queue()
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await env.queues.GetQueue(queues_pb2.GetQueueRequest(name="projects/p3/queues/default"))
    assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    paused = await env.queues.PauseQueue(
        queues_pb2.PauseQueueRequest(name="projects/p2/queues/default")
    )
    assert paused.state == queues_pb2.Queue.PAUSED


# ---- CreateJob's queue fields ----


async def test_a_job_goes_to_an_existing_queue_only(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.create(queue="nothing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "QUEUE_NOT_FOUND"
    await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1",
            queue_id="emails",
            queue=queues_pb2.Queue(retry_config=queues_pb2.RetryConfig(max_attempts=7)),
        )
    )
    op = await env.create(queue=Q + "emails", concurrency_key="customer-1")
    md = metadata(op)
    assert md.queue == Q + "emails" and md.max_attempts == 7
    assert md.concurrency_key == "customer-1"
    assert metadata(await env.create()).queue == Q + "default"


async def test_schedule_time_past_thirty_days_is_refused_with_the_limit(env: Env) -> None:
    far = timestamp_pb2.Timestamp()
    far.FromDatetime(datetime.now(UTC) + timedelta(days=30, minutes=5))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.create(schedule_time=far)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "SCHEDULE_TIME_TOO_FAR"
    assert "30 days" in (caught.value.details() or "")
    for bad in (duration_pb2.Duration(nanos=5), duration_pb2.Duration(seconds=2 * 86400)):
        with pytest.raises(grpc.aio.AioRpcError) as deadline:
            await env.create(dispatch_deadline=bad)
        assert error_reason(deadline.value) == "DISPATCH_DEADLINE_INVALID"


async def test_a_scheduled_job_runs_at_its_time_and_not_before(env: Env) -> None:
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    op = await env.create(schedule_time=ts)
    md = metadata(op)
    assert md.wait_reason == jobs_pb2.JobMetadata.SCHEDULED
    assert md.schedule_time == ts
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    now_op = await env.create(schedule_time=past)  # a past time means now
    assert metadata(now_op).wait_reason == jobs_pb2.JobMetadata.READY
    done = await env.done(op.name)
    assert not done.HasField("error")
    assert len(STARTS[op.name]) == 1
    assert STARTS[op.name][0] >= when.timestamp()
    assert metadata(done).start_time.ToDatetime(tzinfo=UTC) >= when
    await env.done(now_op.name)


# ---- pause, resume, purge ----


async def test_pause_holds_new_attempts_and_resume_runs_them(env: Env) -> None:
    paused = await env.queues.PauseQueue(queues_pb2.PauseQueueRequest(name=Q + "default"))
    assert paused.state == queues_pb2.Queue.PAUSED
    await asyncio.sleep(3 * REFRESH)  # past every worker's refresh: the pause is in effect
    op = await env.create()

    async def noted() -> bool:
        return metadata(await env.get(op.name)).wait_reason == jobs_pb2.JobMetadata.QUEUE_PAUSED

    await wait_until(noted, 10, 0.05, description="the job shows its queue paused")
    await asyncio.sleep(1.0)
    held = await env.get(op.name)
    assert not held.done and metadata(held).state == jobs_pb2.JobMetadata.QUEUED
    assert STARTS[op.name] == []
    other = await env.create(parent="projects/p2")  # another project's default queue runs
    await env.done(other.name)
    resumed_at = time.time()
    resumed = await env.queues.ResumeQueue(queues_pb2.ResumeQueueRequest(name=Q + "default"))
    assert resumed.state == queues_pb2.Queue.RUNNING
    done = await env.done(op.name, timeout=10)
    assert not done.HasField("error")
    assert STARTS[op.name][0] >= resumed_at


async def test_running_attempts_finish_while_paused(env: Env) -> None:
    op = await env.create("sleep", params={"worktime": 1.5})
    await wait_until(lambda: STARTS[op.name], 10, description="the attempt started")
    await env.queues.PauseQueue(queues_pb2.PauseQueueRequest(name=Q + "default"))
    done = await env.done(op.name)
    assert not done.HasField("error") and len(STARTS[op.name]) == 1


async def test_purge_cancels_every_queued_job_of_the_queue(env: Env) -> None:
    await env.queues.PauseQueue(queues_pb2.PauseQueueRequest(name=Q + "default"))
    await asyncio.sleep(3 * REFRESH)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    queued = [await env.create() for _ in range(4)] + [await env.create(schedule_time=ts)]
    spared = await env.create(parent="projects/p2")
    purged = await env.queues.PurgeQueue(queues_pb2.PurgeQueueRequest(name=Q + "default"))
    assert purged.HasField("purge_time")
    for op in queued:
        done = await env.done(op.name)
        assert done.error.code == code_pb2.CANCELLED
        assert metadata(done).state == jobs_pb2.JobMetadata.CANCELLED
        assert STARTS[op.name] == []
    await env.queues.ResumeQueue(queues_pb2.ResumeQueueRequest(name=Q + "default"))
    later = await env.create()
    assert not (await env.done(later.name)).HasField("error")
    assert not (await env.done(spared.name)).HasField("error")


# ---- retry_config and dispatch_deadline ----


async def test_a_queues_retry_config_overrides_the_tasks_policy(env: Env) -> None:
    await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1",
            queue_id="retries",
            queue=queues_pb2.Queue(
                retry_config=queues_pb2.RetryConfig(
                    max_attempts=4,
                    min_backoff=duration_pb2.Duration(nanos=300_000_000),
                    max_backoff=duration_pb2.Duration(seconds=10),
                    max_doublings=5,
                )
            ),
        )
    )
    await asyncio.sleep(3 * REFRESH)
    op = await env.create("flaky", queue="retries")
    assert metadata(op).max_attempts == 4  # the task's policy says 2
    done = await env.done(op.name, timeout=20)
    assert metadata(done).attempt == 4 and done.error.code != 0
    starts = STARTS[op.name]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.3 s, 0.6 s, 1.2 s (the task's own 5 s backoff would be far longer).
    for gap, backoff in zip(gaps, (0.3, 0.6, 1.2), strict=True):
        assert backoff - 0.05 <= gap <= backoff + 1.0, gaps


async def test_max_retry_duration_ends_the_retries(env: Env) -> None:
    await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1",
            queue_id="short",
            queue=queues_pb2.Queue(
                retry_config=queues_pb2.RetryConfig(
                    max_attempts=50,
                    min_backoff=duration_pb2.Duration(nanos=400_000_000),
                    max_doublings=0,
                    max_retry_duration=duration_pb2.Duration(seconds=1),
                )
            ),
        )
    )
    await asyncio.sleep(3 * REFRESH)
    op = await env.create("flaky", queue="short")
    done = await env.done(op.name, timeout=20)
    # Linear backoff 0.4 s, 0.8 s: attempt 2 starts at about 0.4 s; attempt 3
    # would start at about 1.2 s, past the 1 s max_retry_duration: none does.
    assert metadata(done).attempt == 2 and len(STARTS[op.name]) == 2
    assert 0.35 <= STARTS[op.name][1] - STARTS[op.name][0] <= 1.0


async def test_an_attempt_past_its_dispatch_deadline_fails_and_is_retried(env: Env) -> None:
    op = await env.create(
        "sleep", params={"worktime": 30}, dispatch_deadline=duration_pb2.Duration(seconds=1)
    )
    assert metadata(op).dispatch_deadline.seconds == 1
    done = await env.done(op.name, timeout=30)
    assert done.error.code == code_pb2.DEADLINE_EXCEEDED
    assert "1s deadline" in done.error.message
    # The sleep task has the default policy (3 attempts): each one was cut.
    assert len(STARTS[op.name]) == metadata(done).attempt == 3


# ---- concurrency limits ----


async def test_rate_limits_are_created_updated_by_mask_and_bounded(env: Env) -> None:
    created = await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1",
            queue_id="limited",
            queue=queues_pb2.Queue(
                rate_limits=queues_pb2.RateLimits(
                    max_concurrent_dispatches=3, max_concurrent_per_key=2
                )
            ),
        )
    )
    assert created.rate_limits.max_concurrent_dispatches == 3
    updated = await env.queues.UpdateQueue(
        queues_pb2.UpdateQueueRequest(
            queue=queues_pb2.Queue(
                name=Q + "limited",
                rate_limits=queues_pb2.RateLimits(
                    max_concurrent_dispatches=50, max_concurrent_per_key=7
                ),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["rate_limits.max_concurrent_per_key"]),
        )
    )
    assert (
        updated.rate_limits.max_concurrent_dispatches,
        updated.rate_limits.max_concurrent_per_key,
    ) == (3, 7)
    got = await env.queues.GetQueue(queues_pb2.GetQueueRequest(name=Q + "limited"))
    assert got == updated
    for limits in (
        queues_pb2.RateLimits(max_concurrent_dispatches=5001),
        queues_pb2.RateLimits(max_concurrent_per_key=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.queues.UpdateQueue(
                queues_pb2.UpdateQueueRequest(
                    queue=queues_pb2.Queue(name=Q + "limited", rate_limits=limits),
                    update_mask=field_mask_pb2.FieldMask(paths=["rate_limits"]),
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "QUEUE_CONFIG_INVALID"


async def test_a_job_over_the_limit_waits_concurrency_limited_and_is_woken_when_a_slot_frees(
    env: Env,
) -> None:
    await env.queues.UpdateQueue(
        queues_pb2.UpdateQueueRequest(
            queue=queues_pb2.Queue(
                name=Q + "default",
                rate_limits=queues_pb2.RateLimits(max_concurrent_dispatches=1),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["rate_limits"]),
        )
    )
    await asyncio.sleep(3 * REFRESH)  # past every worker's refresh: the limit is in effect
    holder = await env.create("sleep", params={"worktime": 2})

    async def running() -> bool:
        return metadata(await env.get(holder.name)).state == jobs_pb2.JobMetadata.RUNNING

    await wait_until(running, 10, 0.05, description="the first job to run")
    waiting = await env.create()

    async def limited() -> bool:
        md = metadata(await env.get(waiting.name))
        return md.wait_reason == jobs_pb2.JobMetadata.CONCURRENCY_LIMITED

    await wait_until(limited, 10, 0.05, description="the second job to show it is limited")
    assert STARTS[waiting.name] == []
    other = await env.create(queue="projects/p2/queues/default", parent="projects/p2")
    await env.done(other.name)  # another project's queue is not limited by it
    finished = await env.done(holder.name)
    done = await env.done(waiting.name, timeout=15)
    assert not done.HasField("error")
    freed_at = metadata(finished).end_time.ToDatetime(UTC).timestamp()
    assert STARTS[waiting.name][0] >= freed_at - 0.01
    # Woken when the slot freed, not at its retry delay (20-30 s here).
    assert STARTS[waiting.name][0] - freed_at < 5.0
