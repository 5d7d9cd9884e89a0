"""Pub/Sub publishes batched by event-loop iteration.

The library's `PublisherClient.publish` batches by time: each batch starts a
commit thread once its `max_latency` passes, so a lone publish (one per new
job) costs a thread and waits for the timer. Here the publishes made during
one iteration of the event loop go out together, in one `Publish` RPC per
topic (at most `max_messages` each) sent from a worker thread as soon as the
iteration ends: no timer, no thread per batch, and a burst (the sweeper
republishing) still shares RPCs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: send(topic, messages): one blocking Publish RPC.
Send = Callable[[str, list[Any]], None]


class LoopBatches:
    def __init__(self, send: Send, *, max_messages: int = 100) -> None:
        self._send = send
        self.max_messages = max(1, max_messages)
        self._pending: dict[str, list[tuple[Any, asyncio.Future[None]]]] = {}
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()
        #: Publish RPCs sent (tests check batching with it).
        self.rpcs = 0

    async def publish(self, topic: str, message: Any) -> None:
        """Send `message` to `topic` with the others of this loop iteration;
        raises what the RPC raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(topic, []).append((message, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await done

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for topic, items in pending.items():
            for start in range(0, len(items), self.max_messages):
                chunk = items[start : start + self.max_messages]
                messages = [message for message, _ in chunk]
                self.rpcs += 1
                sending = asyncio.ensure_future(asyncio.to_thread(self._send, topic, messages))
                self._sending.add(sending)
                sending.add_done_callback(self._sending.discard)
                sending.add_done_callback(lambda f, chunk=chunk: _settle(f, chunk))  # type: ignore[misc]

    async def drain(self) -> None:
        """Wait for the RPCs under way."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _settle(sent: asyncio.Future[None], chunk: list[tuple[Any, asyncio.Future[None]]]) -> None:
    error = None if sent.cancelled() else sent.exception()
    for _, done in chunk:
        if done.done():
            continue  # its publisher gave up waiting
        if sent.cancelled():
            done.cancel()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)
