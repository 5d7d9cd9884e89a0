"""Getting stored operations onto the queue, and keeping them from getting stuck.

`dispatch` publishes right after an operation is stored, then marks it
dispatched. The sweeper catches everything that path can miss: a crash or a
failed publish between store and publish (QUEUED past `dispatch_due_time`),
a worker that died holding a lease (RUNNING past `lease_expire_time`), and a
retry whose backoff ended. It also deletes expired finished operations in
batches (the emulator has no TTL; production may add a Firestore TTL policy on
`expire_time` too). Publishing twice is harmless: claims are guarded.

A storage outage stops lease renewals as surely as a dead worker does. So
when the store comes back after a sweep failed for it, leases that expired are
left alone for `outage_lease_grace`: live workers renew them (or record their
outcome) in that time, and their tasks do not run a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from longrun_core import transitions
from longrun_core.clock import Clock
from longrun_core.errors import LongrunError, NotFound, Unavailable
from longrun_core.model import OperationRecord, State
from longrun_core.queue import TaskMessage, TaskQueue
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
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

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
                await self.queue.publish(TaskMessage(rec.name, rec.task, rec.attempt))
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
                "store back after an outage: expired leases are kept %.0fs for their workers",
                self.outage_lease_grace.total_seconds(),
            )
        return acted

    def _leases_kept(self, now: datetime) -> bool:
        """Whether expired leases are left alone now: during the first sweep
        after an outage and for `outage_lease_grace` after it."""
        if self._in_outage:
            return True
        return self._outage_ended is not None and now < self._outage_ended + self.outage_lease_grace

    async def _sweep(self, now: datetime) -> int:
        acted = 0
        for rec in await self.store.due_for_dispatch(now, self.batch):
            if rec.state is State.RUNNING and self._leases_kept(now):
                continue
            acted += 1
            if rec.state is State.RUNNING:
                try:
                    rec = await self.store.update(
                        rec.name, lambda r: transitions.expire_lease(r, now, self.retention)
                    )
                except (transitions.Rejected, NotFound):
                    continue
                if rec.done:
                    continue
            await self.dispatch(rec, outage_raises=True)
        acted += await self.store.delete_expired(now, self.batch)
        return acted

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
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.publish_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
