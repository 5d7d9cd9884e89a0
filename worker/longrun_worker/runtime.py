"""The worker: receives task messages, claims operations under a lease, runs
their handlers, and records the outcome with fenced writes.

Per delivery (at-least-once; every step is safe to repeat):
1. claim: QUEUED -> RUNNING (attempt + 1, lease). Already done or deleted ->
   ack; held by a live lease or not yet due -> nack with a delay (deferred).
   A queue sharing the store's transactions claims while it hands out the
   message (`TaskQueue.receive(claim=...)`), and step 3's write and ack are
   then one transaction too (`Delivery.settle`).
2. run the handler while a heartbeat renews the lease and the queue lease,
   and a watch on the operation turns a cancel request into the context's
   cancellation signal.
3. write the outcome (fenced to this attempt), then ack. A crash before the
   write leaves the message unacked and the lease expiring: another worker
   takes over. A crash after the write and before the ack redelivers a
   message whose claim finds the operation done: acked, nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import struct_pb2
from google.rpc import code_pb2

from longrun_core import transitions
from longrun_core.clock import Clock, SystemClock
from longrun_core.errors import LongrunError, NotFound, Unavailable
from longrun_core.failpoints import Failpoints
from longrun_core.model import OperationRecord, State
from longrun_core.packing import (
    DEFAULT_MAX_RESULT_BYTES,
    bounded_error,
    error_status,
    result_outcome,
    struct_to_dict,
)
from longrun_core.queue import Delivery, TaskQueue
from longrun_core.signing import MessageRejected, Rejections, guard_task
from longrun_core.store import OperationStore
from longrun_core.tasks import TaskRegistry, TaskSpec
from longrun_worker.context import RunContext

log = logging.getLogger("longrun.worker")

#: Seconds a handler runs before its guard (heartbeat + cancel watch) starts.
GUARD_DELAY = 0.05


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 4
    #: How long a claim holds an operation without a heartbeat.
    lease: float = 10.0
    #: How often the lease is renewed (must be well under `lease`).
    heartbeat: float = 3.0
    #: How long finished operations are kept (AIP-151: 30 days).
    retention: float = 30 * 86400.0
    #: On shutdown, how long in-flight tasks may run before their leases are released.
    shutdown_grace: float = 10.0
    #: How long one receive call waits for messages.
    receive_timeout: float = 5.0
    #: Largest serialized result (or error) stored; a bigger one fails the
    #: operation with RESULT_TOO_LARGE instead.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Put a DebugInfo (the traceback, package-relative paths) in a failed
    #: task's error; off: callers see the exception's type and message only.
    debug_errors: bool = False


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        *,
        store: OperationStore,
        queue: TaskQueue,
        registry: TaskRegistry,
        settings: WorkerSettings | None = None,
        clock: Clock | None = None,
        worker_id: str | None = None,
        failpoints: Failpoints | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.clock = clock or SystemClock()
        self.id = worker_id or default_worker_id()
        self.failpoints = failpoints or Failpoints()
        self._stopping = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._outage = 0.0
        self.completed = 0
        #: Messages refused (share the queue's to count them all in one place).
        self.rejections = rejections or Rejections()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease)

    @property
    def retention(self) -> timedelta:
        return timedelta(seconds=self.settings.retention)

    def stop(self) -> None:
        """Stop receiving; `run` then drains in-flight work and returns."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> None:
        """Receive and run tasks until `stop()` (or, with `burst`, until the
        queue is empty and nothing is in flight)."""
        log.info("worker started", extra={"action": "worker_start", "worker": self.id})
        try:
            while not self._stopping.is_set():
                free = await self._acquire_slots()
                if free == 0:  # stop() while every slot was busy
                    break
                receive = asyncio.ensure_future(self._receive(free))
                stop = asyncio.ensure_future(self._stopping.wait())
                done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                deliveries: list[Delivery] = []
                if receive in done:
                    deliveries = receive.result()
                else:
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        deliveries = await receive
                for _ in range(free - len(deliveries)):
                    self._slots.release()
                for delivery in deliveries:
                    task = asyncio.create_task(self._handle_and_release(delivery))
                    self._inflight[task] = delivery
                    task.add_done_callback(self._inflight.pop)
                if burst and not deliveries and not self._inflight:
                    break
        finally:
            await self._drain()
            log.info("worker stopped", extra={"action": "worker_stop", "worker": self.id})

    async def _receive(self, max_messages: int) -> list[Delivery]:
        """Receive, riding out a queue outage with capped exponential backoff."""
        try:
            deliveries = await self.queue.receive(
                max_messages, self.settings.receive_timeout, claim=self._claim_transition
            )
        except Unavailable as exc:
            self._outage = min(max(self._outage * 2, 0.5), 30.0)
            log.warning(
                "queue unavailable (%s); retrying in %.1fs",
                exc,
                self._outage,
                extra={"action": "receive_failed"},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._outage):
                    await self._stopping.wait()
            return []
        self._outage = 0.0
        return deliveries

    async def _acquire_slots(self) -> int:
        """Wait for at least one free slot (0 if `stop()` comes first), then take
        every other free one."""
        first = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({first, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not first.done():
                first.cancel()
        if first.cancelled():
            return 0
        free = 1
        while free < self.settings.concurrency and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        return free

    async def _drain(self) -> None:
        if not self._inflight:
            return
        pending = set(self._inflight)
        _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def _handle_and_release(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except Exception:
            log.exception("delivery failed; it will be redelivered", extra={"action": "handle"})
            with contextlib.suppress(Exception):
                await delivery.nack(1.0)
        finally:
            self._slots.release()

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery from claim to ack (see the module docstring)."""
        name = delivery.message.operation
        try:
            claimed = delivery.claimed
            if claimed is None:
                # The task and params that run are the record's: a message naming
                # another task than its operation's is forged (signing.guard_task).
                claim = guard_task(self._claim_transition, delivery.message.task)
                rec = await self.store.update(name, claim)
            elif isinstance(claimed, Exception):
                raise claimed
            else:
                rec = claimed
        except MessageRejected as forged:
            self.rejections.record(forged, operation=name)
            await delivery.dead_letter(forged.reason)
            return
        except NotFound:
            await delivery.ack()
            return
        except transitions.AlreadyDone as done:
            # Finished elsewhere (e.g. the sweeper failed it after its last lost
            # attempt): this message still ends in the dead-letter queue if so.
            log.info(
                "%s is already done: message acked, nothing runs",
                name,
                extra={"action": "already_done", "operation": name},
            )
            if done.record is not None:
                await self._ack_or_dead_letter(delivery, done.record)
            else:
                await delivery.ack()
            return
        except (transitions.LeaseHeld, transitions.NotDue) as exc:
            delay = (exc.until - self.clock.now()).total_seconds()
            await delivery.nack(max(delay, 0.05))
            return
        if rec.done:  # the claim ended it (lease expired with no attempts left, or cancelled)
            await self._ack_or_dead_letter(delivery, rec)
            return
        try:
            spec: TaskSpec | None = self.registry.get(rec.task)
        except LongrunError:
            spec = None
        if spec is None:
            err = error_status(
                LookupError(f"no task named {rec.task!r} on worker {self.id}"),
                code=code_pb2.UNIMPLEMENTED,
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
                debug=self.settings.debug_errors,
            )
            await self._finish(delivery, rec, error=err)
            return
        await self._run(delivery, rec, spec)

    def _claim_transition(self, rec: OperationRecord) -> OperationRecord:
        return transitions.claim(
            rec, worker=self.id, now=self.clock.now(), lease=self.lease, retention=self.retention
        )

    async def _run(self, delivery: Delivery, rec: OperationRecord, spec: TaskSpec) -> None:
        ctx = RunContext(
            operation=rec.name,
            params=struct_to_dict(struct_pb2.Struct.FromString(rec.params)),
            attempt=rec.attempt,
            progress_sink=lambda p, m: self._progress(rec, p, m),
        )
        handler = asyncio.ensure_future(_call(spec, ctx))
        guard: asyncio.Task[None] | None = None
        try:
            # Most tasks of a busy queue are short: start the guard (a watch and a
            # read) only for those still running after a moment. Its first read
            # sees any cancel that came before it started.
            await asyncio.wait({handler}, timeout=GUARD_DELAY)
            if not handler.done():
                guard = asyncio.create_task(self._guard(delivery, rec, ctx))
            outcome = await self._await_handler(handler, ctx, spec)
        except asyncio.CancelledError:
            # Worker shutdown past its grace: give the operation back at once.
            handler.cancel()
            await self._release(delivery, rec)
            raise
        finally:
            if guard is not None:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
        result, exc = outcome
        if ctx.cancelled:
            err = transitions.cancelled_error(rec.attempt)
            await self._finish(delivery, rec, error=err)
        elif exc is None:
            # Never raises: a result that cannot be stored becomes an error saying why.
            response, refused = result_outcome(
                result,
                limit=self.outcome_limit(rec),
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
            )
            await self._finish(delivery, rec, response=response, error=refused)
        elif spec.retry.is_retryable(exc) and rec.attempt < rec.max_attempts:
            await self._retry(delivery, rec, spec, exc)
        else:
            err = self._error_of(exc, rec)
            await self._finish(delivery, rec, error=err)

    def outcome_limit(self, rec: OperationRecord) -> int:
        """The largest response or error stored for `rec`: the configured
        limit, or less if the store cannot hold that much for it."""
        limit = self.settings.max_result_bytes
        store_limit = self.store.max_outcome_bytes(rec)
        return limit if store_limit is None else min(limit, store_limit)

    def _error_of(self, exc: BaseException, rec: OperationRecord) -> bytes:
        """The status stored for a task's exception, within the outcome limit."""
        return bounded_error(
            error_status(
                exc,
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
                debug=self.settings.debug_errors,
            ),
            limit=self.outcome_limit(rec),
            attempt=rec.attempt,
            max_attempts=rec.max_attempts,
        )

    async def _await_handler(
        self, handler: asyncio.Future[Any], ctx: RunContext, spec: TaskSpec
    ) -> tuple[Any, BaseException | None]:
        """Wait for the handler; once cancelled, give it `cancel_grace` seconds."""
        if handler.done():  # most tasks of a busy queue: no watch needed
            return _outcome(handler)
        cancelled = asyncio.ensure_future(ctx.wait_cancelled())
        try:
            await asyncio.wait({handler, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                await asyncio.wait({handler}, timeout=spec.cancel_grace)
            if not handler.done():
                log.warning(
                    "handler ignored cancellation; abandoned",
                    extra={"action": "abandon", "operation": ctx.operation},
                )
                handler.cancel()
                return None, asyncio.CancelledError()
        finally:
            cancelled.cancel()
        return _outcome(handler)

    async def _guard(self, delivery: Delivery, rec: OperationRecord, ctx: RunContext) -> None:
        """Heartbeat the lease and turn a cancel request into ctx cancellation.

        A deleted operation is not cancelled (operations.proto: DeleteOperation
        "does not cancel the operation"): its task runs on, the message stays
        leased to this worker, and the outcome is dropped when it comes."""
        name, attempt = rec.name, rec.attempt
        interval = self.settings.heartbeat
        deleted = False
        async with self.store.watch(name) as watch:
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + interval
            while True:
                if not deleted:
                    try:
                        current = await self.store.get(name)
                    except NotFound:
                        deleted = True
                        _log_deleted(rec)
                    else:
                        if current.cancel_requested or current.attempt != attempt or current.done:
                            ctx.cancel()
                            return
                if loop.time() >= next_beat:
                    try:
                        if not deleted:
                            await self.store.update(
                                name,
                                lambda r: transitions.renew(
                                    r,
                                    worker=self.id,
                                    attempt=attempt,
                                    now=self.clock.now(),
                                    lease=self.lease,
                                ),
                            )
                        await delivery.extend(self.settings.lease * 3)
                    except NotFound:
                        deleted = True
                        _log_deleted(rec)
                    except transitions.Rejected:
                        ctx.cancel()
                        return
                    next_beat = loop.time() + interval
                if deleted:
                    await asyncio.sleep(max(next_beat - loop.time(), 0.0))
                else:
                    await watch.changed(max(next_beat - loop.time(), 0.0))

    async def _progress(self, rec: OperationRecord, percent: int, message: str) -> None:
        # A rejected write means the lease is gone: the guard notices and cancels.
        with contextlib.suppress(transitions.Rejected, NotFound):
            await self.store.update(
                rec.name,
                lambda r: transitions.renew(
                    r,
                    worker=self.id,
                    attempt=rec.attempt,
                    now=self.clock.now(),
                    lease=self.lease,
                    progress=(percent, message),
                ),
            )

    async def _finish(
        self,
        delivery: Delivery,
        rec: OperationRecord,
        *,
        response: bytes | None = None,
        error: bytes | None = None,
    ) -> None:
        try:
            final = await delivery.settle(
                self.store,
                rec.name,
                lambda r: transitions.finish(
                    r,
                    worker=self.id,
                    attempt=rec.attempt,
                    now=self.clock.now(),
                    retention=self.retention,
                    response=response,
                    error=error,
                ),
                dead_letter_if=_exhausted,
                between=lambda: self.failpoints.hit("before_ack"),
            )
        except (transitions.Rejected, NotFound) as exc:
            log.info(
                "outcome dropped: %s",
                exc,
                extra={"action": "finish_fenced", "operation": rec.name},
            )
            await delivery.ack()
            return
        self.completed += 1
        log.info(
            "finished %s attempt %d: %s",
            final.name,
            final.attempt,
            final.state.name,
            extra={"action": "finish", "operation": final.name, "attempt": final.attempt},
        )

    async def _ack_or_dead_letter(self, delivery: Delivery, rec: OperationRecord) -> None:
        reason = _exhausted(rec)
        if reason is None:
            await delivery.ack()
        else:
            await delivery.dead_letter(reason)

    async def _retry(
        self, delivery: Delivery, rec: OperationRecord, spec: TaskSpec, exc: BaseException
    ) -> None:
        delay = spec.retry.backoff(rec.attempt)
        err = self._error_of(exc, rec)
        try:
            await self.store.update(
                rec.name,
                lambda r: transitions.retry(
                    r,
                    worker=self.id,
                    attempt=rec.attempt,
                    now=self.clock.now(),
                    delay=delay,
                    error=err,
                ),
            )
        except (transitions.Rejected, NotFound):
            await delivery.ack()
            return
        await delivery.nack(delay.total_seconds())

    async def _release(self, delivery: Delivery, rec: OperationRecord) -> None:
        with contextlib.suppress(transitions.Rejected, NotFound):
            await self.store.update(
                rec.name,
                lambda r: transitions.release(
                    r, worker=self.id, attempt=rec.attempt, now=self.clock.now()
                ),
            )
        await delivery.nack(0)


def _outcome(handler: asyncio.Future[Any]) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, the exception) of a finished handler."""
    if handler.cancelled():
        return None, asyncio.CancelledError()
    exc = handler.exception()
    return (None, exc) if exc is not None else (handler.result(), None)


def _exhausted(rec: OperationRecord) -> str | None:
    """Why `rec`'s message goes to the dead-letter queue (None: ack it)."""
    if rec.state is State.FAILED and rec.attempt >= rec.max_attempts:
        return f"{rec.name} failed after {rec.attempt} attempts"
    return None


async def _call(spec: TaskSpec, ctx: RunContext) -> Any:
    if asyncio.iscoroutinefunction(spec.handler):
        return await spec.handler(ctx)
    result = await asyncio.to_thread(spec.handler, ctx)
    if isinstance(result, Awaitable):
        return await result
    return result


def _log_deleted(rec: OperationRecord) -> None:
    log.info(
        "operation deleted while running; the task runs on and its outcome is dropped",
        extra={"action": "deleted_while_running", "operation": rec.name},
    )
