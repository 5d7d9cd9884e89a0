"""SQLite-backed task queue with visibility timeouts (see lro.queue for the
guarantees). A delivered row stays in the table, invisible until its lease
ends; ack deletes it. Receivers sleep until a notification or the next row
becomes visible, never on a fixed polling interval."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta

from lro.clock import Clock, SystemClock, to_micros
from lro.queue import Delivery, TaskMessage, TaskQueue
from lro.sqlite.backend import SqliteBackend
from lro.sqlite.db import transaction


class SqliteDelivery(Delivery):
    def __init__(
        self, queue: SqliteTaskQueue, seq: int, token: str, message: TaskMessage, attempt: int
    ) -> None:
        self._queue = queue
        self._seq = seq
        self._token = token
        self.message = message
        self.delivery_attempt = attempt

    async def ack(self) -> None:
        seq, token = self._seq, self._token
        await self._queue.backend.db.call(
            lambda c: c.execute("DELETE FROM tasks WHERE seq = ? AND lease_token = ?", (seq, token))
        )

    async def nack(self, delay: float = 0.0) -> None:
        await self._set_visible(delay, release=True)
        self._queue.wake()

    async def extend(self, seconds: float) -> None:
        await self._set_visible(seconds, release=False)

    async def _set_visible(self, seconds: float, *, release: bool) -> None:
        visible = to_micros(self._queue.clock.now() + timedelta(seconds=seconds))
        seq, token = self._seq, self._token
        sql = "UPDATE tasks SET visible_us = ?" + (", lease_token = NULL" if release else "")
        await self._queue.backend.db.call(
            lambda c: c.execute(f"{sql} WHERE seq = ? AND lease_token = ?", (visible, seq, token))
        )

    async def dead_letter(self, reason: str) -> None:
        now = to_micros(self._queue.clock.now())
        seq, token = self._seq, self._token
        await self._queue.backend.db.call(
            lambda c: transaction(c, lambda c: _move_to_dead(c, seq, token, reason, now))
        )


def _move_to_dead(
    conn: sqlite3.Connection, seq: int, token: str | None, reason: str, now_us: int
) -> None:
    guard = "lease_token = ?" if token is not None else "lease_token IS NULL"
    args: tuple[object, ...] = (seq, token) if token is not None else (seq,)
    conn.execute(
        "INSERT OR REPLACE INTO dead_letters "
        "(seq, operation, task, attempt, deliveries, reason, dead_us) "
        "SELECT seq, operation, task, attempt, deliveries, ?, ? FROM tasks "
        f"WHERE seq = ? AND {guard}",
        (reason, now_us, *args),
    )
    conn.execute(f"DELETE FROM tasks WHERE seq = ? AND {guard}", args)


def _next_visible(conn: sqlite3.Connection) -> int | None:
    """When the first task becomes visible (microseconds), None if there is none."""
    row = conn.execute("SELECT MIN(visible_us) FROM tasks").fetchone()
    return None if row is None or row[0] is None else int(row[0])


class SqliteTaskQueue(TaskQueue):
    def __init__(
        self,
        backend: SqliteBackend,
        *,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.clock = clock or SystemClock()
        self._wakeup: asyncio.Event | None = None
        backend.on_queue_changed(self.wake)
        backend.on_missed(self.wake)

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        await self.backend.start()

    async def close(self) -> None:
        self.wake()
        await self.backend.close()

    async def publish(self, message: TaskMessage) -> None:
        now = to_micros(self.clock.now())
        await self.backend.db.call(
            lambda c: c.execute(
                "INSERT INTO tasks (operation, task, attempt, visible_us, enqueued_us) "
                "VALUES (?, ?, ?, ?, ?)",
                (message.operation, message.task, message.attempt, now, now),
            )
        )
        self.wake()
        self.backend.queue_written()

    def _take(self, conn: sqlite3.Connection, max_messages: int) -> tuple[list[tuple], int | None]:  # type: ignore[type-arg]
        now = to_micros(self.clock.now())
        lease_until = now + int(self.visibility_timeout * 1_000_000)
        rows = conn.execute(
            "SELECT seq, operation, task, attempt, deliveries FROM tasks "
            "WHERE visible_us <= ? ORDER BY visible_us, seq LIMIT ?",
            (now, max_messages),
        ).fetchall()
        taken = []
        for seq, operation, task, attempt, deliveries in rows:
            if deliveries >= self.max_deliveries:
                conn.execute("UPDATE tasks SET lease_token = NULL WHERE seq = ?", (seq,))
                _move_to_dead(conn, seq, None, f"delivered {deliveries} times without an ack", now)
                continue
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE tasks SET visible_us = ?, lease_token = ?, deliveries = deliveries + 1 "
                "WHERE seq = ?",
                (lease_until, token, seq),
            )
            taken.append((seq, token, operation, task, attempt, deliveries + 1))
        next_visible = None
        if not taken:
            row = conn.execute("SELECT MIN(visible_us) FROM tasks").fetchone()
            next_visible = row[0]
        return taken, next_visible

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self._wakeup is not None, "queue not started"
        while True:
            self._wakeup.clear()
            # A plain read first: every publish wakes every worker, and only one
            # of them should go on to take the write lock.
            next_visible = await self.backend.db.read(_next_visible)
            now_us = to_micros(self.clock.now())
            taken: list[tuple] = []  # type: ignore[type-arg]
            if next_visible is not None and next_visible <= now_us:
                taken, next_visible = await self.backend.db.call(
                    lambda c: transaction(c, lambda c: self._take(c, max_messages))
                )
            if taken:
                return [
                    SqliteDelivery(self, seq, token, TaskMessage(op, task, att), n)
                    for seq, token, op, task, att, n in taken
                ]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if next_visible is not None:
                until_visible = (next_visible - to_micros(self.clock.now())) / 1_000_000
                remaining = min(remaining, max(until_visible, 0.001))
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        rows = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT operation, task, attempt, reason FROM dead_letters "
                "ORDER BY dead_us, seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [(TaskMessage(op, task, attempt), reason) for op, task, attempt, reason in rows]
