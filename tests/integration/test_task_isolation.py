"""Where handlers run and what they can do to the worker, against the real
SQLite store and queue: task processes (results, progress, crashes, hangs,
deadlines, forks, lease loss), SystemExit anywhere, a handler blocking its
event loop, abandoned threads, and a shutdown bounded whatever runs.

The process tasks below run in task processes, so they report through files
in the directory their params name, never through this module's memory."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun_core import transitions
from longrun_core.clock import SystemClock, uuid_ids
from longrun_core.errors import Unavailable
from longrun_core.model import OperationRecord, State
from longrun_core.queue import Transition
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import RetryPolicy, TaskContext, TaskRegistry, TaskSet, TaskSpec
from longrun_server.dispatcher import Dispatcher
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.waiting import wait_until

SETTINGS = WorkerSettings(
    concurrency=2,
    lease=1.0,
    heartbeat=0.25,
    shutdown_grace=0.3,
    receive_timeout=0.2,
    kill_grace=0.3,
)
TWICE = RetryPolicy(max_attempts=2, min_backoff=0.05, max_backoff=0.1)
tasks = TaskSet()


def _mark(ctx: TaskContext, what: str) -> None:
    """Append `what` to the file named after the operation in params.dir."""
    op_id = ctx.operation.rsplit("/", 1)[-1]
    with (Path(ctx.params["dir"]) / op_id).open("a") as fh:
        fh.write(f"{what}\n")


@tasks.task("in_child")
def in_child(ctx: TaskContext) -> dict[str, Any]:
    ctx.progress_threadsafe(30, "working")
    gate = Path(ctx.params["dir"]) / "gate"
    deadline = time.monotonic() + 10
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"pid": os.getpid(), "attempt": ctx.attempt, "echo": ctx.params["echo"]}


@tasks.task("exits_sync", retry=TWICE)
def exits_sync(ctx: TaskContext) -> None:
    _mark(ctx, f"attempt {ctx.attempt}")
    sys.exit(3)


@tasks.task("exits_async", retry=TWICE)
async def exits_async(ctx: TaskContext) -> None:
    _mark(ctx, f"attempt {ctx.attempt}")
    raise SystemExit(3)


@tasks.task("interrupts_async", retry=TWICE)
async def interrupts_async(ctx: TaskContext) -> None:
    _mark(ctx, f"attempt {ctx.attempt}")
    raise KeyboardInterrupt


def _fails(ctx: TaskContext) -> None:
    raise ValueError(f"bad input in {ctx.params['dir']}")


async def _fails_async(ctx: TaskContext) -> None:
    _fails(ctx)


tasks.task("fails_in_process", isolation="process")(_fails)
tasks.task("fails_in_thread", isolation="thread")(_fails)
tasks.task("fails_inline", isolation="inline")(_fails_async)


@tasks.task("hard_exit", retry=TWICE)
def hard_exit(ctx: TaskContext) -> None:
    _mark(ctx, f"attempt {ctx.attempt}")
    os._exit(3)


@tasks.task("segfault", retry=TWICE)
def segfault(ctx: TaskContext) -> None:
    _mark(ctx, f"attempt {ctx.attempt}")
    ctypes.string_at(0)


@tasks.task("hangs", cancel_grace=0.2)
def hangs(ctx: TaskContext) -> None:
    """Ignores the cancel and SIGTERM: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(ctx, f"pid {os.getpid()}")
    time.sleep(60)


@tasks.task("hangs_past_deadline", timeout=0.5, cancel_grace=0.1, retry=TWICE)
def hangs_past_deadline(ctx: TaskContext) -> None:
    _mark(ctx, f"pid {os.getpid()}")
    time.sleep(60)


@tasks.task("forks")
def forks(ctx: TaskContext) -> dict[str, Any]:
    """Leaves a zombie (a child it never waits for) and a live process behind."""
    exited = os.fork()
    if exited == 0:
        os._exit(0)
    lingering = os.fork()
    if lingering == 0:
        time.sleep(60)
        os._exit(0)
    _mark(ctx, f"{exited} {lingering}")
    time.sleep(0.2)  # the first one has exited (a zombie) by now
    return {}


@tasks.task("blocks_its_loop")
async def blocks_its_loop(ctx: TaskContext) -> dict[str, Any]:
    _mark(ctx, f"attempt {ctx.attempt}")
    time.sleep(2.5)  # noqa: ASYNC251 - blocks the loop it runs on for 2.5 leases
    return {"attempt": ctx.attempt}


UNBLOCK = threading.Event()


