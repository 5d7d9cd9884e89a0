"""Per-process fan-out of operation change notifications to waiters.

One entry per watched operation, shared by all its waiters. The first waiter
starts the backend's watch for that operation (a Firestore listener, say) and
the last one to leave stops it. A waiter takes the current generation before
it reads the record, so a change between its read and its wait still wakes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

#: Starts a backend watch for one operation name; returns its stop function.
SourceStarter = Callable[[str], Awaitable[Callable[[], None]]]


class _Entry:
    __slots__ = ("event", "starting", "waiters")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiters = 0
        #: The backend watch being started (or started): shared by all waiters,
        #: so a waiter cancelled mid-start does not take it from the others.
        self.starting: asyncio.Future[Callable[[], None]] | None = None


class Subscription:
    def __init__(self, hub: WatchHub, name: str) -> None:
        self._hub = hub
        self._name = name
        self._event = hub._entry(name).event

    async def changed(self, timeout: float) -> bool:
        event = self._event
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        self._event = self._hub._entry(self._name).event
        return True


class WatchHub:
    def __init__(self, start_source: SourceStarter | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._start_source = start_source

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry()
        return entry

    @property
    def watched(self) -> int:
        """How many operations have at least one waiter (for tests and metrics)."""
        return len(self._entries)

    def notify(self, name: str) -> None:
        """The operation may have changed: wake its waiters. Loop thread only."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.event.set()
            entry.event = asyncio.Event()

    def notify_all(self) -> None:
        """Wake every waiter (after a missed notification, say)."""
        for name in list(self._entries):
            self.notify(name)

    @asynccontextmanager
    async def subscribe(self, name: str) -> AsyncIterator[Subscription]:
        entry = self._entry(name)
        entry.waiters += 1
        try:
            if self._start_source is not None:
                if entry.starting is None:
                    entry.starting = asyncio.ensure_future(self._start_source(name))
                await asyncio.shield(entry.starting)
            yield Subscription(self, name)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                if self._entries.get(name) is entry:
                    del self._entries[name]
                if entry.starting is not None:
                    _stop_when_started(entry.starting)


def _stop_when_started(starting: asyncio.Future[Callable[[], None]]) -> None:
    def stop(fut: asyncio.Future[Callable[[], None]]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            fut.result()()

    if starting.done():
        stop(starting)
    else:
        starting.add_done_callback(stop)
