"""The worker: receives task messages, claims operations under a lease, runs
their handlers, and records the outcome with fenced writes.

Per delivery (at-least-once; every step is safe to repeat):
1. claim: QUEUED -> RUNNING (attempt + 1, lease), or FAILED when no
   attempts are left. Already done or deleted -> ack (or dead-letter); held
   by a lease not yet seen lapse, or not yet due -> nack with a delay
   (deferred). A queue sharing the store's transactions claims while it
   hands out the message (`TaskQueue.receive(claim=...)`), and step 3's
   write and ack are then one transaction too (`Delivery.settle`).
2. run the handler where its task's isolation says (longrun_worker.attempts:
   a task process of its own, a thread, or the task loop; never this loop),
   while a guard on this loop renews the lease and the queue lease and turns
   a cancel request into the context's cancellation signal.
3. write the outcome (fenced to this claim), then ack. A crash before the
   write leaves the message unacked and the lease lapsing: another worker
   takes over. A crash after the write and before the ack redelivers a
   message whose claim finds the operation done: acked, nothing runs twice.

Whatever a handler does, it ends only its own attempt: what it raises (even
SystemExit) is its failure; a cancel, the attempt deadline and shutdown stop
it after a grace (a task process is killed; a thread or coroutine is
abandoned). If the lease cannot be renewed for 3/4 of its duration, the
attempt is stopped at once, before anyone may take it over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf import struct_pb2
from google.rpc import code_pb2

from longrun_core import transitions
from longrun_core.clock import Clock, SystemClock
from longrun_core.errors import LongrunError, NotFound, Unavailable
from longrun_core.failpoints import Failpoints
from longrun_core.leases import LeaseObserver, Monotonic
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.observability.json_logs import bind_attempt
from longrun_core.packing import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_RESULT_BYTES,
    bounded_error,
    error_status,
    struct_to_dict,
    too_large_status,
)
from longrun_core.queue import Delivery, TaskMessage, TaskQueue, Transition
from longrun_core.queues import EffectiveRetry, effective_retry
from longrun_core.signing import MessageRejected, Rejections, guard_task
from longrun_core.store import OperationStore
from longrun_core.tasks import TaskRegistry, TaskSpec
from longrun_worker.attempts import AttemptRunner, RunningAttempt, ThreadAttempt
from longrun_worker.context import RunContext
from longrun_worker.isolation import KILL_WAIT, in_thread
from longrun_worker.metrics import WorkerMetrics
from longrun_worker.outcome import AttemptTimedOut, Outcome, outcome_of
from longrun_worker.queue_view import QueueView
from longrun_worker.tracing import AttemptTracer

log = logging.getLogger("longrun.worker")

T = TypeVar("T")

#: Seconds a handler runs before its guard (heartbeat + cancel watch) starts.
GUARD_DELAY = 0.05
#: Share of the lease after which a holder that could not renew stops its attempt.
SELF_FENCE = 0.75
#: On shutdown, longest a lease release may take (the store may be down).
RELEASE_TIMEOUT = 5.0
#: How often the worker compares its clock with the store's.
CLOCK_CHECK_INTERVAL = 60.0
#: When an attempt of a concurrency-limited queue ends: how many of the
#: queue's waiting jobs are published at once, found among how many read.
WAKE_COUNT = 2
WAKE_SCAN = 50


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
    #: Seconds between SIGTERM and SIGKILL when a task process is stopped.
    kill_grace: float = 3.0
    #: Attempts a graceful shutdown may give back to one operation (past that
    #: an interrupted attempt counts).
    max_releases: int = 3
    #: A clock this far (seconds) off the store's is logged as skewed.
    max_clock_skew: float = 2.0
    #: Largest serialized result (or error) stored; a bigger one fails the
    #: operation with RESULT_TOO_LARGE instead.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Longest pause between retries while the store or queue is unavailable.
    outage_retry_max: float = 5.0
    #: Put a DebugInfo (the traceback, package-relative paths) in a failed
    #: task's error; off: callers see the exception's type and message only.
    debug_errors: bool = False
    #: Seconds between reads of the queues' configuration (pause, purge,
    #: retry_config): a Pause stops new attempts within about this long.
    queue_refresh: float = 0.5
    #: Most queues (over all projects) a worker keeps in view.
    max_queues: int = 10_000
    #: A job refused for its queue's concurrency limit is published again
    #: after a delay drawn between these (seconds): its message is dropped
    #: and the dispatcher republishes it then.
    limit_retry_min: float = 0.6
    limit_retry_max: float = 3.0
    #: Longest a claim of a rate-limited queue reserves a token ahead
    #: (longrun_core.rate_bucket); past it nothing is taken and the job is
    #: published again when a reservation could fit, plus a random part of
    #: this, so a large backlog is not claimed over and over.
    rate_reserve_max: float = 60.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < self.limit_retry_min <= self.limit_retry_max:
            raise ValueError("limit retry delays must be positive, min <= max")
        if not 0 < self.heartbeat <= self.lease / 2:
            raise ValueError(
                f"heartbeat ({self.heartbeat}s) must be positive and at most half the lease "
                f"({self.lease}s)"
            )
        if self.kill_grace < 0 or self.shutdown_grace < 0:
            raise ValueError("kill_grace and shutdown_grace must be >= 0")
        if self.max_releases < 0:
            raise ValueError("max_releases must be >= 0")
        if not 0 < self.max_result_bytes <= MAX_RESULT_BYTES:
            # The CLI asks for at least packing.MIN_RESULT_BYTES; tests go lower.
            raise ValueError(
                f"max_result_bytes ({self.max_result_bytes}) must be positive and at most "
                f"{MAX_RESULT_BYTES}"
            )
        if self.outage_retry_max <= 0:
            raise ValueError("outage_retry_max must be positive")
        if not 1.0 <= self.rate_reserve_max <= 3600.0:
            raise ValueError("rate_reserve_max must be 1-3600 seconds")
        if self.queue_refresh <= 0 or self.max_queues < 1:
            raise ValueError("queue_refresh must be positive and max_queues at least 1")

    @property
    def shutdown_bound(self) -> float:
        """After `stop()`, `run` returns within shutdown_grace plus this many
        seconds, whatever the handlers do: stop them (kill_grace, then up to
        KILL_WAIT for a killed process) and release their leases."""
        return self.kill_grace + KILL_WAIT + RELEASE_TIMEOUT + 1.0


def deadline_of(rec: OperationRecord, spec: TaskSpec) -> float | None:
    """Seconds one attempt of `rec` may run: its dispatch_deadline, else its
    task's timeout (None: no limit)."""
    if rec.dispatch_deadline is not None:
        return rec.dispatch_deadline.total_seconds()
    return spec.timeout


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Lease:
    """This worker's view of one claim's lease: when it last renewed (the
    monotonic time the successful write was sent), and whether it is lost."""

    def __init__(self, renewed_at: float, duration: float, monotonic: Monotonic) -> None:
        self.renewed_at = renewed_at
        self.window = duration * SELF_FENCE
        self._monotonic = monotonic
        self.lost = asyncio.Event()
        self.why = ""

    def time_left(self) -> float:
        return self.renewed_at + self.window - self._monotonic()

    def renewed(self, sent_at: float) -> None:
        self.renewed_at = max(self.renewed_at, sent_at)

    def lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.why = why
            self.lost.set()