@tasks.task("swallows_cancel", cancel_grace=0.2)
async def swallows_cancel(ctx: TaskContext) -> None:
    while not UNBLOCK.is_set():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            continue


@tasks.task("ignores_cancel_in_thread", cancel_grace=0.2, isolation="thread")
def ignores_cancel_in_thread(ctx: TaskContext) -> None:
    UNBLOCK.wait(30)


@tasks.task("runs_long", retry=TWICE)
def runs_long(ctx: TaskContext) -> dict[str, Any]:
    _mark(ctx, f"pid {os.getpid()} attempt {ctx.attempt}")
    time.sleep(float(ctx.params.get("seconds", 60)))
    return {"attempt": ctx.attempt}


REGISTRY = TaskRegistry(tasks.specs.values())


# ---- the environment ----


@dataclass
class Env:
    store: SqliteOperationStore
    queue: SqliteTaskQueue
    dispatcher: Dispatcher
    dir: Path
    workers: dict[Worker, asyncio.Task[None]] = field(default_factory=dict)

    async def submit(self, task: str, **params: Any) -> str:
        now = SystemClock().now()
        struct = struct_pb2.Struct()
        struct.update({"dir": str(self.dir), **params})
        spec = REGISTRY.get(task)
        rec = OperationRecord(
            id=uuid_ids(),
            task=task,
            params=struct.SerializeToString(),
            state=State.QUEUED,
            create_time=now,
            update_time=now,
            max_attempts=spec.retry.max_attempts,
            dispatch_due_time=now + timedelta(seconds=30),
        )
        await self.store.create(rec)  # paired: enqueued in the same transaction
        return rec.name

    def start_worker(self, settings: WorkerSettings = SETTINGS) -> Worker:
        worker = Worker(store=self.store, queue=self.queue, registry=REGISTRY, settings=settings)
        self.workers[worker] = asyncio.create_task(worker.run())
        return worker

    async def wait_state(self, name: str, *states: State, timeout: float = 15) -> OperationRecord:
        async def reached() -> OperationRecord | None:
            rec = await self.store.get(name)
            return rec if rec.state in states else None

        return await wait_until(reached, timeout, description=f"{name} in {states}")

    def marks(self, name: str) -> list[str]:
        path = self.dir / name.rsplit("/", 1)[-1]
        return path.read_text().splitlines() if path.exists() else []

    async def marked_pid(self, name: str) -> int:
        line = await wait_until(lambda: self.marks(name), description="the task started")
        return int(line[0].split()[1])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    backend = SqliteBackend(tmp_path / "lro.db", safety_net=0.5)
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(backend, visibility_timeout=5.0)
    queue.attach(store)
    await store.start()
    await queue.start()
    dispatcher = Dispatcher(
        store,
        queue,
        clock=SystemClock(),
        redispatch_after=timedelta(seconds=30),
        retention=timedelta(days=1),
        sweep_interval=0.1,
    )
    (tmp_path / "marks").mkdir()
    environment = Env(store, queue, dispatcher, tmp_path / "marks")
    UNBLOCK.clear()
    try:
        yield environment
    finally:
        UNBLOCK.set()
        for worker in environment.workers:
            worker.stop()
        for task in environment.workers.values():
            await asyncio.wait_for(task, 30)
        await dispatcher.stop()
        await queue.close()
        await store.close()


def status_of(rec: OperationRecord) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    op = rec.to_operation()
    assert op.WhichOneof("result") == "error", op
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in op.error.details)
    return op.error, info


def alive(pid: int) -> bool:
    """Whether `pid` exists at all (a zombie counts: it was not reaped)."""
    return Path(f"/proc/{pid}").exists()


# ---- a task process ----


async def test_a_sync_task_runs_in_a_process_of_its_own_and_reports_progress(env: Env) -> None:
    env.start_worker()
    name = await env.submit("in_child", echo=[1, "two"])

    async def progress_shown() -> OperationRecord | None:
        rec = await env.store.get(name)
        return rec if rec.progress_percent == 30 else None

    running = await wait_until(progress_shown, description="the child's progress")
    assert (running.state, running.progress_message) == (State.RUNNING, "working")
    (env.dir / "gate").touch()
    done = await env.wait_state(name, State.SUCCEEDED)

    result = struct_pb2.Struct()
    assert done.to_operation().response.Unpack(result)
    assert result["echo"] == [1, "two"]
    assert result["attempt"] == 1
    pid = int(result["pid"])  # type: ignore[arg-type]
    assert pid != os.getpid()
    assert not alive(pid)  # ended and reaped


