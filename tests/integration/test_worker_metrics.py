"""The worker's dead-letter counter counts operations, not messages: a
leftover message of an operation already done is dead-lettered but not
counted again; an operation the claim ends (no attempts left) is counted."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from longrun_core.backends import build_backends
from longrun_core.model import State
from longrun_core.queue import TaskMessage
from longrun_core.settings import BackendSettings
from longrun_core.tasks import load_tasks
from longrun_worker.metrics import PrometheusWorkerMetrics
from longrun_worker.runtime import Worker, WorkerSettings
from tests.contract.records import make_record


async def test_dead_letters_count_operations_once(tmp_path: Path) -> None:
    backends = build_backends(BackendSettings(sqlite_path=tmp_path / "w.db"))
    await backends.start()
    try:
        store, queue = backends.store, backends.queue
        done = make_record(state=State.FAILED, attempt=3, max_attempts=3, error=b"")
        spent = make_record(attempt=3, max_attempts=3)  # queued, no attempts left
        for rec in (done, spent):
            await store.create(rec)  # the embedded store enqueues each one's message
        await queue.publish(TaskMessage(done.name, done.task, done.attempt))  # a leftover
        registry = CollectorRegistry()
        worker = Worker(
            store=store,
            queue=queue,
            registry=load_tasks(["longrun_worker.builtin_tasks"]),
            settings=WorkerSettings(receive_timeout=0.2),
            metrics=PrometheusWorkerMetrics(registry),
        )
        await worker.run(burst=True)
        dead = {message.operation for message, _ in await queue.dead_letters()}
        assert dead == {done.name, spent.name}
        assert len(await queue.dead_letters()) == 3  # two messages of `done`, one of `spent`
        counted = registry.get_sample_value("longrun_worker_dead_letters_total", {"task": "noop"})
        assert counted == 1  # `spent`, ended by its claim; `done` was dead-lettered before
        assert (await store.get(spent.name)).state is State.FAILED
    finally:
        await backends.close()
