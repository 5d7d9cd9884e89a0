"""The task queue seam.

A `TaskQueue` carries `TaskMessage`s from the server to workers with
at-least-once delivery:

* Redelivery: a message is delivered again if it is not acked before its
  lease (visibility timeout / ack deadline) runs out, if it is nacked, or if
  the consumer dies. Consumers must tolerate duplicates; the operation store's
  fenced transitions make them harmless.
* Conflict: a delivered message is leased to one consumer at a time; another
  consumer sees it only after that lease ends.
* Crash: `publish` returns only once the message is durably accepted; a crash
  before that may or may not have enqueued it (the sweeper republishes).
* Dead letters: a message delivered more than `max_deliveries` times, or
  dead-lettered explicitly, moves to the dead-letter destination and is not
  delivered again.
* Signed: `publish` signs every message with the queue's `signing_keys`
  (longrun_core.signing); `receive` verifies each one before reading
  anything in it, and never hands out one that is unsigned, signed with an
  unknown key id, or altered: it goes to the dead-letter destination with a
  `rejected (...)` reason and is counted in the queue's `rejections`.

Two steps of a worker touch both seams: claiming an operation right after
its message is taken, and recording an outcome then acking. By default they
are two writes (the store's, then the queue's), which at-least-once delivery
makes safe: a crash between them redelivers a message whose claim finds the
operation claimed or done. A queue that shares transactions with the store
(the embedded SQLite pair, one file) does each in one transaction instead:
`receive(claim=...)` and `Delivery.settle`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longrun_core.model import OperationRecord
    from longrun_core.signing import Rejections, SigningKeys
    from longrun_core.store import OperationStore

#: A store transition (see `OperationStore.update`).
Transition = Callable[["OperationRecord"], "OperationRecord | None"]


@dataclass(frozen=True, slots=True)
class TaskMessage:
    operation: str  # operations/{id}
    task: str
    #: The operation's attempt count when published (0 for a first dispatch).
    attempt: int = 0
    #: W3C traceparent of the span that published it ("" without tracing);
    #: signed with the rest (longrun_core.observability.trace_context).
    trace: str = ""


#: The order of a dead letter whose queue keeps no time.
NO_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message as `read_dead_letters` gives it."""

    message: TaskMessage
    reason: str
    #: The queue's own id of it (the embedded queue's row, the Pub/Sub message id).
    id: str
    #: When it was dead-lettered (None: the queue does not tell).
    dead_time: datetime | None = None
    #: Deliveries before it was dead-lettered (0: the queue does not tell).
    deliveries: int = 0

    @property
    def order(self) -> tuple[datetime, str]:
        """Its place in `read_dead_letters`' order (newest first)."""
        return (self.dead_time or NO_TIME, self.id)


class Delivery(abc.ABC):
    """One delivery of a message to this consumer, leased until acked or nacked."""

    message: TaskMessage
    #: 1 for the first delivery; counts redeliveries where the backend tells.
    delivery_attempt: int
    #: Set when `receive(claim=...)` claimed the operation in the transaction
    #: that took the message: the record it wrote (or read, if the claim
    #: changed nothing), or the exception the claim raised (`longrun_core.errors.NotFound`
    #: for a missing operation). None: the caller claims it itself.
    claimed: OperationRecord | Exception | None = None

    async def settle(
        self,
        store: OperationStore,
        name: str,
        transition: Transition,
        *,
        dead_letter_if: Callable[[OperationRecord], str | None],
        between: Callable[[], None] = lambda: None,
    ) -> OperationRecord:
        """Apply `transition` to operation `name` (as `store.update`), then ack
        this message, or dead-letter it if `dead_letter_if(record)` gives a
        reason. Exceptions from the transition propagate and leave the message
        as it was. By default two writes, with `between` called between them
        (a failpoint); a queue sharing the store's transactions does both in one."""
        rec = await store.update(name, transition)
        between()
        reason = dead_letter_if(rec)
        if reason is None:
            await self.ack()
        else:
            await self.dead_letter(reason)
        return rec

    @abc.abstractmethod
    async def ack(self) -> None:
        """Done with the message: it is not delivered again (a lost ack may still
        redeliver it: at-least-once)."""

    @abc.abstractmethod
    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back for redelivery after about `delay` seconds."""

    @abc.abstractmethod
    async def extend(self, seconds: float) -> None:
        """Keep the lease for `seconds` more while the task still runs."""

    @abc.abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter destination now."""


class TaskQueue(abc.ABC):
    #: The key ring that signs and verifies this queue's messages (a queue
    #: that loads its key when it starts has it from then on).
    signing_keys: SigningKeys | None = None
    #: Messages `receive` refused, by kind (every adapter sets its own).
    rejections: Rejections

    @abc.abstractmethod
    async def publish(self, message: TaskMessage) -> None:
        """Durably enqueue `message`; raises `longrun_core.errors.Unavailable` on failure."""

    @abc.abstractmethod
    async def receive(
        self, max_messages: int, timeout: float, *, claim: Transition | None = None
    ) -> list[Delivery]:
        """Up to `max_messages` deliveries; waits up to `timeout` seconds for the
        first one and returns [] when idle. New messages wake a waiting receive
        promptly (no fixed polling interval). A queue that shares transactions
        with the operation store applies `claim` to each message's operation
        in the transaction that takes it (see `Delivery.claimed`); others
        ignore it."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        """Inspect dead-lettered messages with their reasons (newest last)."""

    async def read_dead_letters(
        self, limit: int, *, before: tuple[datetime, str] | None = None
    ) -> list[DeadLetter]:
        """Up to `limit` dead letters, newest first (by `DeadLetter.order`),
        only those ordered before `before` when given: a page of them for
        ListDeadLetters. This default reads `dead_letters()` (no times, ids
        by position); adapters that keep more say so."""
        found = await self.dead_letters(limit=max(limit, 1) * 10 if before else limit)
        letters = [
            DeadLetter(message, reason, id=f"{i:012d}") for i, (message, reason) in enumerate(found)
        ]
        letters.sort(key=lambda d: d.order, reverse=True)
        if before is not None:
            letters = [d for d in letters if d.order < before]
        return letters[:limit]

    async def start(self) -> None:
        """Create what is missing (tables, topics, subscriptions) and connect."""

    async def close(self) -> None:
        """Stop receiving; unacked deliveries return to the queue when their lease ends."""