@pytest.mark.parametrize(
    ("task", "exception", "text"),
    [
        ("exits_sync", "SystemExit", "SystemExit: 3"),
        ("exits_async", "SystemExit", "SystemExit: 3"),
        ("interrupts_async", "KeyboardInterrupt", "KeyboardInterrupt: "),
    ],
)
async def test_system_exit_from_a_task_is_that_tasks_failure(
    env: Env, task: str, exception: str, text: str
) -> None:
    worker = env.start_worker()
    name = await env.submit(task)

    failed = await env.wait_state(name, State.FAILED)

    assert env.marks(name) == ["attempt 1", "attempt 2"]  # retried, never past max_attempts
    assert failed.attempt == 2
    status, info = status_of(failed)
    assert status.message == text
    assert (info.metadata["exception"], info.metadata["attempt"]) == (exception, "2")
    assert not env.workers[worker].done()  # the worker runs on
    after = await env.submit("in_child", echo="still here")
    (env.dir / "gate").touch()
    assert (await env.wait_state(after, State.SUCCEEDED)).attempt == 1


def _debug_info(rec: OperationRecord) -> error_details_pb2.DebugInfo | None:
    for detail in rec.to_operation().error.details:
        debug = error_details_pb2.DebugInfo()
        if detail.Unpack(debug):
            return debug
    return None


@pytest.mark.parametrize("task", ["fails_in_process", "fails_in_thread", "fails_inline"])
@pytest.mark.parametrize("debug_errors", [False, True])
async def test_debug_errors_reach_the_error_wherever_the_handler_ran(
    env: Env, task: str, debug_errors: bool
) -> None:
    """The outcome is made where the handler ran (a task process too): a
    DebugInfo (package-relative paths, nothing absolute) only with --debug-errors."""
    env.start_worker(replace(SETTINGS, debug_errors=debug_errors))
    name = await env.submit(task)

    failed = await env.wait_state(name, State.FAILED)

    status, info = status_of(failed)
    assert status.message == f"ValueError: bad input in {env.dir}"
    assert info.metadata["exception"] == "ValueError"
    debug = _debug_info(failed)
    if not debug_errors:
        assert debug is None
        assert b"Traceback" not in (failed.error or b"")
        return
    assert debug is not None
    stack = "".join(debug.stack_entries)
    assert "integration/test_task_isolation.py" in stack, stack
    assert "in _fails" in stack, stack
    assert "ValueError: bad input in" in stack, stack
    # The message keeps what the task wrote; the traceback names no absolute path.
    assert re.search(r"(^|[\s'\"(])/[\w.-]+/", stack + debug.detail) is None, stack


@pytest.mark.parametrize(
    ("task", "how"),
    [("hard_exit", "exited with code 3"), ("segfault", "was killed by SIGSEGV")],
)
async def test_a_crashing_task_process_costs_one_attempt_each_time(
    env: Env, task: str, how: str
) -> None:
    worker = env.start_worker()
    name = await env.submit(task)

    failed = await env.wait_state(name, State.FAILED)

    assert env.marks(name) == ["attempt 1", "attempt 2"]
    status, info = status_of(failed)
    assert status.message == f"TaskCrashed: the task process {how} without an outcome"
    assert info.metadata["attempt"] == "2"
    assert not env.workers[worker].done()


async def test_a_cancel_kills_a_task_process_that_ignores_it_and_sigterm(env: Env) -> None:
    env.start_worker()
    name = await env.submit("hangs")
    pid = await env.marked_pid(name)

    asked = time.monotonic()
    await env.store.update(name, _cancel)
    rec = await env.wait_state(name, State.CANCELLED, timeout=5)
    took = time.monotonic() - asked

    assert rec.to_operation().error.code == code_pb2.CANCELLED
    # cancel_grace 0.2 s, then SIGTERM (ignored), then SIGKILL after kill_grace 0.3 s
    assert 0.5 <= took < 5
    await wait_until(lambda: not alive(pid), description="the task process is gone")


async def test_the_attempt_deadline_kills_the_process_and_fails_the_attempt(env: Env) -> None:
    env.start_worker()
    name = await env.submit("hangs_past_deadline")

    failed = await env.wait_state(name, State.FAILED)

    pids = [int(line.split()[1]) for line in env.marks(name)]
    assert len(pids) == 2  # the deadline is a retryable failure; max_attempts is 2
    assert not any(alive(pid) for pid in pids)
    status, info = status_of(failed)
    assert status.code == code_pb2.DEADLINE_EXCEEDED
    assert status.message == "AttemptTimedOut: attempt 2 ran past its 0.5s deadline"
    assert info.metadata["attempt"] == "2"


