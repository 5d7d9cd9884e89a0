"""Queue stats, TestIamPermissions and ListDeadLetters through a real gRPC
server (create_server) on SQLite and on the emulators (Firestore + Pub/Sub).

No worker runs: the tests take the task messages themselves, so that a job
stays QUEUED, a claimed one RUNNING, and a message can be dead-lettered on
purpose (as a worker does with a poison task), or forged."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc, queues_pb2, queues_pb2_grpc
from longrun_client import AsyncClient, Client
from longrun_client.cli import run as cli_run
from longrun_core import transitions
from longrun_core.access import Permission
from longrun_core.auth.roles import Role
from longrun_core.clock import SystemClock
from longrun_core.queue import TaskMessage, TaskQueue
from longrun_core.settings import ServerSettings
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore
from longrun_core.tasks import TaskContext, TaskRegistry, TaskSet
from longrun_server.app import create_server
from tests.integration.test_queues import Grants, error_reason
from tests.support.waiting import wait_until

tasks = TaskSet()


@tasks.task(name="noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    return {}


REGISTRY = TaskRegistry(list(tasks.specs.values()))
STATS_LIMIT = 5
STATS = field_mask_pb2.FieldMask(paths=["stats"])


@dataclass
class Env:
    store: OperationStore
    queue: TaskQueue
    access: Grants
    queues: queues_pb2_grpc.QueuesStub
    jobs: jobs_pb2_grpc.JobsStub
    #: host:port of the server, for the Python client and the CLI.
    target: str = ""

    async def create(self, parent: str = "projects/p1", queue: str = "") -> str:
        op: operations_pb2.Operation = await self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(parent=parent, task="noop", queue=queue)
        )
        return str(op.name)

    async def take(self, operation: str) -> Any:
        """Receive messages until the one of `operation` (others are acked away)."""

        async def found() -> Any:
            for delivery in await self.queue.receive(10, 0.5):
                if delivery.message.operation == operation:
                    return delivery
                await delivery.ack()
            return None

        return await wait_until(found, 20, 0.0, description=f"the message of {operation}")

    async def dead(self, parent: str, **fields: Any) -> queues_pb2.ListDeadLettersResponse:
        response: queues_pb2.ListDeadLettersResponse = await self.queues.ListDeadLetters(
            queues_pb2.ListDeadLettersRequest(parent=parent, **fields)
        )
        return response


@pytest.fixture(params=["sqlite", pytest.param("google", marks=pytest.mark.google)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store: OperationStore
    queue: Any
    if request.param == "sqlite":
        backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
        store = SqliteOperationStore(backend)
        queue = SqliteTaskQueue(backend, visibility_timeout=10.0)
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
        address="localhost:0", sweep_interval=0.05, queue_stats_limit=STATS_LIMIT
    )
    server, port, dispatcher = await create_server(
        store=store, queue=queue, registry=REGISTRY, settings=settings, access=access
    )
    await server.start()
    dispatcher.start()
    channel = grpc.aio.insecure_channel(f"localhost:{port}")
    try:
        yield Env(
            store,
            queue,
            access,
            queues_pb2_grpc.QueuesStub(channel),
            jobs_pb2_grpc.JobsStub(channel),
            f"localhost:{port}",
        )
    finally:
        await channel.close()
        await dispatcher.stop()
        await server.stop(0)
        await queue.close()
        await store.close()


# ---- stats ----


async def test_stats_count_a_queues_waiting_and_running_jobs_only_when_asked(env: Env) -> None:
    await env.queues.CreateQueue(
        queues_pb2.CreateQueueRequest(
            parent="projects/p1", queue_id="work", queue=queues_pb2.Queue()
        )
    )
    names = [await env.create(queue="work") for _ in range(3)]
    await env.create()  # another queue's
    await env.create(parent="projects/p2", queue="")  # another project's
    # Claim one, as a worker does: it is RUNNING.
    clock = SystemClock()
    await env.store.update(
        names[0],
        lambda r: transitions.claim(
            r, worker="w", now=clock.now(), lease=timedelta(seconds=30), retention=timedelta(days=1)
        ),
    )
    plain = await env.queues.GetQueue(queues_pb2.GetQueueRequest(name="projects/p1/queues/work"))
    assert not plain.HasField("stats")  # counted only when the read_mask asks
    queue = await env.queues.GetQueue(
        queues_pb2.GetQueueRequest(name="projects/p1/queues/work", read_mask=STATS)
    )
    assert (queue.stats.waiting_count, queue.stats.running_count) == (2, 1)
    assert not queue.stats.capped
    listed = await env.queues.ListQueues(
        queues_pb2.ListQueuesRequest(parent="projects/p1", read_mask=STATS)
    )
    counts = {q.name: (q.stats.waiting_count, q.stats.running_count) for q in listed.queues}
    assert counts == {"projects/p1/queues/default": (1, 0), "projects/p1/queues/work": (2, 1)}
    # Past the limit the count stops there and says so.
    for _ in range(STATS_LIMIT):
        await env.create(queue="work")
    capped = await env.queues.GetQueue(
        queues_pb2.GetQueueRequest(name="projects/p1/queues/work", read_mask=STATS)
    )
    assert capped.stats.waiting_count == STATS_LIMIT and capped.stats.capped


async def test_a_read_mask_naming_no_queue_field_is_refused(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.queues.GetQueue(
            queues_pb2.GetQueueRequest(
                name="projects/p1/queues/default",
                read_mask=field_mask_pb2.FieldMask(paths=["depth"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "READ_MASK_INVALID"


# ---- TestIamPermissions ----


async def test_test_iam_permissions_answers_the_callers_subset(env: Env) -> None:
    env.access.everything = False
    env.access.roles = {"p1": Role.VIEWER, "p2": Role.ADMIN}
    asked = [Permission.QUEUES_GET.value, Permission.QUEUES_UPDATE.value, "longrun.bogus"]

    async def held(resource: str) -> list[str]:
        response = await env.queues.TestIamPermissions(
            queues_pb2.TestIamPermissionsRequest(resource=resource, permissions=asked)
        )
        return list(response.permissions)

    assert await held("projects/p1/queues/default") == [Permission.QUEUES_GET.value]
    assert await held("projects/p2/queues/anything") == asked[:2]
    assert await held("projects/p3/queues/default") == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.queues.TestIamPermissions(
            queues_pb2.TestIamPermissionsRequest(
                resource="projects/p1/queues/default", permissions=["x"] * 21
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- dead letters ----


async def _dead_letter(env: Env, operation: str, reason: str) -> None:
    delivery = await env.take(operation)
    await delivery.dead_letter(reason)


async def _listed(env: Env, parent: str, count: int) -> list[queues_pb2.DeadLetter]:
    async def enough() -> list[queues_pb2.DeadLetter] | None:
        letters = list((await env.dead(parent)).dead_letters)
        return letters if len(letters) >= count else None

    found: list[queues_pb2.DeadLetter] = await wait_until(
        enough, 20, 0.1, description=f"{count} dead letters under {parent}"
    )
    return found


async def test_dead_letters_are_listed_under_their_operations_project_only(env: Env) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    mine = await env.create()
    theirs = await env.create(parent="projects/p2")
    await _dead_letter(env, mine, "poison: failed 3 times")
    await _dead_letter(env, theirs, "poison: theirs")
    # A message naming p2 for p1's operation (forged): it names no stored
    # operation, so no project's viewer sees it.
    forged = mine.replace("projects/p1/", "projects/p2/")
    await env.queue.publish(TaskMessage(forged, "noop", 1))
    await _dead_letter(env, forged, "rejected (forged)")
    # One naming an operation that does not exist.
    await env.queue.publish(TaskMessage("projects/p1/operations/nothing", "noop", 1))
    await _dead_letter(env, "projects/p1/operations/nothing", "delivered 5 times")

    everything = await _listed(env, "projects/-", 4)
    assert [d.reason for d in everything] == [
        "delivered 5 times",
        "rejected (forged)",
        "poison: theirs",
        "poison: failed 3 times",
    ]  # newest first
    by_reason = {d.reason: d for d in everything}
    first = by_reason["poison: failed 3 times"]
    assert first.operation == mine and first.task == "noop" and first.attempt == 0
    assert first.queue == "projects/p1/queues/default"
    assert first.name.startswith("projects/p1/deadLetters/")
    assert before <= first.dead_letter_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert by_reason["rejected (forged)"].name.startswith("projects/-/deadLetters/")
    assert by_reason["rejected (forged)"].queue == ""

    p1 = await env.dead("projects/p1")
    assert [d.operation for d in p1.dead_letters] == [mine]
    p2 = await env.dead("projects/p2")
    assert [d.operation for d in p2.dead_letters] == [theirs]

    # A viewer of p1 sees p1's, under projects/p1 and projects/-, nothing else.
    env.access.everything = False
    env.access.roles = {"p1": Role.VIEWER}
    assert [d.operation for d in (await env.dead("projects/p1")).dead_letters] == [mine]
    assert [d.operation for d in (await env.dead("projects/-")).dead_letters] == [mine]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.dead("projects/p2")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    env.access.roles = {}
    assert list((await env.dead("projects/-")).dead_letters) == []


async def test_dead_letters_page_with_tokens_bound_to_their_parent(env: Env) -> None:
    names = [await env.create() for _ in range(3)]
    for i, name in enumerate(names):
        await _dead_letter(env, name, f"poison {i}")
    await _listed(env, "projects/p1", 3)
    first = await env.dead("projects/p1", page_size=2)
    assert [d.reason for d in first.dead_letters] == ["poison 2", "poison 1"]
    assert first.next_page_token
    rest = await env.dead("projects/p1", page_size=2, page_token=first.next_page_token)
    assert [d.reason for d in rest.dead_letters] == ["poison 0"]
    assert rest.next_page_token == ""
    for parent, token, size in (
        ("projects/p2", first.next_page_token, 2),  # another parent's token
        ("projects/p1", "garbage", 2),
        ("projects/p1", "", -1),
        ("operations", "", 2),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.dead(parent, page_size=size, page_token=token)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, parent


# ---- the Python client and the CLI ----


def _cli(target: str, *args: str) -> tuple[int, str]:
    """Run `longrun ARGS` against `target` (in a thread: the server shares the loop)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_run(["--target", target, *args])
    return code, out.getvalue()


