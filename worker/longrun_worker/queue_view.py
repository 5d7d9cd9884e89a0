"""A worker's view of the queues' configuration: which queues are paused,
when each was last purged, and their retry_config. Refreshed from the
QueueStore every `interval` seconds (one read of every stored queue, at most
`limit` of them), so a Pause reaches every worker within about that long.

The claim transition reads `paused` and `purge_times` on the queue's
database thread: both are replaced whole (never mutated), so a reader sees
one snapshot or the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from longrun_core.errors import LongrunError
from longrun_core.queues import ConcurrencyLimits, QueueState, QueueStore, RetryConfig

log = logging.getLogger("longrun.worker.queues")

#: Seconds between refreshes (Pause must stop dispatches within 1 s).
DEFAULT_REFRESH = 0.5
#: Most queues (all projects) one refresh reads.
DEFAULT_MAX_QUEUES = 10_000


class QueueView:
    def __init__(
        self,
        store: QueueStore,
        *,
        interval: float = DEFAULT_REFRESH,
        limit: int = DEFAULT_MAX_QUEUES,
    ) -> None:
        if interval <= 0:
            raise ValueError("the queue refresh interval must be positive")
        if limit < 1:
            raise ValueError("the queue limit must be at least 1")
        self.store = store
        self.interval = interval
        self.limit = limit
        self.paused: frozenset[tuple[str, str]] = frozenset()
        self.purge_times: Mapping[tuple[str, str], datetime] = MappingProxyType({})
        self._retry: Mapping[tuple[str, str], RetryConfig] = MappingProxyType({})
        #: The concurrency limits of the queues that set any.
        self.limits: Mapping[tuple[str, str], ConcurrencyLimits] = MappingProxyType({})
        self.refreshed = asyncio.Event()
        self._failing = False

    def retry_of(self, project: str, queue: str) -> RetryConfig | None:
        return self._retry.get((project, queue))

    async def refresh(self) -> None:
        configs = await self.store.list_all(self.limit)
        if len(configs) >= self.limit:
            log.warning(
                "%d queues or more are configured; workers see only the first %d "
                "(raise --max-queues)",
                self.limit,
                self.limit,
            )
        self.paused = frozenset(c.key for c in configs if c.state is QueueState.PAUSED)
        self.purge_times = MappingProxyType(
            {c.key: c.purge_time for c in configs if c.purge_time is not None}
        )
        self._retry = MappingProxyType({c.key: c.retry for c in configs})
        self.limits = MappingProxyType({c.key: c.limits for c in configs if c.limits.any})
        self.refreshed.set()

    async def run(self) -> None:
        """Refresh every `interval` until cancelled; an unreadable store keeps
        the last view (logged once per outage)."""
        while True:
            try:
                await self.refresh()
            except (LongrunError, OSError) as exc:
                if not self._failing:
                    log.warning("cannot read the queues (keeping the last view): %s", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("queues readable again")
                self._failing = False
            await asyncio.sleep(self.interval)

    async def first_refresh(self, timeout: float) -> None:
        """Try one refresh before receiving (a worker started while a queue is
        paused must not run its jobs); give up after `timeout`."""
        with contextlib.suppress(LongrunError, OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await self.refresh()