async def test_a_forking_task_leaves_no_process_and_no_zombie_behind(env: Env) -> None:
    env.start_worker()
    name = await env.submit("forks")

    await env.wait_state(name, State.SUCCEEDED)

    exited, lingering = (int(pid) for pid in env.marks(name)[0].split())
    await wait_until(lambda: not alive(exited) and not alive(lingering), timeout=5)


async def test_a_lease_that_cannot_be_renewed_stops_the_task_before_anyone_takes_over(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses writes for a while (a partition, say): the holder
    kills its task process within 3/4 of the lease, so when the sweeper takes
    the operation over after a whole lease of silence, one run is left."""
    env.start_worker()
    name = await env.submit("runs_long", seconds=60)
    first_pid = await env.marked_pid(name)
    update = env.store.update
    refusing = True

    async def refusing_update(op: str, transition: Transition) -> OperationRecord:
        if refusing:
            raise Unavailable("the store is unreachable (test)")
        return await update(op, transition)

    monkeypatch.setattr(env.store, "update", refusing_update)
    refused_at = time.monotonic()
    await wait_until(lambda: not alive(first_pid), timeout=5, description="the task is stopped")
    assert time.monotonic() - refused_at < SETTINGS.lease  # before its lease could lapse
    assert (await env.store.get(name)).state is State.RUNNING  # not wrongly ended

    refusing = False
    env.dispatcher.start()  # observes the silent lease, then takes it over
    second = await wait_until(
        lambda: len(env.marks(name)) == 2, timeout=10, description="attempt 2 started"
    )
    assert second
    assert env.marks(name)[1].endswith("attempt 2")
    assert not alive(first_pid)


# ---- in the worker's process ----


async def test_a_task_blocking_its_event_loop_keeps_its_lease_and_runs_once(env: Env) -> None:
    """2.5 s without yielding, with a 1 s lease: the heartbeat runs on the
    worker's control loop, which the handler's loop cannot block."""
    env.start_worker()
    env.dispatcher.start()  # would take a lapsed lease over
    name = await env.submit("blocks_its_loop")

    done = await env.wait_state(name, State.SUCCEEDED)

    assert done.attempt == 1
    assert env.marks(name) == ["attempt 1"]


async def test_an_abandoned_thread_keeps_its_slot_until_it_returns(env: Env) -> None:
    worker = env.start_worker(WorkerSettings(**{**SETTINGS.__dict__, "concurrency": 1}))
    name = await env.submit("ignores_cancel_in_thread")
    await env.wait_state(name, State.RUNNING)
    await env.store.update(name, _cancel)
    await env.wait_state(name, State.CANCELLED, timeout=5)
    await wait_until(lambda: worker.abandoned_threads == 1)

    waiting = await env.submit("in_child", echo=0)
    (env.dir / "gate").touch()
    await asyncio.sleep(1.0)
    assert (await env.store.get(waiting)).state is State.QUEUED  # the only slot is held

    UNBLOCK.set()
    await env.wait_state(waiting, State.SUCCEEDED)
    assert worker.abandoned_threads == 0


async def test_shutdown_is_bounded_whatever_the_handlers_do(env: Env) -> None:
    worker = env.start_worker(WorkerSettings(**{**SETTINGS.__dict__, "concurrency": 3}))
    swallower = await env.submit("swallows_cancel")
    hanger = await env.submit("hangs")
    sleeper = await env.submit("ignores_cancel_in_thread")
    hang_pid = await env.marked_pid(hanger)
    for name in (swallower, hanger, sleeper):
        await env.wait_state(name, State.RUNNING)

    stopping = time.monotonic()
    worker.stop()
    await asyncio.wait_for(env.workers.pop(worker), 30)
    took = time.monotonic() - stopping

    assert took < SETTINGS.shutdown_grace + SETTINGS.shutdown_bound
    assert took < SETTINGS.shutdown_grace + SETTINGS.kill_grace + 2.0  # in practice
    assert not alive(hang_pid)
    for name in (swallower, hanger, sleeper):
        released = await env.store.get(name)
        assert (released.state, released.attempt, released.releases) == (State.QUEUED, 0, 1)


def test_a_process_task_whose_handler_cannot_be_found_by_name_is_refused_at_start() -> None:
    def local(ctx: TaskContext) -> None:
        return None

    registry = TaskRegistry([TaskSpec("local", local)])
    with pytest.raises(ValueError, match=r"must be a module-level function.*isolation='thread'"):
        Worker(store=None, queue=None, registry=registry)  # type: ignore[arg-type]


def _cancel(rec: OperationRecord) -> OperationRecord | None:
    return transitions.request_cancel(rec, now=SystemClock().now(), retention=timedelta(days=1))
