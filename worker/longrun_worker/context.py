"""The context a task running in the worker's process sees (inline or in a
thread); longrun_worker.child has the one for a task process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

ProgressSink = Callable[[int, str], Awaitable[None]]

#: Longest a sync handler's `progress_threadsafe` waits for the write.
PROGRESS_TIMEOUT = 30.0


class SharedFlag:
    """A flag that any thread can set and read and any event loop can wait on
    (a handler's cancel signal lives on the control loop and is awaited on
    the task loop, a handler's own loop, or in a task process)."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set; False if `timeout` passes first. Works on any loop."""
        if self._set.is_set():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.add(waiter)
        try:
            if self._set.is_set():
                return True
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)
        return True

    def wait_blocking(self, timeout: float | None = None) -> bool:
        return self._set.wait(timeout)

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` once set (at once if it already is), in the setter's thread."""
        with self._lock:
            if not self._set.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._lock:
            if self._set.is_set():
                return
            self._set.set()
            waiters, callbacks = list(self._waiters), self._callbacks
            self._callbacks = []
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)
        for callback in callbacks:
            callback()


class RunContext:
    """Implements `longrun_core.tasks.TaskContext` for one attempt.

    Made on the worker's control loop, used from wherever the handler runs
    (the task loop, a thread of its own, or that loop itself): the cancel
    signal is thread-safe, and progress is written on the control loop."""

    def __init__(
        self,
        *,
        operation: str,
        params: dict[str, Any],
        attempt: int,
        progress_sink: ProgressSink,
    ) -> None:
        self.operation = operation
        self.params = params
        self.attempt = attempt
        self._progress_sink = progress_sink
        self._cancel = SharedFlag()
        self.loop = asyncio.get_running_loop()

    async def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0..100 and a short message) in the operation's metadata."""
        percent, message = max(0, min(100, int(percent))), message[:1000]
        if asyncio.get_running_loop() is self.loop:
            await self._progress_sink(percent, message)
            return
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._write(percent, message), self.loop)
        )

    async def _write(self, percent: int, message: str) -> None:
        await self._progress_sink(percent, message)

    def progress_threadsafe(self, percent: int, message: str = "") -> None:
        """`progress` for a sync handler in a thread of its own."""
        asyncio.run_coroutine_threadsafe(self.progress(percent, message), self.loop).result(
            PROGRESS_TIMEOUT
        )

    @property
    def cancelled(self) -> bool:
        """True once the operation was cancelled (or the attempt must stop)."""
        return self._cancel.is_set()

    async def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Wait until cancelled; False if `timeout` passes first. Works on any loop."""
        return await self._cancel.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` once cancelled (on the thread that cancels)."""
        self._cancel.on_set(callback)

    def cancel(self) -> None:
        """Tell the handler to stop."""
        self._cancel.set()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
