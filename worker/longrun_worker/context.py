"""The context a running task sees."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

ProgressSink = Callable[[int, str], Awaitable[None]]


class RunContext:
    """Implements `longrun_core.tasks.TaskContext` for one attempt of one operation."""

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
        self._cancel = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0..100 and a short message) in the operation's metadata."""
        await self._progress_sink(max(0, min(100, int(percent))), message[:1000])

    def progress_threadsafe(self, percent: int, message: str = "") -> None:
        """`progress` for a sync task running in a worker thread."""
        asyncio.run_coroutine_threadsafe(self.progress(percent, message), self.loop).result()

    @property
    def cancelled(self) -> bool:
        """True once the operation was cancelled (or this attempt lost its lease)."""
        return self._cancel.is_set()

    async def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Wait until cancelled; False if `timeout` passes first."""
        try:
            async with asyncio.timeout(timeout):
                await self._cancel.wait()
        except TimeoutError:
            return False
        return True

    def cancel(self) -> None:
        self._cancel.set()
