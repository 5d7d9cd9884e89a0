"""Queue depth and the age of the oldest ready message, read on scrape
(one bounded query, cached for `ttl` seconds however often it is scraped).

The embedded SQLite queue answers from its `tasks` table. Pub/Sub is not
read here: Cloud Monitoring already exports
`pubsub.googleapis.com/subscription/num_undelivered_messages` and
`oldest_unacked_message_age` for the subscription (docs/observability.md)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge

from longrun_core.observability.queue_labels import DEFAULT_MAX_QUEUE_LABELS, top_queues
from longrun_core.queue import TaskQueue
from longrun_core.store import OperationStore

#: Ready messages counted at most (the count is an index walk this long).
DEFAULT_DEPTH_CAP = 100_000
#: Seconds a depth read is reused.
DEFAULT_DEPTH_TTL = 5.0


@dataclass(frozen=True)
class QueueDepth:
    #: Messages that may be received now (not leased, not delayed), at most the cap.
    ready: int
    #: Seconds the longest-waiting ready message has been receivable (0: none ready).
    oldest_ready_age: float


DepthReader = Callable[[], Awaitable[QueueDepth]]


class QueueDepthGauges:
    """`longrun_queue_ready_messages` and `longrun_queue_oldest_ready_age_seconds`,
    refreshed by `refresh` (a scrape hook) at most every `ttl` seconds."""

    def __init__(
        self,
        registry: CollectorRegistry,
        read: DepthReader,
        *,
        ttl: float = DEFAULT_DEPTH_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.ttl = ttl
        self._monotonic = monotonic
        self._read_at: float | None = None
        self.reads = 0
        self.ready = Gauge(
            "longrun_queue_ready_messages",
            "Task messages that may be received now (capped; read on scrape, cached).",
            registry=registry,
        )
        self.oldest_age = Gauge(
            "longrun_queue_oldest_ready_age_seconds",
            "Seconds the longest-waiting ready task message has waited (0: none ready).",
            registry=registry,
        )

    async def refresh(self) -> None:
        now = self._monotonic()
        if self._read_at is not None and now - self._read_at < self.ttl:
            return
        self._read_at = now
        depth = await self.read()
        self.reads += 1
        self.ready.set(depth.ready)
        self.oldest_age.set(depth.oldest_ready_age)


#: QUEUED operations read at most by one per-queue depth read.
DEFAULT_READY_CAP = 100_000


class QueueReadyGauges:
    """Per queue, from the operation store (both backends):
    `longrun_queue_ready_jobs{queue}` (QUEUED jobs that may run now) and
    `longrun_queue_oldest_ready_job_age_seconds{queue}` (how long the
    longest-waiting of them has been able to run). One bounded read
    (`OperationStore.ready_by_queue`, at most `cap` records) per `ttl`
    seconds however often it is scraped; at most `max_queues` queue label
    values (queue_labels.top_queues); a queue with no ready job has no series."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: OperationStore,
        *,
        ttl: float = DEFAULT_DEPTH_TTL,
        cap: int = DEFAULT_READY_CAP,
        max_queues: int = DEFAULT_MAX_QUEUE_LABELS,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.cap = cap
        self.max_queues = max_queues
        self._monotonic = monotonic
        self._now = now
        self._read_at: float | None = None
        self.reads = 0
        self.ready = Gauge(
            "longrun_queue_ready_jobs",
            "QUEUED jobs that may run now, by queue id (capped; read on scrape, cached).",
            ["queue"],
            registry=registry,
        )
        self.oldest_age = Gauge(
            "longrun_queue_oldest_ready_job_age_seconds",
            "Seconds the longest-waiting job that may run has waited, by queue id.",
            ["queue"],
            registry=registry,
        )

    async def refresh(self) -> None:
        mono = self._monotonic()
        if self._read_at is not None and mono - self._read_at < self.ttl:
            return
        self._read_at = mono
        now = self._now()
        shown = top_queues(await self.store.ready_by_queue(now, self.cap), self.max_queues, now)
        self.reads += 1
        self.ready.clear()
        self.oldest_age.clear()
        for label, (count, age) in shown.items():
            self.ready.labels(label).set(count)
            self.oldest_age.labels(label).set(age)


def sqlite_depth_reader(queue: TaskQueue, cap: int = DEFAULT_DEPTH_CAP) -> DepthReader | None:
    """A reader of the embedded queue's depth; None for another queue."""
    from longrun_core.clock import to_micros
    from longrun_core.sqlite.queue import SqliteTaskQueue

    if not isinstance(queue, SqliteTaskQueue):
        return None
    sqlite_queue = queue

    async def read() -> QueueDepth:
        now = to_micros(sqlite_queue.clock.now())

        def query(conn: sqlite3.Connection) -> QueueDepth:
            (ready,) = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE visible_us <= ? LIMIT ?)",
                (now, cap),
            ).fetchone()
            (oldest,) = conn.execute(
                "SELECT MIN(visible_us) FROM tasks WHERE visible_us <= ?", (now,)
            ).fetchone()
            age = 0.0 if oldest is None else max(now - int(oldest), 0) / 1_000_000
            return QueueDepth(ready=int(ready), oldest_ready_age=age)

        return await sqlite_queue.backend.db.call(query)

    return read