@dataclass
class _Slot:
    """A worker slot; an abandoned thread keeps it until it returns."""

    held_until: concurrent.futures.Future[None] | None = field(default=None)


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
        monotonic: Monotonic = time.monotonic,
        rejections: Rejections | None = None,
        queues: QueueView | None = None,
        metrics: WorkerMetrics | None = None,
        tracer: AttemptTracer | None = None,
    ) -> None:
        self.metrics = metrics or WorkerMetrics()  # longrun_worker/metrics.py
        self.tracer = tracer or AttemptTracer()  # longrun_worker/tracing.py
        self.store = store
        #: The queues' pause state, purge times and retry configs (None: the
        #: default of every queue: never paused, the tasks' own retry policies).
        self.queues = queues
        self.queue = queue
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.clock = clock or SystemClock()
        self.id = worker_id or default_worker_id()
        self.failpoints = failpoints or Failpoints()
        self._monotonic = monotonic
        #: Leases of other workers seen through duplicate messages.
        self.leases = LeaseObserver(monotonic)
        self.runner = AttemptRunner(
            registry,
            kill_grace=self.settings.kill_grace,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        self._stopping = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._outage = 0.0
        self._claimed_at: dict[str, float] = {}
        self._rng = random.Random()
        #: Publishes of waiting jobs after a limited queue's attempt ended.
        self._wakers: set[asyncio.Task[None]] = set()
        self._lingering: set[concurrent.futures.Future[None]] = set()
        self.completed = 0
        #: Messages refused (share the queue's to count them all in one place).
        self.rejections = rejections or Rejections()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease)

    @property
    def retention(self) -> timedelta:
        return timedelta(seconds=self.settings.retention)

    @property
    def abandoned_threads(self) -> int:
        """Handler threads that ignored a cancel and still hold their slots."""
        return sum(1 for f in self._lingering if not f.done())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop receiving; `run` then drains in-flight work and returns (within
        shutdown_grace + settings.shutdown_bound)."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> None:
        """Receive and run tasks until `stop()` (or, with `burst`, until the
        queue is empty and nothing is in flight)."""
        log.info("worker started", extra={"action": "worker_start", "worker": self.id})
        background = [asyncio.create_task(self._watch_clock(), name="clock-check")]
        if self.queues is not None:
            await self.queues.first_refresh(self.settings.receive_timeout)
            background.append(asyncio.create_task(self.queues.run(), name="queue-view"))
        if self.runner.uses_processes:
            background.append(asyncio.create_task(self._warm_up(), name="fork-server"))
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
            for task in background:
                task.cancel()
            await self._drain()
            for task in list(self._wakers):
                task.cancel()
            self.close()
            log.info("worker stopped", extra={"action": "worker_stop", "worker": self.id})

    def close(self) -> None:
        """Release the task loop (a worker that served `handle` calls ends with this)."""
        self.runner.close()

    async def _warm_up(self) -> None:
        """Start the fork server now rather than at the first task."""
        try:
            await in_thread(self.runner.launcher.ensure_running)
        except Exception:
            log.exception("could not start the fork server; task processes will retry it")

    async def _watch_clock(self) -> None:
        """Log when this process's clock is far off the store's (leases do not
        depend on it; retry backoffs and timestamps shown to people do)."""
        while True:
            try:
                store_now = await self.store.store_time()
            except Exception as exc:  # a store outage is reported elsewhere
                log.debug("cannot read the store's clock: %s", exc)
                store_now = None
            if store_now is not None:
                skew = (self.clock.now() - store_now).total_seconds()
                if abs(skew) > self.settings.max_clock_skew:
                    log.warning(
                        "clock skew: this worker's clock is %+.1fs off the store's (more than "
                        "%gs); leases are safe, but retry delays and shown times are off",
                        skew,
                        self.settings.max_clock_skew,
                        extra={"action": "clock_skew", "skew": skew},
                    )
            await asyncio.sleep(CLOCK_CHECK_INTERVAL)

    async def _receive(self, max_messages: int) -> list[Delivery]:
        """Receive, riding out a queue outage with capped exponential backoff."""
        try:
            deliveries = await self.queue.receive(
                max_messages, self.settings.receive_timeout, claim=self._claim_transition
            )
        except Unavailable as exc:
            first = self._outage == 0.0
            self._outage = min(max(self._outage * 2, 0.1), self.settings.outage_retry_max)
            (log.warning if first else log.debug)(
                "queue unavailable (%s); retrying in %.1fs",
                exc,
                self._outage,
                extra={"action": "receive_failed"},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._outage):
                    await self._stopping.wait()
            return []
        if self._outage:
            log.info("queue available again", extra={"action": "receive_resumed"})
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
        """Let in-flight attempts finish for shutdown_grace, then stop them and
        release their leases, waiting at most `shutdown_bound` more."""
        if not self._inflight:
            return
        pending = set(self._inflight)
        _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
        for task in still:
            task.cancel()
        if still:
            _, stuck = await asyncio.wait(still, timeout=self.settings.shutdown_bound)
            if stuck:
                log.error(
                    "%d deliveries did not wind down within the shutdown bound; leaving them",
                    len(stuck),
                    extra={"action": "shutdown_stuck"},
                )

    async def _handle_and_release(self, delivery: Delivery) -> None:
        slot = _Slot()
        try:
            await self.handle(delivery, slot=slot)
        except Unavailable as exc:
            # A storage outage: the message comes back (nack, or its lease ends).
            log.warning(
                "delivery of %s interrupted by an outage (%s); it will be redelivered",
                delivery.message.operation,
                exc,
                extra={"action": "handle_unavailable"},
            )
            with contextlib.suppress(Exception):
                await delivery.nack(1.0)
        except Exception:
            log.exception("delivery failed; it will be redelivered", extra={"action": "handle"})
            with contextlib.suppress(Exception):
                await delivery.nack(1.0)
        finally:
            held = slot.held_until
            if held is None or held.done():
                self._slots.release()
            else:
                self._hold_slot(held)

    def _hold_slot(self, held: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._lingering.add(held)

        def returned(_: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to free
                loop.call_soon_threadsafe(self._thread_returned, held)

        held.add_done_callback(returned)
        log.warning(
            "an abandoned handler thread keeps its slot until it returns (%d of %d slots held)",
            self.abandoned_threads,
            self.settings.concurrency,
            extra={"action": "thread_abandoned"},
        )

    def _thread_returned(self, held: concurrent.futures.Future[None]) -> None:
        self._lingering.discard(held)
        self._slots.release()

    async def handle(self, delivery: Delivery, *, slot: _Slot | None = None) -> None:
        """Process one delivery from claim to ack (see the module docstring)."""
        name = delivery.message.operation
        started = self._monotonic()
        try:
            rec = await self._claim(delivery)
        except transitions.ConcurrencyLimited as full:
            await self._wait_for_slot(delivery, full)
            return
        except transitions.RateLimited as limited:
            await self._wait_for_token(delivery, limited)
            return
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
                await self._ack_or_dead_letter(delivery, done.record, duplicate=True)
            else:
                await delivery.ack()
            return
        except transitions.LeaseHeld as held:
            await delivery.nack(max(held.remaining.total_seconds(), 0.05))
            return
        except transitions.NotDue as early:
            delay = (early.until - self.clock.now()).total_seconds()
            await delivery.nack(max(delay, 0.05))
            return
        except transitions.QueuePaused:
            # Dropped unrun: the sweeper republishes it at its dispatch_due_time,
            # ResumeQueue at once. The record shows why it waits.
            with contextlib.suppress(transitions.Rejected, LongrunError):
                await self.store.update(
                    name, lambda r: transitions.note_paused(r, now=self.clock.now())
                )
            await delivery.ack()
            return
        finally:
            claimed_at = self._claimed_at.pop(name, started)
        self.leases.forget(rec.id)
        if rec.done:  # the claim ended it (no attempts left, lease lapsed, cancelled)
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
        try:
            with self.tracer.attempt(rec, delivery.message):
                await self._run(delivery, rec, spec, claimed_at, slot or _Slot())
        finally:
            self._wake_waiters(rec)

    async def _claim(self, delivery: Delivery) -> OperationRecord:
        """The claim of the delivery's operation: done by the queue while it
        handed the message out, or here; a queue that limits concurrency has
        it made again through the store's guarded `claim_slot`."""
        name = delivery.message.operation
        claimed = delivery.claimed
        try:
            if claimed is None:
                # The task and params that run are the record's: a message naming
                # another task than its operation's is forged (signing.guard_task).
                claim = guard_task(self._claim_transition, delivery.message.task)
                return await self.store.update(name, claim)
            if isinstance(claimed, Exception):
                raise claimed
            return claimed
        except transitions.SlotRequired as needed:
            admitted = guard_task(self._admitted_claim, delivery.message.task)
            return await self.store.claim_slot(name, admitted, needed.request)

    async def _wait_for_slot(
        self, delivery: Delivery, full: transitions.ConcurrencyLimited
    ) -> None:
        """Every slot was taken: the record shows CONCURRENCY_LIMITED and is
        published again by the dispatcher after a random delay (so waiting
        jobs do not retry in lockstep); this message is dropped (a nack would
        count as a delivery toward the dead-letter queue)."""
        name = delivery.message.operation
        now = self.clock.now()
        delay = self._rng.uniform(self.settings.limit_retry_min, self.settings.limit_retry_max)
        retry_at = now + timedelta(seconds=delay)
        log.debug("%s waits for a slot: %s", name, full, extra={"action": "concurrency_limited"})
        with contextlib.suppress(transitions.Rejected, LongrunError):
            await self.store.update(
                name, lambda r: transitions.note_limited(r, now=now, retry_at=retry_at)
            )
        await delivery.ack()

    async def _wait_for_token(self, delivery: Delivery, limited: transitions.RateLimited) -> None:
        """The queue's rate had no token free now. With one reserved (the
        store wrote the record RATE_LIMITED with it), this process publishes
        the job again at the token's time (the sweeper at its backstop due
        time if this process is gone by then). Without (none could be
        reserved within rate_reserve_max), the record shows RATE_LIMITED and
        the dispatcher publishes it again once a reservation could fit, plus
        a random part of the horizon. Either way this message is dropped."""
        name = delivery.message.operation
        log.debug("%s waits for a rate token: %s", name, limited, extra={"action": "rate_limited"})
        if limited.reserved:
            self._publish_at(delivery.message, limited.until)
        else:
            now = self.clock.now()
            spread = self._rng.uniform(0, self.settings.rate_reserve_max / 2)
            retry_at = max(limited.until, now) + timedelta(seconds=spread)
            with contextlib.suppress(transitions.Rejected, LongrunError):
                await self.store.update(
                    name,
                    lambda r: transitions.note_rate_limited(
                        r, now=now, retry_at=retry_at, token_time=None
                    ),
                )
        await delivery.ack()

    def _publish_at(self, message: TaskMessage, at: datetime) -> None:
        """Publish `message` again at `at` (a reserved token's time)."""
        delay = max(0.0, (at - self.clock.now()).total_seconds())

        async def publish() -> None:
            await asyncio.sleep(delay)
            try:
                await self.queue.publish(message)
            except (LongrunError, OSError) as exc:  # the sweeper's backstop publishes it
                log.debug("could not publish %s at its token: %s", message.operation, exc)

        task = asyncio.create_task(publish())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    def _wake_waiters(self, ended: OperationRecord) -> None:
        """An attempt of a concurrency-limited queue ended: publish a few of
        the queue's CONCURRENCY_LIMITED jobs now (those of the same key
        first) rather than leaving its slot idle until their retry delay.
        Best effort: a duplicate message is harmless, and the retry delay
        remains the backstop."""
        queues = self.queues
        found = queues.limits.get((ended.project, ended.queue)) if queues is not None else None
        if found is None or not found.concurrency:
            return
        task = asyncio.create_task(self._publish_waiters(ended))
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    async def _publish_waiters(self, ended: OperationRecord) -> None:
        now = self.clock.now()
        found: list[OperationRecord] = []
        queues = self.queues
        request = transitions.slot_request(ended, queues.limits) if queues is not None else None
        try:
            if request is not None:
                await self.store.release_slot(ended, request)
            # From a random id on (ids are random), so every waiter gets its turn.
            for after in (uuid.uuid4().hex, ""):
                batch = await self.store.queued_in(
                    ended.project, ended.queue, after=after, limit=WAKE_SCAN
                )
                found += [
                    r
                    for r in batch
                    if r.wait_reason is WaitReason.CONCURRENCY_LIMITED
                    and (r.run_after is None or r.run_after <= now)
                    and r.id not in {f.id for f in found}
                ]
                if len(found) >= WAKE_COUNT:
                    break
            found.sort(key=lambda r: r.concurrency_key != ended.concurrency_key)
            for rec in found[:WAKE_COUNT]:
                await self.queue.publish(
                    TaskMessage(rec.name, rec.task, rec.attempt, rec.trace or "")
                )
        except (LongrunError, OSError) as exc:
            log.debug("could not wake the waiters of queue %s: %s", ended.queue, exc)

    def _admitted_claim(self, rec: OperationRecord) -> OperationRecord:
        return self._claim_transition(rec, admitted=True)

    def _claim_transition(self, rec: OperationRecord, admitted: bool = False) -> OperationRecord:
        # May run on a queue's database thread: only thread-safe state here.
        sighting = self.leases.sight(rec) if rec.state is State.RUNNING else None
        self._claimed_at[rec.name] = self._monotonic()
        queues = self.queues
        return transitions.claim(
            rec,
            worker=self.id,
            now=self.clock.now(),
            lease=self.lease,
            retention=self.retention,
            sighting=sighting,
            paused=queues.paused if queues is not None else (),
            purge_times=queues.purge_times if queues is not None else None,
            limits=queues.limits if queues is not None else None,
            admitted=admitted,
            rate_horizon=timedelta(seconds=self.settings.rate_reserve_max),
        )

    async def _run(
        self,
        delivery: Delivery,
        rec: OperationRecord,
        spec: TaskSpec,
        claimed_at: float,
        slot: _Slot,
    ) -> None:
        bind_attempt(rec.name, rec.attempt)  # this delivery's task: its log entries say so
        self.metrics.attempt_started(rec.task)
        began = self._monotonic()
        ctx = RunContext(
            operation=rec.name,
            params=struct_to_dict(struct_pb2.Struct.FromString(rec.params)),
            attempt=rec.attempt,
            progress_sink=lambda p, m: self._progress(rec, p, m),
        )
        lease = _Lease(claimed_at, self.settings.lease, self._monotonic)
        # The outcome limit is fixed for the attempt: its outcome is made
        # where the handler runs (a task process, too) within it.
        limit = self.outcome_limit(rec)
        guard: asyncio.Task[None] | None = None
        attempt: RunningAttempt | None = None

        def start_guard() -> None:
            nonlocal guard
            guard = asyncio.create_task(self._guard(delivery, rec, ctx, lease))

        # Most tasks of a busy queue are short: the guard (a watch and a read)
        # starts only for those still running after a moment, counted from
        # before the handler starts (a task process may take a while to start).
        # Its first read sees any cancel that came before it started.
        guard_timer = asyncio.get_running_loop().call_later(GUARD_DELAY, start_guard)
        try:
            try:
                attempt = await self.runner.start(
                    spec,
                    ctx,
                    max_attempts=rec.max_attempts,
                    limit=limit,
                    debug=self.settings.debug_errors,
                )
            except Exception:
                log.exception(
                    "could not start %s for %s; giving the operation back",
                    spec.name,
                    rec.name,
                    extra={"action": "start_failed", "operation": rec.name},
                )
                await self._release(delivery, rec)
                return
            finished = asyncio.ensure_future(attempt.wait())
            outcome, ending = await self._supervise(
                attempt, finished, ctx, spec, lease, deadline_of(rec, spec)
            )
        except asyncio.CancelledError:
            # Worker shutdown past its grace: stop the handler, give the operation back.
            ctx.cancel()
            if attempt is not None:
                await attempt.stop()
            await self._release(delivery, rec)
            raise
        finally:
            guard_timer.cancel()
            if guard is not None:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
            if isinstance(attempt, ThreadAttempt) and not attempt.finished.done():
                slot.held_until = attempt.finished
        self.metrics.attempt_ended(rec.task, ending, self._monotonic() - began)
        with self.tracer.outcome(ending):
            await self._record(delivery, rec, spec, outcome, ending, lease, limit)

    def outcome_limit(self, rec: OperationRecord) -> int:
        """The largest response or error stored for `rec`: the configured
        limit, or less if the store cannot hold that much for it."""
        limit = self.settings.max_result_bytes
        store_limit = self.store.max_outcome_bytes(rec)
        return limit if store_limit is None else min(limit, store_limit)

    async def _supervise(
        self,
        attempt: RunningAttempt,
        finished: asyncio.Future[Outcome],
        ctx: RunContext,
        spec: TaskSpec,
        lease: _Lease,
        deadline: float | None,
    ) -> tuple[Outcome | None, str]:
        """Wait for the attempt to end by itself, or end it: on a cancel
        request or at its `deadline` (seconds; the job's dispatch_deadline or
        the task's timeout) after `cancel_grace`, at once when the lease
        is lost. Returns (its outcome if it produced one, why it ended: done,
        cancelled, deadline or lost)."""
        # Most tasks of a busy queue are short: done before anything is watched.
        await asyncio.wait({finished}, timeout=GUARD_DELAY)
        if finished.done():
            return _result_of(finished), "cancelled" if ctx.cancelled else "done"
        cancelled: asyncio.Future[object] = asyncio.ensure_future(ctx.wait_cancelled())
        lost: asyncio.Future[object] = asyncio.ensure_future(lease.lost.wait())
        watched: set[asyncio.Future[object]] = {finished, cancelled, lost}  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(
                watched,
                timeout=deadline,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if finished in done:
                return _result_of(finished), "cancelled" if ctx.cancelled else "done"
            if lost in done:
                ctx.cancel()
                await attempt.stop(grace=False)
                return None, "lost"
            ending = "cancelled" if cancelled in done else "deadline"
            ctx.cancel()  # tell the handler; for a deadline, too
            done, _ = await asyncio.wait(
                watched - {cancelled},
                timeout=spec.cancel_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if finished in done:
                return _result_of(finished), ending
            if lost in done:
                await attempt.stop(grace=False)
                return None, "lost"
            log.warning(
                "handler did not stop within %gs of its %s; stopping it",
                spec.cancel_grace,
                "cancel" if ending == "cancelled" else "deadline",
                extra={"action": "abandon", "operation": ctx.operation},
            )
            await attempt.stop()
            return None, ending
        finally:
            cancelled.cancel()
            lost.cancel()
            if not finished.done():
                finished.cancel()

    async def _record(
        self,
        delivery: Delivery,
        rec: OperationRecord,
        spec: TaskSpec,
        outcome: Outcome | None,
        ending: str,
        lease: _Lease,
        limit: int,
    ) -> None:
        """Write what the attempt came to (an outcome over `limit` as
        RESULT_TOO_LARGE, wherever it was made)."""
        if ending == "lost":
            log.warning(
                "%s attempt %d stopped: %s; its outcome is dropped",
                rec.name,
                rec.attempt,
                lease.why,
                extra={"action": "lease_lost", "operation": rec.name},
            )
            await delivery.nack(self.settings.lease)
            return
        if ending == "cancelled":
            await self._finish(delivery, rec, error=transitions.cancelled_error(rec.attempt))
            return
        if outcome is None or ending == "deadline":
            # Past its deadline: a failed attempt (DEADLINE_EXCEEDED, retried
            # while attempts are left), whatever the handler made of the stop.
            deadline = deadline_of(rec, spec)
            assert deadline is not None
            outcome = outcome_of(
                None,
                AttemptTimedOut(f"attempt {rec.attempt} ran past its {deadline:g}s deadline"),
                policy=spec.retry,
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
                limit=limit,
                code=code_pb2.DEADLINE_EXCEEDED,
                debug=self.settings.debug_errors,
            )
        if outcome.response is not None:
            if len(outcome.response) <= limit:
                await self._finish(delivery, rec, response=outcome.response)
                return
            # Made outside this process and not within the limit: a net, not the rule.
            too_large = too_large_status(
                "result",
                len(outcome.response),
                limit,
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
            )
            await self._finish(delivery, rec, error=too_large)
            return
        assert outcome.error is not None
        error = bounded_error(
            outcome.error, limit=limit, attempt=rec.attempt, max_attempts=rec.max_attempts
        )
        if outcome.retryable and rec.attempt < rec.max_attempts:
            retry = self.retry_for(rec, spec)
            delay = retry.backoff(rec.attempt)
            if retry.allows_retry(rec.start_time, self.clock.now(), delay):
                await self._retry(delivery, rec, error, delay)
                return
            log.info(
                "%s: no retry after attempt %d: past its queue's max_retry_duration",
                rec.name,
                rec.attempt,
                extra={"action": "retry_duration_spent", "operation": rec.name},
            )
        await self._finish(delivery, rec, error=error)

    def retry_for(self, rec: OperationRecord, spec: TaskSpec) -> EffectiveRetry:
        """The task's retry policy with the queue's retry_config laid over it."""
        override = self.queues.retry_of(rec.project, rec.queue) if self.queues else None
        return effective_retry(spec.retry, override)

    def _holds(self, current: OperationRecord, rec: OperationRecord) -> bool:
        """Whether this worker's claim `rec` still holds `current`'s lease."""
        return (
            current.state is State.RUNNING
            and current.lease_owner == self.id
            and current.attempt == rec.attempt
            and current.releases == rec.releases
        )

    async def _guard(
        self, delivery: Delivery, rec: OperationRecord, ctx: RunContext, lease: _Lease
    ) -> None:
        """Renew the lease, turn a cancel request into ctx cancellation, and
        declare the lease lost when it was taken or could not be renewed in
        time (the attempt is then stopped).

        A deleted operation is not cancelled (operations.proto: DeleteOperation
        "does not cancel the operation"): its task runs on, the message stays
        leased to this worker, and the outcome is dropped when it comes."""
        name = rec.name
        interval = self.settings.heartbeat
        deleted = False
        async with self.store.watch(name) as watch:
            next_beat = self._monotonic() + interval
            while True:
                if not deleted:
                    try:
                        current = await self.store.get(name)
                    except NotFound:
                        deleted = True
                        _log_deleted(rec)
                    except Unavailable as exc:  # an outage: the task runs on; look again later
                        _log_outage("cancel check", rec, exc)
                    except LongrunError as exc:
                        log.warning("cannot read %s: %s", name, exc)
                    else:
                        if not self._holds(current, rec):
                            lease.lose("the operation was taken over or finished elsewhere")
                            return
                        if current.cancel_requested:
                            ctx.cancel()  # and keep renewing while the handler stops
                if self._monotonic() >= next_beat:
                    deleted = await self._renew(delivery, rec, lease, deleted)
                    if lease.lost.is_set():
                        return
                    next_beat = self._monotonic() + interval
                if lease.time_left() <= 0:
                    lease.lose(f"the lease could not be renewed for {lease.window:.3g}s")
                    return
                wait = max(min(next_beat - self._monotonic(), lease.time_left()), 0.0)
                if deleted:
                    await asyncio.sleep(wait)
                else:
                    await watch.changed(wait)

    async def _renew(
        self, delivery: Delivery, rec: OperationRecord, lease: _Lease, deleted: bool
    ) -> bool:
        """One heartbeat, given until the self-fence deadline; returns whether
        the operation is (now known to be) deleted."""
        sent = self._monotonic()
        try:
            async with asyncio.timeout(max(lease.time_left(), 0.0)):
                if not deleted:
                    await self.store.update(rec.name, self._renewal(rec))
                await delivery.extend(self.settings.lease * 3)
        except NotFound:
            _log_deleted(rec)
            return True
        except transitions.Rejected:
            lease.lose("the lease was taken over")
        except TimeoutError:
            lease.lose(f"the lease could not be renewed for {lease.window:.3g}s")
        except Unavailable as exc:  # an outage: renew at the next beat while time is left
            _log_outage("lease renewal", rec, exc, left=lease.time_left())
        except LongrunError as exc:
            log.warning(
                "heartbeat of %s failed (%s); %.1fs left to renew",
                rec.name,
                exc,
                lease.time_left(),
                extra={"action": "heartbeat_failed", "operation": rec.name},
            )
        else:
            lease.renewed(sent)
        return deleted

    def _renewal(self, rec: OperationRecord, progress: tuple[int, str] | None = None) -> Transition:
        """The heartbeat write of `rec`'s attempt (with `progress`, a progress report)."""
        return lambda r: transitions.renew(
            r,
            worker=self.id,
            attempt=rec.attempt,
            releases=rec.releases,
            now=self.clock.now(),
            lease=self.lease,
            progress=progress,
        )

    async def _progress(self, rec: OperationRecord, percent: int, message: str) -> None:
        # A rejected write means the lease is gone: the guard notices and stops it.
        # Progress is best effort: during a storage outage it is dropped.
        with contextlib.suppress(transitions.Rejected, NotFound, Unavailable):
            await self.store.update(rec.name, self._renewal(rec, (percent, message)))

    async def _finish(
        self,
        delivery: Delivery,
        rec: OperationRecord,
        *,
        response: bytes | None = None,
        error: bytes | None = None,
    ) -> None:
        try:
            final = await self._outlasting(
                rec,
                "outcome",
                lambda: delivery.settle(
                    self.store,
                    rec.name,
                    lambda r: transitions.finish(
                        r,
                        worker=self.id,
                        attempt=rec.attempt,
                        releases=rec.releases,
                        now=self.clock.now(),
                        retention=self.retention,
                        response=response,
                        error=error,
                    ),
                    dead_letter_if=_exhausted,
                    between=lambda: self.failpoints.hit("before_ack"),
                ),
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
        self.metrics.finished(final, dead_lettered=_exhausted(final) is not None)
        log.info(
            "finished %s attempt %d: %s",
            final.name,
            final.attempt,
            final.state.name,
            extra={"action": "finish", "operation": final.name, "attempt": final.attempt},
        )

    async def _outlasting(
        self, rec: OperationRecord, what: str, write: Callable[[], Awaitable[T]]
    ) -> T:
        """`write()`, tried again with capped backoff while the store is
        unavailable: a finished task's outcome waits out a storage outage
        (the task is not run again for it) unless the worker is stopping."""
        delay = 0.05
        while True:
            try:
                return await write()
            except Unavailable as exc:
                if self._stopping.is_set():
                    raise
                _log_outage(what, rec, exc, first=delay == 0.05)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, self.settings.outage_retry_max)

    async def _ack_or_dead_letter(
        self, delivery: Delivery, rec: OperationRecord, *, duplicate: bool = False
    ) -> None:
        reason = _exhausted(rec)
        if reason is None:
            await delivery.ack()
        else:
            await delivery.dead_letter(reason)
            if not duplicate:  # another message of this operation already counted it
                self.metrics.dead_lettered(rec.task)

    async def _retry(
        self, delivery: Delivery, rec: OperationRecord, error: bytes, delay: timedelta
    ) -> None:
        attempt_trace = self.tracer.attempt_traceparent()  # here: not in the store's thread
        try:
            await self.store.update(
                rec.name,
                lambda r: transitions.retry(
                    r,
                    worker=self.id,
                    attempt=rec.attempt,
                    releases=rec.releases,
                    now=self.clock.now(),
                    delay=delay,
                    error=error,
                    attempt_trace=attempt_trace,
                ),
            )
        except (transitions.Rejected, NotFound):
            await delivery.ack()
            return
        self.metrics.retried(rec.task)
        await delivery.nack(delay.total_seconds())

    async def _release(self, delivery: Delivery, rec: OperationRecord) -> None:
        """Give the operation back (bounded: the store may be down; then the
        lease lapses and another worker takes over)."""
        attempt_trace = self.tracer.attempt_traceparent()
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                with contextlib.suppress(transitions.Rejected, NotFound):
                    released = await self.store.update(
                        rec.name,
                        lambda r: transitions.release(
                            r,
                            worker=self.id,
                            attempt=rec.attempt,
                            releases=rec.releases,
                            now=self.clock.now(),
                            retention=self.retention,
                            max_releases=self.settings.max_releases,
                            attempt_trace=attempt_trace,
                        ),
                    )
                    if released.done:
                        await self._ack_or_dead_letter(delivery, released)
                        return
                await delivery.nack(0)
        except (TimeoutError, LongrunError) as exc:
            log.warning(
                "could not release %s (%r); its lease will lapse instead",
                rec.name,
                exc,
                extra={"action": "release_failed", "operation": rec.name},
            )


def _result_of(finished: asyncio.Future[Outcome]) -> Outcome:
    """The attempt's outcome; a failure to make one (a bug, or an exception
    that cannot even be described) fails the attempt without a retry."""
    exc = finished.exception()
    if exc is None:
        return finished.result()
    log.error("could not make the outcome of an attempt", exc_info=exc)
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # its str() fails too
        text = type(exc).__name__
    message = f"the attempt's outcome could not be recorded: {text}"[:2000]
    return Outcome(error=transitions.status_bytes(code_pb2.INTERNAL, message))


def _exhausted(rec: OperationRecord) -> str | None:
    """Why `rec`'s message goes to the dead-letter queue (None: ack it)."""
    if rec.state is State.FAILED and rec.attempt >= rec.max_attempts:
        return f"{rec.name} failed after {rec.attempt} attempts"
    return None


def _log_outage(
    what: str,
    rec: OperationRecord,
    exc: Unavailable,
    *,
    first: bool = True,
    left: float | None = None,
) -> None:
    (log.warning if first else log.debug)(
        "%s of %s waits for the store: %s%s",
        what,
        rec.name,
        exc,
        "" if left is None else f"; {max(left, 0.0):.1f}s left before the lease is given up",
        extra={"action": "store_unavailable", "operation": rec.name},
    )


def _log_deleted(rec: OperationRecord) -> None:
    log.info(
        "operation deleted while running; the task runs on and its outcome is dropped",
        extra={"action": "deleted_while_running", "operation": rec.name},
    )
