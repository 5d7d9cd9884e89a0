"""SQLite-backed task queue with visibility timeouts (see longrun_core.queue for the
guarantees). A delivered row stays in the table, invisible until its lease
ends; ack deletes it. Receivers sleep until a notification or the next row
becomes visible, never on a fixed polling interval.

Paired with the SQLite store of the same file (`attach`), the queue shares
its transactions: CreateJob stores the operation and enqueues its message
in one, a worker takes a message and claims its operation in one, and
records an outcome and acks in one.

Every row is signed (longrun_core.signing, columns `signature_key` and
`signature`, over the same fields a Pub/Sub message carries). A row that is
unsigned, forged or tampered with is moved to `dead_letters` with the reason
as it is taken, before its operation is claimed, and counted in
`rejections`. With no keys configured the queue signs with a key it
generates once and keeps in the database's `settings` table, so every
process sharing the file shares it (see docs/security.md for what that does
and does not protect)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from longrun_core.clock import Clock, SystemClock, from_micros, to_micros
from longrun_core.model import OperationRecord
from longrun_core.queue import DeadLetter, Delivery, TaskMessage, TaskQueue, Transition
from longrun_core.signing import (
    KEY_ID_ATTR,
    SIGNATURE_ATTR,
    MessageRejected,
    Rejections,
    SigningKeys,
    guard_task,
    message_fields,
)
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.db import transaction
from longrun_core.sqlite.store import SqliteOperationStore, apply

if TYPE_CHECKING:
    from longrun_core.store import OperationStore


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

    async def settle(
        self,
        store: OperationStore,
        name: str,
        transition: Transition,
        *,
        dead_letter_if: Callable[[OperationRecord], str | None],
        between: Callable[[], None] = lambda: None,
    ) -> OperationRecord:
        paired = self._queue.store
        if paired is None or store is not paired:
            return await super().settle(
                store, name, transition, dead_letter_if=dead_letter_if, between=between
            )
        now = to_micros(self._queue.clock.now())
        seq, token = self._seq, self._token

        def write_and_settle(conn: sqlite3.Connection) -> tuple[OperationRecord, bool]:
            rec, written = apply(conn, name, transition)
            reason = dead_letter_if(rec)
            if reason is None:
                conn.execute("DELETE FROM tasks WHERE seq = ? AND lease_token = ?", (seq, token))
            else:
                _move_to_dead(conn, seq, token, reason, now)
            return rec, written

        rec, written = await self._queue.backend.db.call(lambda c: transaction(c, write_and_settle))
        if written:
            await paired.on_written(name)
        return rec


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


def _claim(
    conn: sqlite3.Connection, name: str, claim: Transition
) -> tuple[OperationRecord | Exception, bool]:
    """Apply `claim` in the take's transaction: (record or the exception the
    claim raised, whether it wrote). Database errors propagate (the whole take
    rolls back)."""
    try:
        return apply(conn, name, claim)
    except sqlite3.Error:
        raise
    except Exception as exc:
        return exc, False


#: The key the queue generates when none is configured, in table `settings`.
GENERATED_KEY_SETTING = "message_signing_key"


def _prepare(conn: sqlite3.Connection, *, want_key: bool) -> str | None:
    """Add the signature columns to a `tasks` table made before them; with
    `want_key`, the database's generated signing key (`kid:secret`), made
    now if there is none yet. Run in a write transaction (processes starting
    together then agree)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    for column in ("signature_key", "signature", "trace"):
        if column not in columns:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT")
    if not want_key:
        return None
    conn.execute("CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    _, fresh = SigningKeys.generate()
    conn.execute(
        "INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)",
        (GENERATED_KEY_SETTING, fresh),
    )
    row = conn.execute(
        "SELECT value FROM settings WHERE name = ?", (GENERATED_KEY_SETTING,)
    ).fetchone()
    return str(row[0])


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
        signing_keys: SigningKeys | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.backend = backend
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.clock = clock or SystemClock()
        self._configured_keys = signing_keys
        #: The key ring in use: the configured one, else (from `start`) the database's.
        self.signing_keys: SigningKeys | None = signing_keys
        self.rejections = rejections or Rejections()
        self._wakeup: asyncio.Event | None = None
        #: The store sharing this file, once `attach`ed.
        self.store: SqliteOperationStore | None = None
        backend.on_queue_changed(self.wake)
        backend.on_missed(self.wake)

    def attach(self, store: SqliteOperationStore) -> None:
        """Pair with the store of the same file so that they share transactions
        (see the module docstring)."""
        if store.backend is not self.backend:
            raise ValueError("the store and the queue must share one SqliteBackend")
        self.store = store
        store.outbox = self

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        await self.backend.start()
        want_key = self._configured_keys is None
        generated = await self.backend.db.call(
            lambda c: transaction(c, lambda c: _prepare(c, want_key=want_key))
        )
        if generated is not None:
            self.signing_keys = SigningKeys.parse(generated)

    def _keys(self) -> SigningKeys:
        if self.signing_keys is None:
            raise RuntimeError("the SQLite queue is not started: it has no signing key yet")
        return self.signing_keys

    async def close(self) -> None:
        self.wake()
        await self.backend.close()

    async def publish(self, message: TaskMessage) -> None:
        await self.backend.db.call(lambda c: self.insert(c, message))
        self.written()

    def insert(self, conn: sqlite3.Connection, message: TaskMessage) -> None:
        """Enqueue `message` on `conn` (maybe inside the caller's transaction);
        call `written` after the commit."""
        now = to_micros(self.clock.now())
        signature = self._keys().sign(*message_fields(message))
        conn.execute(
            "INSERT INTO tasks (operation, task, attempt, visible_us, enqueued_us, "
            "signature_key, signature, trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.operation,
                message.task,
                message.attempt,
                now,
                now,
                signature[KEY_ID_ATTR],
                signature[SIGNATURE_ATTR],
                message.trace or None,
            ),
        )

    def written(self) -> None:
        """Wake the receivers of this process and of the others."""
        self.wake()
        self.backend.queue_written()

    def _verify(
        self, message: TaskMessage, kid: str | None, signature: str | None
    ) -> MessageRejected | None:
        data, attributes = message_fields(message)
        if kid is not None and signature is not None:
            attributes |= {KEY_ID_ATTR: kid, SIGNATURE_ATTR: signature}
        try:
            self._keys().verify(data, attributes)
        except MessageRejected as rejected:
            return rejected
        return None

    def _take(
        self, conn: sqlite3.Connection, max_messages: int, claim: Transition | None
    ) -> tuple[list[tuple], int | None, list[tuple[int, str, MessageRejected]]]:  # type: ignore[type-arg]
        now = to_micros(self.clock.now())
        lease_until = now + int(self.visibility_timeout * 1_000_000)
        rows = conn.execute(
            "SELECT seq, operation, task, attempt, deliveries, signature_key, signature, trace "
            "FROM tasks WHERE visible_us <= ? ORDER BY visible_us, seq LIMIT ?",
            (now, max_messages),
        ).fetchall()
        taken = []
        rejected: list[tuple[int, str, MessageRejected]] = []
        for seq, operation, task, attempt, deliveries, kid, signature, trace in rows:
            if deliveries >= self.max_deliveries:
                conn.execute("UPDATE tasks SET lease_token = NULL WHERE seq = ?", (seq,))
                _move_to_dead(conn, seq, None, f"delivered {deliveries} times without an ack", now)
                continue
            message = TaskMessage(operation, task, attempt, trace or "")
            problem = self._verify(message, kid, signature)
            if problem is not None:  # never handed out, its operation never claimed
                conn.execute("UPDATE tasks SET lease_token = NULL WHERE seq = ?", (seq,))
                _move_to_dead(conn, seq, None, problem.reason, now)
                rejected.append((seq, operation, problem))
                continue
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE tasks SET visible_us = ?, lease_token = ?, deliveries = deliveries + 1 "
                "WHERE seq = ?",
                (lease_until, token, seq),
            )
            claimed = None if claim is None else _claim(conn, operation, guard_task(claim, task))
            taken.append((seq, token, message, deliveries + 1, claimed))
        next_visible = None
        if not taken:
            row = conn.execute("SELECT MIN(visible_us) FROM tasks").fetchone()
            next_visible = row[0]
        return taken, next_visible, rejected

    async def receive(
        self, max_messages: int, timeout: float, *, claim: Transition | None = None
    ) -> list[Delivery]:
        if self.store is None:
            claim = None  # nothing to claim in: the store lives elsewhere
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
                taken, next_visible, rejected = await self.backend.db.call(
                    lambda c: transaction(c, lambda c: self._take(c, max_messages, claim))
                )
                for seq, operation, problem in rejected:
                    self.rejections.record(problem, message_id=f"tasks/{seq}", operation=operation)
            if taken:
                return await self._deliveries(taken)
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

    async def _deliveries(self, taken: list[tuple]) -> list[Delivery]:  # type: ignore[type-arg]
        out: list[Delivery] = []
        for seq, token, message, n, claimed in taken:
            delivery = SqliteDelivery(self, seq, token, message, n)
            if claimed is not None:
                delivery.claimed, written = claimed
                if written and self.store is not None:
                    await self.store.on_written(message.operation)
            out.append(delivery)
        return out

    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        rows = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT operation, task, attempt, reason FROM dead_letters "
                "ORDER BY dead_us, seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [(TaskMessage(op, task, attempt), reason) for op, task, attempt, reason in rows]

    async def read_dead_letters(
        self, limit: int, *, before: tuple[datetime, str] | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        where: str = ""
        args: tuple[int, ...] = ()
        if before is not None:
            # Ids are the rows' seq, zero-padded so that they order as text too.
            where = "WHERE (dead_us, seq) < (?, ?) "
            args = (to_micros(before[0]), int(before[1]))
        rows = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT seq, operation, task, attempt, deliveries, reason, dead_us "
                f"FROM dead_letters INDEXED BY dead_letters_time {where}"
                "ORDER BY dead_us DESC, seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        )
        return [
            DeadLetter(
                TaskMessage(op, task, attempt),
                reason,
                id=f"{seq:012d}",
                dead_time=from_micros(dead_us),
                deliveries=deliveries,
            )
            for seq, op, task, attempt, deliveries, reason, dead_us in rows
        ]