async def test_the_client_and_cli_read_queue_stats_and_dead_letters(env: Env) -> None:
    names = [await env.create() for _ in range(3)]
    await _dead_letter(env, names[0], "poison: client")
    await _dead_letter(env, names[1], "poison: cli")
    await _listed(env, "projects/p1", 2)
    client = Client(env.target, project="p1")
    try:
        plain = await asyncio.to_thread(client.get_queue, "default")
        assert not plain.HasField("stats")
        counted = await asyncio.to_thread(
            functools.partial(client.get_queue, "default", stats=True)
        )
        assert (counted.stats.waiting_count, counted.stats.running_count) == (3, 0)
        listed = await asyncio.to_thread(lambda: list(client.list_queues(stats=True)))
        assert [(q.name, q.stats.waiting_count) for q in listed] == [
            ("projects/p1/queues/default", 3)
        ]
        dead = await asyncio.to_thread(lambda: list(client.list_dead_letters(page_size=1)))
        assert [(d.operation, d.reason) for d in dead] == [
            (names[1], "poison: cli"),
            (names[0], "poison: client"),
        ]  # newest first, over two pages of one
    finally:
        client.close()
    aclient = AsyncClient(env.target, project="p1")
    try:
        assert not (await aclient.get_queue("default")).HasField("stats")
        assert (await aclient.get_queue("default", stats=True)).stats.waiting_count == 3
        assert [q.stats.waiting_count async for q in aclient.list_queues(stats=True)] == [3]
        letters = [d.reason async for d in aclient.list_dead_letters(page_size=1)]
        assert letters == ["poison: cli", "poison: client"]
    finally:
        await aclient.close()

    code, out = await asyncio.to_thread(
        _cli, env.target, "queues", "stats", "--project", "p1", "--json"
    )
    assert code == 0
    assert [(q["name"], q["stats"].get("waitingCount")) for q in json.loads(out)] == [
        ("projects/p1/queues/default", "3")
    ]  # int64 is a string in JSON
    code, out = await asyncio.to_thread(
        _cli, env.target, "dead-letters", "list", "--project", "p1", "--limit", "1", "--json"
    )
    assert code == 0
    assert [(d["operation"], d["reason"]) for d in json.loads(out)] == [(names[1], "poison: cli")]
    code, out = await asyncio.to_thread(_cli, env.target, "dead-letters", "list", "--project", "p1")
    assert code == 0 and "poison: cli" in out and "poison: client" in out
    code, out = await asyncio.to_thread(
        _cli, env.target, "queues", "stats", "default", "--project", "p1"
    )
    assert code == 0 and "projects/p1/queues/default" in out
