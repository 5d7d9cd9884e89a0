"""A task queue that hands every call to another: test doubles override
only what they watch."""

from __future__ import annotations

from longrun_core.queue import Delivery, TaskMessage, TaskQueue, Transition


class ForwardingQueue(TaskQueue):
    def __init__(self, inner: TaskQueue) -> None:
        self.inner = inner

    async def publish(self, message: TaskMessage) -> None:
        await self.inner.publish(message)

    async def receive(
        self, max_messages: int, timeout: float, *, claim: Transition | None = None
    ) -> list[Delivery]:
        return await self.inner.receive(max_messages, timeout, claim=claim)

    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        return await self.inner.dead_letters(limit)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()
