"""Getting stored operations onto the queue, and keeping them from getting stuck.

`dispatch` publishes right after an operation is stored, then marks it
dispatched. The sweeper catches everything that path can miss: a crash or a
failed publish between store and publish (QUEUED past `dispatch_due_time`),
a worker that died holding a lease (RUNNING, and seen by this sweeper at one
version for its whole lease on this process's monotonic clock: see
longrun_core.leases; no worker's wall clock is trusted), and a retry whose
backoff ended. It also deletes expired finished operations in
batches (the emulator has no TTL; production may add a Firestore TTL policy on
`expire_time` too). Publishing twice is harmless: claims are guarded.

A storage outage stops lease renewals as surely as a dead worker does. So
when the store comes back after a sweep failed for it, leases that expired are
left alone for `outage_lease_grace`: live workers renew them (or record their
outcome) in that time, and their tasks do not run a second time.

Work due soon (a scheduled job, a retry after its backoff) is published on
time rather than at the next sweep: each sweep also reads what falls due
within `lookahead` (the same due-time index walk, ordered by due time) and
sets a timer for each, at most `max_timers` at once; CreateJob does the same
for a job scheduled that soon. A timer publishes as the sweeper would (a
duplicate publish is harmless: claims are guarded), and the sweeper remains
the backstop for any timer that did not fire (this process stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta

from longrun_core import transitions
from longrun_core.clock import Clock
from longrun_core.errors import LongrunError, NotFound, Unavailable
from longrun_core.leases import LeaseObserver, Monotonic
from longrun_core.model import OperationRecord
from longrun_core.observability.trace_context import current_traceparent
from longrun_core.queue import TaskMessage, TaskQueue, Transition
from longrun_core.store import OperationStore

log = logging.getLogger("longrun.dispatcher")


class Dispatcher:
    def __init__(
        self,
        store: OperationStore,
        queue: TaskQueue,
        *,
        clock: Clock,
        redispatch_after: timedelta,
        retention: timedelta,
        sweep_interval: float,
        batch: int = 200,
        publish_timeout: float = 5.0,
        outage_lease_grace: timedelta = timedelta(seconds=15),
        lease_check_interval: float = 0.0,
        lease_batch: int = 1000,
        monotonic: Monotonic = time.monotonic,
        lookahead: timedelta | None = None,
        max_timers: int = 10_000,
    ) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.redispatch_after = redispatch_after
        self.retention = retention
        self.sweep_interval = sweep_interval
        self.batch = batch
        self.publish_timeout = publish_timeout
        self.outage_lease_grace = outage_lease_grace
        #: A sweep failed for an outage and none succeeded since.
        self._in_outage = False
        #: When (clock time) the last outage ended.
        self._outage_ended: datetime | None = None
        self.lease_check_interval = lease_check_interval
        self.lease_batch = lease_batch
        self._monotonic = monotonic
        self.leases = LeaseObserver(monotonic, capacity=lease_batch)
        self._leases_checked: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: How far ahead a sweep reads due work to publish it on time
        #: (default: two sweep intervals, so every due time is seen ahead).
        self.lookahead = (
            lookahead if lookahead is not None else timedelta(seconds=2 * sweep_interval)
        )
        self.max_timers = max_timers
        #: Pending on-time publishes, by operation id.
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def first_dispatch_due(self, created: datetime) -> datetime:
        """A new operation is stored as dispatched-by-then: the publish right
        after the store needs no second write, and if that publish never
        happens (crash, failed publish) the sweeper does it at this time."""
        return created + self.redispatch_after

    async def dispatch(
        self, rec: OperationRecord, *, mark: bool = True, outage_raises: bool = False
    ) -> None:
        """Publish the task message for `rec` and (with `mark`) move its
        `dispatch_due_time` on. A failure is logged, not raised: the sweeper
        publishes it later (`outage_raises`: an outage raises `Unavailable`,
        so a sweep stops at the first instead of logging each operation)."""
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self.queue.publish(
                    TaskMessage(rec.name, rec.task, rec.attempt, rec.trace or current_traceparent())
                )
            if not mark:
                return
            await self.store.update(
                rec.name,
                lambda r: transitions.mark_dispatched(
                    r, now=self.clock.now(), redispatch_after=self.redispatch_after
                ),
            )
        except NotFound:
            pass
        except Unavailable:
            if outage_raises:
                raise
            log.warning("dispatch of %s deferred to the sweeper: backend unavailable", rec.name)
        except (LongrunError, TimeoutError) as exc:
            log.warning("dispatch of %s deferred to the sweeper: %r", rec.name, exc)

    def dispatch_soon(self, rec: OperationRecord) -> None:
        """`dispatch` (without the mark) in the background: a new operation is
        already stored with its `dispatch_due_time`, so the caller need not
        wait for the queue (nor stall when the queue is down)."""
        task = asyncio.create_task(self.dispatch(rec, mark=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def dispatch_at(self, rec: OperationRecord, due: datetime) -> bool:
        """Publish `rec` at `due` (this process's timer; `dispatch` then marks
        it). False when it is not within `lookahead` or `max_timers` are set:
        the sweeper publishes it then. One timer per operation."""
        if rec.id in self._timers:
            return True
        delay = (due - self.clock.now()).total_seconds()
        if delay > self.lookahead.total_seconds() or len(self._timers) >= self.max_timers:
            return False
        loop = asyncio.get_running_loop()
        self._timers[rec.id] = loop.call_later(max(delay, 0.0), self._fire, rec)
        return True

    def _fire(self, rec: OperationRecord) -> None:
        self._timers.pop(rec.id, None)
        task = asyncio.create_task(self.dispatch(rec))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    async def sweep_once(self) -> int:
        """One pass; returns how many operations it acted on. Raises
        `Unavailable` during a storage outage."""
        now = self.clock.now()
        try:
            acted = await self._sweep(now)
        except Unavailable:
            self._in_outage = True
            raise
        if self._in_outage:
            self._in_outage, self._outage_ended = False, now
            log.info(
                "store back after an outage: leases are left to their workers for %.0fs",
                self.outage_lease_grace.total_seconds(),
            )
        return acted

    def _leases_kept(self, now: datetime) -> bool:
        """Whether leases are left alone now: during the first sweep after an
        outage and for `outage_lease_grace` after it (holders could not renew
        while the store was down)."""
        if self._in_outage:
            return True
        return self._outage_ended is not None and now < self._outage_ended + self.outage_lease_grace

    async def _sweep(self, now: datetime) -> int:
        if self._leases_kept(now):
            # Silence seen across an outage proves nothing: every lease's
            # silence is measured afresh once the grace is over.
            self.leases.keep_only(())
            acted = 0
        else:
            acted = await self.check_leases()
        # Past the records with timers set already (they come first: earliest due).
        limit = self.batch + len(self._timers)
        for rec in await self.store.due_for_dispatch(now + self.lookahead, limit):
            due = rec.dispatch_due_time
            if due is not None and due > now:
                self.dispatch_at(rec, due)  # due soon: on time, by a timer
                continue
            acted += 1
            await self.dispatch(rec, outage_raises=True)
        acted += await self.store.delete_expired(now, self.batch)
        return acted

    async def check_leases(self) -> int:
        """Look at the RUNNING operations (every `lease_check_interval`) and take
        back those whose lease this sweeper has seen lapse: requeue and publish
        them, or end them (no attempts left, cancel requested). Returns how
        many it took back."""
        mono = self._monotonic()
        if (
            self._leases_checked is not None
            and mono - self._leases_checked < self.lease_check_interval
        ):
            return 0
        self._leases_checked = mono
        running = await self.store.leased(self.lease_batch)
        self.leases.keep_only(r.id for r in running)
        taken = 0
        for seen in running:
            sighting = self.leases.sight(seen)
            if transitions.lease_remaining(seen, sighting) > timedelta(0):
                continue
            try:
                rec = await self.store.update(seen.name, self._expire(sighting))
            except (transitions.Rejected, NotFound):
                continue  # it wrote meanwhile (alive after all), or finished, or went
            self.leases.forget(seen.id)
            taken += 1
            log.warning(
                "%s: no heartbeat from %s for its %ss lease; %s",
                seen.name,
                seen.lease_owner,
                transitions.lease_duration(seen).total_seconds(),
                "requeued" if not rec.done else f"ended {rec.state.name}",
                extra={"action": "lease_lost", "operation": seen.name},
            )
            if not rec.done:
                await self.dispatch(rec)
        return taken

    def _expire(self, sighting: transitions.LeaseSighting) -> Transition:
        return lambda r: transitions.expire_lease(
            r, self.clock.now(), self.retention, sighting=sighting
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def _loop(self) -> None:
        outage = False
        while True:
            try:
                acted = await self.sweep_once()
            except Unavailable as exc:  # a storage outage: sweep again next interval
                if not outage:
                    log.warning("sweeper waits for the store: %s", exc)
                outage, acted = True, 0
            except Exception:
                log.exception("sweep failed; trying again")
                acted = 0
            else:
                if outage:
                    log.info("sweeper running again")
                outage = False
            if acted < self.batch:
                await asyncio.sleep(self.sweep_interval)

    async def stop(self) -> None:
        """Stop sweeping; give background publishes a moment (the sweeper of
        the next server covers any that do not make it)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.publish_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
