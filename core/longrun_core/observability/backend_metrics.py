"""Latency of every operation-store and task-queue call a process makes.

`instrument_store` / `instrument_queue` wrap the adapter *instance's*
primitives (the calls that reach SQLite, Firestore or Pub/Sub) in timers:
the adapters stay unaware of metrics, and nothing is wrapped when metrics
are off. The public verbs (`get`, `update`, ...) are built on these
primitives, so each round trip is timed once."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from longrun_core.model import OperationRecord
from longrun_core.queue import TaskQueue
from longrun_core.store import CreateResult, OperationStore

#: Store primitives timed, by the `call` label they get.
STORE_CALLS = {
    "_read": "read",
    "_insert": "insert",
    "_replace_if_version": "replace",
    "_delete": "delete",
    "list": "list",
    "due_for_dispatch": "due_for_dispatch",
    "leased": "leased",
    "count_open": "count_open",
    "count_in_queue": "count_in_queue",
    "delete_expired": "delete_expired",
}
#: Queue calls timed (`receive` is not: it waits for messages by design).
QUEUE_CALLS = {
    "publish": "publish",
    "dead_letters": "dead_letters",
    "read_dead_letters": "read_dead_letters",
}

#: Seconds: from a cached SQLite read to a slow Firestore commit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class BackendMetrics:
    """`longrun_store_call_duration_seconds` and
    `longrun_queue_call_duration_seconds`, by call and result (ok / error)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.store_calls = Histogram(
            "longrun_store_call_duration_seconds",
            "Latency of operation store calls, by call and result (ok or error).",
            ["call", "result"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_calls = Histogram(
            "longrun_queue_call_duration_seconds",
            "Latency of task queue calls, by call and result (ok or error).",
            ["call", "result"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )


def _timed(
    histogram: Histogram, call: str, method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    ok, error = histogram.labels(call, "ok"), histogram.labels(call, "error")

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except BaseException:
            error.observe(time.perf_counter() - start)
            raise
        ok.observe(time.perf_counter() - start)
        return result

    return timed


def instrument_store(
    store: OperationStore,
    metrics: BackendMetrics,
    *,
    on_created: Callable[[OperationRecord], None] | None = None,
    on_ended: Callable[[OperationRecord], None] | None = None,
) -> None:
    """Time `store`'s primitives; `on_created(record)` runs for each
    operation the store newly created (not for a request_id replay), and
    `on_ended(record)` for each write through this store object that ended
    an operation (a compare-and-set from a record not done to a done one)."""
    for attr, call in STORE_CALLS.items():
        setattr(store, attr, _timed(metrics.store_calls, call, getattr(store, attr)))
    if on_created is not None:
        insert = store._insert

        @functools.wraps(insert)
        async def counted(rec: OperationRecord) -> CreateResult:
            result = await insert(rec)
            if result.created:
                on_created(result.record)
            return result

        store._insert = counted  # type: ignore[method-assign]
    if on_ended is not None:
        replace = store._replace_if_version

        @functools.wraps(replace)
        async def ended(
            rec: OperationRecord,
            expected_version: int,
            *,
            previous: OperationRecord | None = None,
        ) -> bool:
            written = await replace(rec, expected_version, previous=previous)
            if written and rec.done and previous is not None and not previous.done:
                on_ended(rec)
            return written

        store._replace_if_version = ended  # type: ignore[method-assign]


def instrument_queue(queue: TaskQueue, metrics: BackendMetrics) -> None:
    for attr, call in QUEUE_CALLS.items():
        setattr(queue, attr, _timed(metrics.queue_calls, call, getattr(queue, attr)))
