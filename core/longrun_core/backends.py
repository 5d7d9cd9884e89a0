"""Composition root for the backends: build the store and queue that the
settings name. The only place that knows every adapter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from longrun_core.clock import Clock, SystemClock
from longrun_core.errors import NotFound, StartupError, Unavailable
from longrun_core.queue import TaskQueue
from longrun_core.settings import BackendSettings
from longrun_core.signing import KEYS_REQUIRED, Rejections
from longrun_core.store import OperationStore

log = logging.getLogger("longrun.backends")

STORES = ("sqlite", "firestore")
QUEUES = ("sqlite", "pubsub")


#: The operation id `probe` reads on stores with no probe of their own.
PROBE_OPERATION = "operations/longrun-health-probe"


@dataclass
class Backends:
    store: OperationStore
    queue: TaskQueue
    #: Messages refused on receipt (unsigned, forged, tampered with, or naming
    #: another task than their operation's); the queue and the worker share it.
    rejections: Rejections = field(default_factory=Rejections)
    #: Longest pause between start-up retries while a backend is unavailable.
    retry_max: float = 5.0
    _store_started: bool = field(default=False, init=False, repr=False)
    _queue_started: bool = field(default=False, init=False, repr=False)

    async def start(self) -> None:
        """Start the store, then the queue; after a failure, a second call
        starts only what did not start."""
        if not self._store_started:
            await self.store.start()
            self._store_started = True
        if not self._queue_started:
            await self.queue.start()
            self._queue_started = True

    async def probe(self) -> None:
        """Raise `Unavailable` (or a subclass) if the operation store cannot
        serve writes now: the embedded store commits a one-row write (and
        reports faults its calls met since the last probe); others read an
        operation that does not exist."""
        from longrun_core.sqlite.store import SqliteOperationStore

        if isinstance(self.store, SqliteOperationStore):
            await self.store.backend.probe()
            return
        with contextlib.suppress(NotFound):
            await self.store.get(PROBE_OPERATION)

    async def start_patiently(self, stop: asyncio.Event | None = None) -> bool:
        """`start`, retrying while a backend is unavailable (a process started
        before its queue or store is up waits instead of crashing). False if
        `stop` was set first."""
        delay = min(0.1, self.retry_max)
        while True:
            try:
                await self.start()
                return True
            except Unavailable as exc:
                log.warning("backend unavailable (%s); retrying in %.1fs", exc, delay)
            try:
                async with asyncio.timeout(delay):
                    await (stop or asyncio.Event()).wait()
                return False
            except TimeoutError:
                delay = min(delay * 2, self.retry_max)

    async def close(self) -> None:
        await self.queue.close()
        await self.store.close()


def build_backends(settings: BackendSettings, clock: Clock | None = None) -> Backends:
    """The store and queue `settings` name. A Pub/Sub queue without
    `message_signing_keys` is a StartupError."""
    clock = clock or SystemClock()
    rejections = Rejections()
    if settings.store not in STORES:
        raise ValueError(f"unknown store {settings.store!r}; choose one of {', '.join(STORES)}")
    if settings.queue not in QUEUES:
        raise ValueError(f"unknown queue {settings.queue!r}; choose one of {', '.join(QUEUES)}")
    if settings.queue == "pubsub" and settings.message_signing_keys is None:
        raise StartupError(KEYS_REQUIRED)
    sqlite_backend = None
    if "sqlite" in (settings.store, settings.queue):
        from longrun_core.sqlite.backend import SqliteBackend

        sqlite_backend = SqliteBackend(settings.sqlite_path)
    store: OperationStore
    if settings.store == "sqlite":
        from longrun_core.sqlite.store import SqliteOperationStore

        assert sqlite_backend is not None
        store = SqliteOperationStore(sqlite_backend, cache_bytes=settings.cache_max_bytes)
    else:
        from longrun_core.google.firestore_store import FirestoreOperationStore

        store = FirestoreOperationStore.from_settings(settings)
    queue: TaskQueue
    if settings.queue == "sqlite":
        from longrun_core.sqlite.queue import SqliteTaskQueue

        assert sqlite_backend is not None
        queue = SqliteTaskQueue(
            sqlite_backend,
            visibility_timeout=settings.visibility_timeout,
            max_deliveries=settings.max_deliveries,
            clock=clock,
            signing_keys=settings.message_signing_keys,
            rejections=rejections,
        )
    else:
        from longrun_core.google.pubsub_queue import PubSubTaskQueue

        queue = PubSubTaskQueue.from_settings(settings, rejections=rejections)
    if settings.store == settings.queue == "sqlite":
        from longrun_core.sqlite.queue import SqliteTaskQueue
        from longrun_core.sqlite.store import SqliteOperationStore

        assert isinstance(queue, SqliteTaskQueue) and isinstance(store, SqliteOperationStore)
        queue.attach(store)  # one file: they share transactions
    return Backends(store, queue, rejections, retry_max=settings.outage_retry_max)
