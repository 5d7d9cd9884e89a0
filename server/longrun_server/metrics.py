"""The server's metrics (docs/observability.md), built only with
`--metrics-address`: without it no interceptor is installed and no store
call is timed.

* `longrun_rpc_duration_seconds{method,code}`: every RPC with a handler, from
  the interceptor (`MetricsInterceptor`, outermost: it sees the auth
  interceptor's UNAUTHENTICATED too); its `_count` is the RPC count.
* `longrun_wait_operation_open`: WaitOperation calls in progress.
* `longrun_jobs_created_total{task,project,queue}`: operations newly stored
  (request_id replays not counted), from the store's insert.
* `longrun_jobs_ended_total{task,queue,outcome}`: operations this server
  ended (a cancel or purge of a queued job, the sweeper failing one whose
  lease lapsed with no attempt left); workers count the ends they write.
* `longrun_queue_ready_jobs{queue}`, `longrun_queue_oldest_ready_job_age_seconds{queue}`:
  per-queue depth from the operation store (queue_depth.QueueReadyGauges).
  `queue` label values are capped (queue_labels).
* `longrun_leases_expired_total`: RUNNING operations this server's sweeper
  took back from a worker that stopped renewing its lease.
* store and queue call latency (longrun_core.observability.backend_metrics)
  and, on the embedded queue, its depth (queue_depth).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from longrun_core.model import OperationRecord, State
from longrun_core.observability.backend_metrics import (
    BackendMetrics,
    instrument_queue,
    instrument_store,
)
from longrun_core.observability.exposition import MetricsEndpoint
from longrun_core.observability.queue_depth import (
    QueueDepthGauges,
    QueueReadyGauges,
    sqlite_depth_reader,
)
from longrun_core.observability.queue_labels import DEFAULT_MAX_QUEUE_LABELS, QueueLabels
from longrun_core.queue import TaskQueue
from longrun_core.store import OperationStore
from longrun_server.dispatcher import Dispatcher
from longrun_server.rpc_tracing import RpcTracingInterceptor

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

#: Seconds; WaitOperation calls may last up to the longest wait (minutes).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_METHOD = "/google.longrunning.Operations/WaitOperation"


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    return "UNKNOWN"


_OUTCOMES = {
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.CANCELLED: "cancelled",
}


class ServerMetrics:
    def __init__(
        self, registry: CollectorRegistry, queue_labels: QueueLabels | None = None
    ) -> None:
        self.registry = registry
        self.queue_label = queue_labels or QueueLabels()
        self.rpc = Histogram(
            "longrun_rpc_duration_seconds",
            "gRPC calls (HTTP gateway calls included), by full method and status code.",
            ["method", "code"],
            registry=registry,
            buckets=RPC_BUCKETS,
        )
        self.open_waits = Gauge(
            "longrun_wait_operation_open", "WaitOperation calls in progress.", registry=registry
        )
        self.jobs_created = Counter(
            "longrun_jobs_created",
            "Operations created (request_id replays excluded), by task, project and queue id.",
            ["task", "project", "queue"],
            registry=registry,
        )
        self.jobs_ended = Counter(
            "longrun_jobs_ended",
            "Operations this server ended (cancelled or purged while queued, failed by the "
            "sweeper), by task, queue id and outcome.",
            ["task", "queue", "outcome"],
            registry=registry,
        )
        self.leases_expired = Counter(
            "longrun_leases_expired",
            "RUNNING operations the sweeper took back after their lease lapsed.",
            registry=registry,
        )
        self.backend = BackendMetrics(registry)

    def job_created(self, rec: OperationRecord) -> None:
        self.jobs_created.labels(rec.task, rec.project, self.queue_label(rec.queue)).inc()

    def job_ended(self, rec: OperationRecord) -> None:
        outcome = _OUTCOMES.get(rec.state)
        if outcome is not None:
            self.jobs_ended.labels(rec.task, self.queue_label(rec.queue), outcome).inc()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every call that has a handler (unknown methods are not
    counted: their names are the caller's choice)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        #: method -> (the inner handler, its timed wrapper): built once per
        #: method (and inner handler), not per call; bounded by the methods served.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._children: dict[tuple[str, str], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._single(handler.unary_unary, method), **kw
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._single(handler.stream_unary, method), **kw
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method), **kw
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method), **kw
            )
        return handler  # pragma: no cover - a handler has one behaviour

    def _observe(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], start: float, ok: bool
    ) -> None:
        code = context.code()
        name = _code_name(code) if code is not None else ("OK" if ok else "UNKNOWN")
        key = (method, name)
        child = self._children.get(key)
        if child is None:  # bounded: methods served x status codes
            child = self._children[key] = self.metrics.rpc.labels(method, name)
        child.observe(time.perf_counter() - start)

    def _single(self, behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
        waits = self.metrics.open_waits if method == WAIT_METHOD else None

        @functools.wraps(behavior)
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start, ok = time.perf_counter(), False
            if waits is not None:
                waits.inc()
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                ok = True
                return result
            finally:
                if waits is not None:
                    waits.dec()
                self._observe(method, context, start, ok)

        return timed

    def _stream(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def timed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            start, ok = time.perf_counter(), False
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # writes with context.write
                    await result
                elif hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item
                ok = True
            finally:
                self._observe(method, context, start, ok)

        return timed


def server_tracing(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    """The server's RPC span interceptor on `provider` (outermost: the
    handler, and the task message it publishes, run inside its span):
    rpc_tracing.RpcTracingInterceptor, the spans of
    opentelemetry-instrumentation-grpc at a lower cost per call."""
    return RpcTracingInterceptor(provider)


def count_lease_expiries(dispatcher: Dispatcher, metrics: ServerMetrics) -> None:
    """Count what the dispatcher's lease checks take back (its instance's
    `check_leases`, which the sweep calls, returns how many)."""
    check = dispatcher.check_leases

    @functools.wraps(check)
    async def counted() -> int:
        taken = await check()
        if taken:
            metrics.leases_expired.inc(taken)
        return taken

    dispatcher.check_leases = counted  # type: ignore[method-assign]


@dataclass
class ServerObservability:
    """What `--metrics-address` adds to a server: its registry and metrics,
    the interceptor, and the `/metrics` endpoint."""

    metrics: ServerMetrics
    endpoint: MetricsEndpoint
    interceptor: MetricsInterceptor
    depth: QueueDepthGauges | None = None
    ready: QueueReadyGauges | None = None

    @classmethod
    def build(
        cls,
        address: str,
        store: OperationStore,
        queue: TaskQueue,
        *,
        port_file: Path | None = None,
        registry: CollectorRegistry | None = None,
        depth_ttl: float = 5.0,
        max_queues: int = DEFAULT_MAX_QUEUE_LABELS,
    ) -> ServerObservability:
        """Instrument `store` and `queue` (call before serving); at most
        `max_queues` queue label values (queue_labels)."""
        metrics = ServerMetrics(registry or CollectorRegistry(), QueueLabels(max_queues))
        instrument_store(
            store, metrics.backend, on_created=metrics.job_created, on_ended=metrics.job_ended
        )
        instrument_queue(queue, metrics.backend)
        ready = QueueReadyGauges(metrics.registry, store, ttl=depth_ttl, max_queues=max_queues)
        reader = sqlite_depth_reader(queue)
        depth = (
            QueueDepthGauges(metrics.registry, reader, ttl=depth_ttl)
            if reader is not None
            else None
        )
        endpoint = MetricsEndpoint(
            metrics.registry,
            address,
            before_scrape=[ready.refresh, *([depth.refresh] if depth is not None else [])],
            port_file=port_file,
        )
        return cls(metrics, endpoint, MetricsInterceptor(metrics), depth, ready)

    async def start(self, dispatcher: Dispatcher) -> int:
        """Count `dispatcher`'s lease expiries and listen; returns the metrics port."""
        count_lease_expiries(dispatcher, self.metrics)
        return await self.endpoint.start()

    async def stop(self) -> None:
        await self.endpoint.stop()
