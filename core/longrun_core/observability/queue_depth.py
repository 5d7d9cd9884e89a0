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

from prometheus_client import CollectorRegistry, Gauge

from longrun_core.queue import TaskQueue

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
