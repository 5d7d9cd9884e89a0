"""The worker's metrics (docs/observability.md). `Worker` calls a
`WorkerMetrics`, whose methods do nothing: without `--metrics-address`
that is all it costs. `PrometheusWorkerMetrics` counts into a registry.

* `longrun_worker_attempts_total{task}`: attempts started (a handler began).
* `longrun_worker_attempt_duration_seconds{task,ending}`: how long each
  attempt ran; ending: done, cancelled, deadline, lost.
* `longrun_worker_outcomes_total{task,queue,outcome}`: operations this worker
  ended: succeeded, failed, cancelled; `queue` is the queue id, at most
  `--metrics-max-queues` values (longrun_core.observability.queue_labels).
* `longrun_worker_retries_total{task}`: failed attempts scheduled for retry.
* `longrun_worker_dead_letters_total{task}`: operations whose message this
  worker moved to the dead-letter destination (failed after their last
  attempt). A duplicate message of an operation already done (e.g. the
  sweeper's republish of a retry) is dead-lettered too, but not counted again.
* `longrun_worker_leases_lost_total{task}`: attempts stopped because their
  lease was lost (taken over, or not renewable in time).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from longrun_core.model import OperationRecord, State
from longrun_core.observability.backend_metrics import (
    BackendMetrics,
    instrument_queue,
    instrument_store,
)
from longrun_core.observability.exposition import MetricsEndpoint
from longrun_core.observability.queue_labels import DEFAULT_MAX_QUEUE_LABELS, QueueLabels
from longrun_core.queue import TaskQueue
from longrun_core.store import OperationStore

#: Seconds: no-op tasks to hour-long ones.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_OUTCOMES = {
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.CANCELLED: "cancelled",
}


class WorkerMetrics:
    """What the worker reports; this base reports nowhere."""

    def attempt_started(self, task: str) -> None:
        """A handler of `task` is about to start."""

    def attempt_ended(self, task: str, ending: str, seconds: float) -> None:
        """An attempt ended: done, cancelled, deadline or lost (its lease)."""

    def finished(self, rec: OperationRecord, *, dead_lettered: bool) -> None:
        """This worker wrote `rec`'s final state (and dead-lettered its message)."""

    def retried(self, task: str) -> None:
        """A failed attempt was scheduled to run again."""

    def dead_lettered(self, task: str) -> None:
        """A message of a done operation went to the dead-letter destination."""


class PrometheusWorkerMetrics(WorkerMetrics):
    def __init__(
        self, registry: CollectorRegistry, queue_labels: QueueLabels | None = None
    ) -> None:
        self.registry = registry
        self.queue_label = queue_labels or QueueLabels()
        self.attempts = Counter(
            "longrun_worker_attempts", "Attempts started, by task.", ["task"], registry=registry
        )
        self.durations = Histogram(
            "longrun_worker_attempt_duration_seconds",
            "How long attempts ran, by task and how they ended (done, cancelled, deadline, lost).",
            ["task", "ending"],
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.outcomes = Counter(
            "longrun_worker_outcomes",
            "Operations this worker ended, by task, queue id and outcome (succeeded, failed, "
            "cancelled).",
            ["task", "queue", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "longrun_worker_retries",
            "Failed attempts scheduled to run again, by task.",
            ["task"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "longrun_worker_dead_letters",
            "Task messages this worker moved to the dead-letter destination, by task.",
            ["task"],
            registry=registry,
        )
        self.leases_lost = Counter(
            "longrun_worker_leases_lost",
            "Attempts stopped because their lease was lost, by task.",
            ["task"],
            registry=registry,
        )
        self.backend = BackendMetrics(registry)

    def attempt_started(self, task: str) -> None:
        self.attempts.labels(task).inc()

    def attempt_ended(self, task: str, ending: str, seconds: float) -> None:
        self.durations.labels(task, ending).observe(seconds)
        if ending == "lost":
            self.leases_lost.labels(task).inc()

    def finished(self, rec: OperationRecord, *, dead_lettered: bool) -> None:
        outcome = _OUTCOMES.get(rec.state)
        if outcome is not None:
            self.outcomes.labels(rec.task, self.queue_label(rec.queue), outcome).inc()
        if dead_lettered:
            self.dead_lettered(rec.task)

    def retried(self, task: str) -> None:
        self.retries.labels(task).inc()

    def dead_lettered(self, task: str) -> None:
        self.dead_letters.labels(task).inc()


def worker_observability(
    address: str,
    store: OperationStore,
    queue: TaskQueue,
    *,
    port_file: Path | None = None,
    registry: CollectorRegistry | None = None,
    max_queues: int = DEFAULT_MAX_QUEUE_LABELS,
) -> tuple[PrometheusWorkerMetrics, MetricsEndpoint]:
    """The worker's metrics and `/metrics` endpoint; `store` and `queue` are
    instrumented (call before the worker runs)."""
    metrics = PrometheusWorkerMetrics(registry or CollectorRegistry(), QueueLabels(max_queues))
    instrument_store(store, metrics.backend)
    instrument_queue(queue, metrics.backend)
    return metrics, MetricsEndpoint(metrics.registry, address, port_file=port_file)
