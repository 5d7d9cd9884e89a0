"""longrun.v1.Queues: a project's queues (see longrun_core.queues).

Permissions (AIP-211: checked before anything is read, so a denial says the
same whether or not the queue exists): get and list need longrun.queues.get
/ list (viewer); every change needs longrun.queues.update (admin).

Pause takes effect at the workers within their queue refresh interval
(`--queue-refresh`, 0.5 s by default): a paused queue's messages are dropped
unrun and its operations stay QUEUED. Resume republishes the queue's QUEUED
operations at once, and again after `resume_repeat` (a worker whose view
was still stale may have dropped the first). Purge records `purge_time`
(workers end any operation of the queue created up to then instead of
running it) and cancels the queue's QUEUED operations in the background.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

import grpc
from google.protobuf import empty_pb2

from longrun.v1 import queues_pb2, queues_pb2_grpc
from longrun_core import transitions
from longrun_core.access import Access, Permission
from longrun_core.clock import Clock
from longrun_core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from longrun_core.model import State
from longrun_core.names import parse_parent
from longrun_core.queue import TaskQueue
from longrun_core.queues import (
    DEFAULT_QUEUE,
    QueueConfig,
    QueueStore,
    apply_update,
    check_queue_id,
    default_queue,
    parse_queue_name,
    paused,
    purged,
    resumed,
    stored_or_default,
)
from longrun_core.store import OperationStore
from longrun_server.dead_letters import (
    DeadLetterLister,
    decode_token,
    encode_token,
    page_size_of,
    parse_dead_letters_parent,
)
from longrun_server.dispatcher import Dispatcher
from longrun_server.queue_messages import limits_of, queue_message, retry_of
from longrun_server.status import rpc_errors

log = logging.getLogger("longrun.queues")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: A ListQueues page that asks for `stats` holds at most this many queues.
MAX_STATS_PAGE_SIZE = 100
#: Queues whose stats are counted at once.
STATS_CONCURRENCY = 8
#: Permissions TestIamPermissions may be asked about at once.
MAX_TESTED_PERMISSIONS = 20
#: Top-level Queue fields a read_mask may name (every one but `stats` is always returned).
QUEUE_FIELDS = frozenset(queues_pb2.Queue.DESCRIPTOR.fields_by_name) | {"*"}
_PAGE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")


def wants_stats(paths: object) -> bool:
    """Whether a Queue read_mask asks for `stats`; INVALID_ARGUMENT for a
    path that is not a Queue field."""
    names = list(paths)  # type: ignore[call-overload]
    for path in names:
        if path.split(".")[0] not in QUEUE_FIELDS:
            raise InvalidArgument(
                f"read_mask path {str(path)[:100]!r} is not a Queue field",
                reason="READ_MASK_INVALID",
            )
    return "stats" in names or "*" in names


def queue_not_found(project: str, queue_id: str) -> NotFound:
    return NotFound(
        f"queue projects/{project}/queues/{queue_id} does not exist",
        reason="QUEUE_NOT_FOUND",
        metadata={"queue": f"projects/{project}/queues/{queue_id}"},
    )


class QueuesService(queues_pb2_grpc.QueuesServicer):
    def __init__(
        self,
        queues: QueueStore,
        store: OperationStore,
        dispatcher: Dispatcher,
        access: Access,
        *,
        clock: Clock,
        retention: timedelta,
        batch: int = 500,
        resume_repeat: float = 2.0,
        task_queue: TaskQueue | None = None,
        stats_limit: int = 10_000,
        dead_letters_scan: int = 1_000,
    ) -> None:
        self.queues = queues
        self.store = store
        self.dispatcher = dispatcher
        self.access = access
        self.clock = clock
        self.retention = retention
        self.batch = batch
        self.resume_repeat = resume_repeat
        self.stats_limit = stats_limit
        self.dead_letters = (
            DeadLetterLister(task_queue, store, access, scan=dead_letters_scan)
            if task_queue is not None
            else None
        )
        self._stats_slots = asyncio.Semaphore(STATS_CONCURRENCY)
        self._background: set[asyncio.Task[None]] = set()

    # ---- reads ----

    async def _get(self, project: str, queue_id: str) -> QueueConfig:
        config = await self.queues.get(project, queue_id)
        if config is not None:
            return config
        if queue_id == DEFAULT_QUEUE:
            return default_queue(project)
        raise queue_not_found(project, queue_id)

    @rpc_errors
    async def GetQueue(
        self, request: queues_pb2.GetQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        project, queue_id = parse_queue_name(request.name)
        self.access.require(Permission.QUEUES_GET, project)
        with_stats = wants_stats(request.read_mask.paths)
        message = queue_message(await self._get(project, queue_id))
        if with_stats:
            await self._fill_stats(message, project, queue_id)
        return message

    async def _fill_stats(self, message: queues_pb2.Queue, project: str, queue_id: str) -> None:
        async with self._stats_slots:
            waiting, running = await asyncio.gather(
                self.store.count_in_queue(project, queue_id, State.QUEUED, self.stats_limit),
                self.store.count_in_queue(project, queue_id, State.RUNNING, self.stats_limit),
            )
        message.stats.CopyFrom(
            queues_pb2.QueueStats(
                waiting_count=waiting,
                running_count=running,
                capped=max(waiting, running) >= self.stats_limit,
            )
        )

    @rpc_errors
    async def ListQueues(
        self, request: queues_pb2.ListQueuesRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.ListQueuesResponse:
        project = parse_parent(request.parent)
        self.access.require(Permission.QUEUES_LIST, project)
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
        with_stats = wants_stats(request.read_mask.paths)
        size = min(
            request.page_size or DEFAULT_PAGE_SIZE,
            MAX_STATS_PAGE_SIZE if with_stats else MAX_PAGE_SIZE,
        )
        after = request.page_token
        if after and not _PAGE_TOKEN.fullmatch(after):
            raise InvalidArgument(
                "page_token is not one this method gave", reason="PAGE_TOKEN_INVALID"
            )
        stored = await self.queues.list(project, after=after, limit=size + 1)
        # The default queue is listed (in id order) whether stored or not.
        merged = {c.queue_id: c for c in stored}
        if after < DEFAULT_QUEUE and DEFAULT_QUEUE not in merged:
            merged[DEFAULT_QUEUE] = default_queue(project)
        ordered = [merged[k] for k in sorted(merged)]
        shown = ordered[:size]
        response = queues_pb2.ListQueuesResponse(queues=[queue_message(c) for c in shown])
        if with_stats:
            await asyncio.gather(
                *(
                    self._fill_stats(m, c.project, c.queue_id)
                    for m, c in zip(response.queues, shown, strict=True)
                )
            )
        if len(ordered) > size:
            response.next_page_token = ordered[size - 1].queue_id
        return response

    # ---- permissions and dead letters ----

    @rpc_errors
    async def TestIamPermissions(
        self, request: queues_pb2.TestIamPermissionsRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.TestIamPermissionsResponse:
        project, _ = parse_queue_name(request.resource)
        if len(request.permissions) > MAX_TESTED_PERMISSIONS:
            raise InvalidArgument(
                f"at most {MAX_TESTED_PERMISSIONS} permissions may be tested at once",
                reason="TOO_MANY_PERMISSIONS",
            )
        known = {p.value: p for p in Permission}
        held = []
        for asked in request.permissions:
            permission = known.get(asked)
            if permission is None:
                continue  # an unknown permission is held by no one
            try:
                self.access.require(permission, project)
            except PermissionDenied:
                continue
            held.append(asked)
        return queues_pb2.TestIamPermissionsResponse(permissions=held)

    @rpc_errors
    async def ListDeadLetters(
        self, request: queues_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.ListDeadLettersResponse:
        project = parse_dead_letters_parent(request.parent)
        size = page_size_of(request.page_size)
        cursor = decode_token(request.parent, request.page_token)
        if self.dead_letters is None:
            raise Unavailable("this server has no task queue to read dead letters from")
        page = await self.dead_letters.page(project, size, cursor)
        response = queues_pb2.ListDeadLettersResponse(dead_letters=page.letters)
        if page.next_cursor is not None:
            response.next_page_token = encode_token(request.parent, page.next_cursor)
        return response

    # ---- changes ----

    @rpc_errors
    async def CreateQueue(
        self, request: queues_pb2.CreateQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        project = parse_parent(request.parent)
        self.access.require(Permission.QUEUES_UPDATE, project)
        queue_id = check_queue_id(request.queue_id)
        if queue_id == DEFAULT_QUEUE:
            raise AlreadyExists(
                f"queue projects/{project}/queues/default always exists; change it with "
                "UpdateQueue",
                reason="QUEUE_ALREADY_EXISTS",
            )
        retry = retry_of(request.queue.retry_config)
        retry.check()
        limits = limits_of(request.queue.rate_limits)
        limits.check()
        now = self.clock.now()
        config = QueueConfig(
            project=project,
            queue_id=queue_id,
            create_time=now,
            update_time=now,
            retry=retry,
            limits=limits,
        )
        await self.queues.create(config)
        return queue_message(config)

    async def _change(self, name: str, change: Callable[[QueueConfig], QueueConfig]) -> QueueConfig:
        project, queue_id = parse_queue_name(name)
        self.access.require(Permission.QUEUES_UPDATE, project)
        now = self.clock.now()

        def apply(current: QueueConfig | None) -> QueueConfig:
            base = stored_or_default(current, project, queue_id, now)
            if base is None:
                raise queue_not_found(project, queue_id)
            return change(base)

        return await self.queues.update(project, queue_id, apply)

    @rpc_errors
    async def UpdateQueue(
        self, request: queues_pb2.UpdateQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        retry = retry_of(request.queue.retry_config)
        limits = limits_of(request.queue.rate_limits)
        paths = list(request.update_mask.paths)
        now = self.clock.now()
        updated = await self._change(
            request.queue.name, lambda c: apply_update(c, retry, paths, now, limits)
        )
        return queue_message(updated)

    @rpc_errors
    async def DeleteQueue(
        self, request: queues_pb2.DeleteQueueRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        project, queue_id = parse_queue_name(request.name)
        self.access.require(Permission.QUEUES_UPDATE, project)
        deleted = await self.queues.delete(project, queue_id)
        if not deleted and queue_id != DEFAULT_QUEUE:
            raise queue_not_found(project, queue_id)
        return empty_pb2.Empty()

    @rpc_errors
    async def PauseQueue(
        self, request: queues_pb2.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        now = self.clock.now()
        return queue_message(await self._change(request.name, lambda c: paused(c, now)))

    @rpc_errors
    async def ResumeQueue(
        self, request: queues_pb2.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        now = self.clock.now()
        config = await self._change(request.name, lambda c: resumed(c, now))
        self._in_background(self._republish(config.project, config.queue_id))
        return queue_message(config)

    @rpc_errors
    async def PurgeQueue(
        self, request: queues_pb2.PurgeQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.Queue:
        now = self.clock.now()
        config = await self._change(request.name, lambda c: purged(c, now))
        self._in_background(self._purge(config.project, config.queue_id))
        return queue_message(config)

    # ---- background work over a queue's QUEUED operations ----

    def _in_background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("queue background work failed (the sweeper and workers catch up)")

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _republish(self, project: str, queue_id: str) -> None:
        """Publish every QUEUED operation of the queue, now and once more after
        `resume_repeat` (publishing twice is harmless: claims are guarded)."""
        for round_ in range(2):
            if round_:
                await asyncio.sleep(self.resume_repeat)
            after = ""
            while True:
                page = await self.store.queued_in(project, queue_id, after=after, limit=self.batch)
                for rec in page:
                    await self.dispatcher.dispatch(rec)
                if len(page) < self.batch:
                    break
                after = page[-1].id

    async def purge_now(self, project: str, queue_id: str) -> int:
        """Cancel every QUEUED operation of the queue; returns how many."""
        cancelled = 0
        after = ""
        while True:
            page = await self.store.queued_in(project, queue_id, after=after, limit=self.batch)
            for rec in page:
                try:
                    done = await self.store.update(
                        rec.name,
                        lambda r: transitions.purge(
                            r, now=self.clock.now(), retention=self.retention
                        ),
                    )
                except (transitions.Rejected, NotFound):
                    continue
                cancelled += int(done.done)
            if len(page) < self.batch:
                return cancelled
            after = page[-1].id

    async def _purge(self, project: str, queue_id: str) -> None:
        count = await self.purge_now(project, queue_id)
        log.info(
            "queue projects/%s/queues/%s purged: %d operations cancelled", project, queue_id, count
        )

    async def stop(self) -> None:
        """Wait briefly for background work (the sweeper and workers cover the rest)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
