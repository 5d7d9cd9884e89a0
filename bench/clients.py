"""The clients the end-to-end benchmarks drive, one per system, each in its
idiomatic form: longrun through grpc.aio in this process (CreateJob, then
WaitOperation for the outcome), Celery through `task.delay().get()` from
threads in a pool of client processes (Celery has no asyncio client; see
`CeleryClients`). Both keep `concurrency` jobs in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, struct_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc

WAIT_SECONDS = 60


@dataclass
class LoadStats:
    completed: int = 0
    #: Jobs finished including the warm-up (for CPU per job).
    total: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


class LongrunClient:
    """One grpc.aio channel to our server (or, with an `ipv4:A,B` target,
    round_robin over several servers)."""

    def __init__(self, target: str) -> None:
        options = [("grpc.lb_policy_name", "round_robin")] if target.startswith("ipv4:") else []
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)

    async def __aenter__(self) -> LongrunClient:
        await asyncio.wait_for(self.channel.channel_ready(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def create(
        self, task: str = "noop", params: dict[str, Any] | None = None
    ) -> operations_pb2.Operation:
        request = jobs_pb2.CreateJobRequest(task=task)
        if params:
            request.params.update(params)
        op: operations_pb2.Operation = await self.jobs.CreateJob(request, timeout=30)
        return op

    async def create_many(self, n: int, task: str = "noop") -> list[operations_pb2.Operation]:
        """`n` jobs of `task` in one BatchCreateJobs call."""
        request = jobs_pb2.BatchCreateJobsRequest(
            requests=[jobs_pb2.CreateJobRequest(task=task) for _ in range(n)]
        )
        got: jobs_pb2.BatchCreateJobsResponse = await self.jobs.BatchCreateJobs(request, timeout=30)
        return list(got.operations)

    async def wait(self, name: str, seconds: int = WAIT_SECONDS) -> operations_pb2.Operation:
        op: operations_pb2.Operation = await self.ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=seconds)
            ),
            timeout=seconds + 5,
        )
        return op

    async def job(
        self, task: str = "noop", params: dict[str, Any] | None = None
    ) -> operations_pb2.Operation:
        """Create, then wait for the outcome; raise unless it succeeded."""
        op = await self.wait((await self.create(task, params)).name)
        if not op.done or not op.HasField("response"):
            raise RuntimeError(f"{op.name} did not succeed: done={op.done} error={op.error}")
        return op


def response_dict(op: operations_pb2.Operation) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    value = struct_pb2.Struct()
    op.response.Unpack(value)
    return MessageToDict(value)


async def longrun_load(
    target: str,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    task: str = "noop",
    params: dict[str, Any] | None = None,
) -> LoadStats:
    """`concurrency` loops of create -> wait for `warmup` + `seconds`; counts
    and times the jobs that finished within the measured `seconds`."""
    stats = LoadStats()
    async with LongrunClient(target) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup
        end = start + seconds

        async def one_loop() -> None:
            while loop.time() < end:
                t0 = loop.time()
                try:
                    await client.job(task, params)
                except (grpc.RpcError, RuntimeError) as exc:
                    stats.errors += 1
                    stats.first_error = (
                        stats.first_error or (f"after {loop.time() - t0:.3f}s: {exc!r}"[:500])
                    )
                    await asyncio.sleep(0.05)
                    continue
                t1 = loop.time()
                stats.total += 1
                if t0 >= start and t1 <= end:
                    stats.completed += 1
                    stats.latencies.append(t1 - t0)

        await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    stats.seconds = seconds
    return stats


async def longrun_batch_load(
    target: str, *, concurrency: int, batch: int, seconds: float, warmup: float
) -> LoadStats:
    """`concurrency // batch` loops of: BatchCreateJobs of `batch` no-op jobs,
    then one WaitOperation per job (concurrently) until all are done; the
    same `concurrency` jobs in flight as `longrun_load`. Counts the jobs of
    batches that started and ended within the measured `seconds`."""
    stats = LoadStats()
    async with LongrunClient(target) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup
        end = start + seconds

        async def one_loop() -> None:
            while loop.time() < end:
                t0 = loop.time()
                try:
                    ops = await client.create_many(batch)
                    done = await asyncio.gather(*(client.wait(op.name) for op in ops))
                    failed = [op.name for op in done if not op.HasField("response")]
                    if failed:
                        raise RuntimeError(f"{failed[0]} did not succeed")
                except (grpc.RpcError, RuntimeError) as exc:
                    stats.errors += 1
                    stats.first_error = stats.first_error or repr(exc)[:500]
                    await asyncio.sleep(0.05)
                    continue
                t1 = loop.time()
                stats.total += batch
                if t0 >= start and t1 <= end:
                    stats.completed += batch
                    stats.latencies.append(t1 - t0)

        await asyncio.gather(*(one_loop() for _ in range(max(1, concurrency // batch))))
    stats.seconds = seconds
    return stats


async def longrun_roundtrips(
    target: str, *, n: int, warmup: int, task: str = "noop", params: dict[str, Any] | None = None
) -> LoadStats:
    """`n` sequential create -> wait round trips (after `warmup` unmeasured ones)."""
    stats = LoadStats()
    async with LongrunClient(target) as client:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            await client.job(task, params)
            if i >= warmup:
                stats.latencies.append(time.perf_counter() - t0)
                stats.completed += 1
    stats.seconds = sum(stats.latencies)
    return stats


# ---- Celery ----


def celery_app(url: str) -> Any:
    from bench.celery_app import make_app

    return make_app(url)


def celery_ready(app: Any, timeout: float = 60) -> None:
    """Block until the worker answers a no-op."""
    app.tasks["bench.noop"].delay().get(timeout=timeout)


class CeleryClients:
    """A pool of client processes for the Celery side of a load run.

    Celery's client is synchronous and `AsyncResult.get()` on the redis
    backend drains one result connection per app, so threads of one process
    serialize on it (and on the GIL): measured here, one process tops out
    well below what the worker can do. The fair baseline is several client
    processes, each with a few threads and one app per thread. The pool is
    started once (spawned, so nothing of grpc is forked) and reused by every
    round."""

    def __init__(self, url: str, processes: int = 8) -> None:
        import multiprocessing

        self.processes = processes
        self._pool = multiprocessing.get_context("spawn").Pool(
            processes, initializer=_celery_init, initargs=(url,)
        )

    def __enter__(self) -> CeleryClients:
        return self

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._pool._pool]  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self._pool.terminate()
        self._pool.join()

    def load(
        self,
        *,
        concurrency: int,
        seconds: float,
        warmup: float,
        task: str = "bench.noop",
        kwargs: dict[str, Any] | None = None,
    ) -> LoadStats:
        """`concurrency` loops of `delay().get()` spread over the processes;
        same counting as `longrun_load`."""
        per = [concurrency // self.processes] * self.processes
        for i in range(concurrency % self.processes):
            per[i] += 1
        start_at = time.time() + 1.0  # every process starts its clock together
        args = [(n, start_at, warmup, seconds, task, kwargs or {}) for n in per if n]
        stats = LoadStats(seconds=seconds)
        for part in self._pool.starmap(_celery_round, args):
            stats.completed += part.completed
            stats.total += part.total
            stats.errors += part.errors
            stats.latencies += part.latencies
            stats.first_error = stats.first_error or part.first_error
        return stats


_APP_URL = ""


def _celery_init(url: str) -> None:
    global _APP_URL
    _APP_URL = url


def _celery_round(
    threads: int,
    start_at: float,
    warmup: float,
    seconds: float,
    task: str,
    kwargs: dict[str, Any],
) -> LoadStats:
    """One client process's share of a round (runs in a pool process)."""
    apps = [celery_app(_APP_URL) for _ in range(threads)]
    for app in apps:  # connect before the clock starts
        celery_ready(app)
    time.sleep(max(0.0, start_at - time.time()))
    stats = LoadStats()
    lock = threading.Lock()
    start = time.monotonic() + warmup
    end = start + seconds

    def one_loop(app: Any) -> Callable[[], None]:
        fn = app.tasks[task]

        def run() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    fn.delay(**kwargs).get(timeout=WAIT_SECONDS)
                except Exception as exc:
                    with lock:
                        stats.errors += 1
                        stats.first_error = stats.first_error or repr(exc)[:500]
                    time.sleep(0.05)
                    continue
                t1 = time.monotonic()
                with lock:
                    stats.total += 1
                    if t0 >= start and t1 <= end:
                        stats.completed += 1
                        stats.latencies.append(t1 - t0)

        return run

    threads_ = [threading.Thread(target=one_loop(app), daemon=True) for app in apps]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    for app in apps:
        app.close()
    return stats


def celery_roundtrips(
    app: Any, *, n: int, warmup: int, task: str = "bench.noop", kwargs: dict[str, Any] | None = None
) -> LoadStats:
    stats = LoadStats()
    fn = app.tasks[task]
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn.delay(**(kwargs or {})).get(timeout=WAIT_SECONDS)
        if i >= warmup:
            stats.latencies.append(time.perf_counter() - t0)
            stats.completed += 1
    stats.seconds = sum(stats.latencies)
    return stats
