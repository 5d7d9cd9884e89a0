"""longrun.v1.Jobs: create an operation, store it, hand it to the queue.

The operation goes to the project `parent` names (`projects/{p}`); without
one, to the caller's only project (the one project it may create in, per
`access.visible_projects`), else to the server's default project. The
caller must hold CREATE there (`access.require`). Its `request_id` is
unique within that project: a request repeating one gets the operation the
first created, with the trailing metadata `longrun-request-replayed: true`
(event triggers count duplicates with it; clients may ignore it).
A job runs in a queue of its project (`queue`, default `default`; another
queue must exist: NOT_FOUND), whose retry_config may set its max_attempts.
With a `schedule_time` ahead it is stored with `run_after` and
`dispatch_due_time` at that time and not published: the sweeper publishes it
then (an index walk over due records only), and a claim before it is
deferred (transitions.NotDue)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from google.longrunning import operations_pb2
from google.protobuf.json_format import MessageToDict

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.access import Access, AllowAll, Permission, current_principal
from longrun_core.clock import Clock, IdGenerator
from longrun_core.errors import InvalidArgument, LongrunError, NotFound
from longrun_core.failpoints import Failpoints
from longrun_core.model import OperationRecord, State, WaitReason, queue_name
from longrun_core.names import DEFAULT_PROJECT, check_project_id, parse_parent
from longrun_core.observability.trace_context import current_traceparent
from longrun_core.queues import (
    DEFAULT_QUEUE,
    QueueConfig,
    QueueStore,
    effective_retry,
    job_queue,
)
from longrun_core.store import CreateResult, OperationStore, is_scheduled_ahead, request_fingerprint
from longrun_core.tasks import TaskRegistry
from longrun_core.validation import (
    check_labels,
    check_params_size,
    check_params_values,
    check_request_id,
)
from longrun_server.dispatcher import Dispatcher
from longrun_server.quotas import OpenOperationsQuota
from longrun_server.status import rpc_errors

#: Trailing metadata on a CreateJob answered with an existing operation
#: (its request_id was seen before in the project).
REPLAYED_METADATA_KEY = "longrun-request-replayed"

#: Cloud Tasks' bound for schedule_time.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
#: Bounds of CreateJob dispatch_deadline.
MIN_DISPATCH_DEADLINE = timedelta(seconds=1)
MAX_DISPATCH_DEADLINE = timedelta(hours=24)
MAX_CONCURRENCY_KEY = 128
#: Most items of one BatchCreateJobs by default (`--max-batch-create`).
MAX_BATCH_CREATE = 100


class JobsService(jobs_pb2_grpc.JobsServicer):
    def __init__(
        self,
        store: OperationStore,
        dispatcher: Dispatcher,
        registry: TaskRegistry,
        *,
        clock: Clock,
        ids: IdGenerator,
        failpoints: Failpoints | None = None,
        access: Access | None = None,
        default_project: str = DEFAULT_PROJECT,
        open_quota: OpenOperationsQuota | None = None,
        queues: QueueStore | None = None,
        max_schedule_ahead: timedelta = MAX_SCHEDULE_AHEAD,
        max_batch_create: int = MAX_BATCH_CREATE,
    ) -> None:
        self.store = store
        self.max_batch_create = max_batch_create
        #: Unfinished operations per authenticated principal (quotas.py).
        self.open_quota = open_quota or OpenOperationsQuota(0, store.count_open)
        #: None: every job goes to its project's default queue, with its defaults.
        self.queues = queues
        self.max_schedule_ahead = max_schedule_ahead
        self.access: Access = access or AllowAll()
        self.default_project = check_project_id(default_project, field="default project")
        self.dispatcher = dispatcher
        self.registry = registry
        self.clock = clock
        self.ids = ids
        self.failpoints = failpoints or Failpoints()

    @rpc_errors
    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        project = self.project_of(request)
        self.access.require(Permission.CREATE, project)
        queue = await self.queue_of(project, request.queue)
        rec = self.new_record(request, project, queue=queue)
        principal = current_principal()
        if not principal.anonymous:
            await self.open_quota.admit(principal.id)
        result = await self.store.create(rec)
        self.failpoints.hit("after_store")
        self.dispatch_created(result)
        if not result.created:
            context.set_trailing_metadata(((REPLAYED_METADATA_KEY, "true"),))
        return result.record.to_operation()

    def dispatch_created(self, result: CreateResult) -> None:
        """Hand a newly stored job to the dispatcher unless its create already
        enqueued it (nothing for a replayed request_id)."""
        created = result.record
        if result.created and is_scheduled_ahead(created):
            # Due soon: published on time by a timer (else by the sweeper).
            assert created.run_after is not None
            self.dispatcher.dispatch_at(created, created.run_after)
        elif result.created and not result.enqueued:
            self.dispatcher.dispatch_soon(created)

    @rpc_errors
    async def BatchCreateJobs(
        self, request: jobs_pb2.BatchCreateJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.BatchCreateJobsResponse:
        """AIP-233: every item validated and authorized on its own parent first
        (one bad item fails the batch, its `index` in the error's metadata,
        nothing stored), then stored; see jobs.proto for a partial failure."""
        count = len(request.requests)
        if not 1 <= count <= self.max_batch_create:
            raise InvalidArgument(
                f"requests holds {count} items; 1 to {self.max_batch_create} are allowed "
                "(--max-batch-create)",
                reason="BATCH_SIZE_INVALID",
                metadata={"count": str(count), "max": str(self.max_batch_create)},
            )
        batch_parent = parse_parent(request.parent) if request.parent else None
        records: list[OperationRecord] = []
        for index, item in enumerate(request.requests):
            try:
                records.append(await self.batch_item(item, batch_parent))
            except LongrunError as exc:
                exc.metadata["index"] = str(index)
                raise
        principal = current_principal()
        if not principal.anonymous:
            await self.open_quota.admit(principal.id, len(records))
        results = await asyncio.gather(*(self.store.create(rec) for rec in records))
        self.failpoints.hit("after_store")
        for result in results:
            self.dispatch_created(result)
        return jobs_pb2.BatchCreateJobsResponse(
            operations=[result.record.to_operation() for result in results]
        )

    async def batch_item(
        self, item: jobs_pb2.CreateJobRequest, batch_parent: str | None
    ) -> OperationRecord:
        """The record of one BatchCreateJobs item, once its project (the
        batch's parent, which the item's must match) allows CREATE."""
        if batch_parent is None:
            project = self.project_of(item)
        else:
            if item.parent and parse_parent(item.parent) != batch_parent:
                raise InvalidArgument(
                    f"an item's parent {item.parent!r} differs from the batch's parent "
                    f"'projects/{batch_parent}'; leave it empty or the same",
                    reason="PARENT_MISMATCH",
                    metadata={"parent": item.parent},
                )
            project = batch_parent
        self.access.require(Permission.CREATE, project)
        queue = await self.queue_of(project, item.queue)
        return self.new_record(item, project, queue=queue)

    async def queue_of(self, project: str, requested: str) -> QueueConfig | None:
        """The stored configuration of the queue `requested` names (None for
        a default queue never changed); NOT_FOUND for another unknown queue."""
        queue_id = job_queue(project, requested)
        if self.queues is None:
            if queue_id != DEFAULT_QUEUE:
                raise NotFound(
                    f"queue {queue_name(project, queue_id)} does not exist (no queues here)",
                    reason="QUEUE_NOT_FOUND",
                )
            return None
        config = await self.queues.get(project, queue_id)
        if config is None and queue_id != DEFAULT_QUEUE:
            raise NotFound(
                f"queue {queue_name(project, queue_id)} does not exist; create it with "
                "longrun.v1.Queues/CreateQueue",
                reason="QUEUE_NOT_FOUND",
                metadata={"queue": queue_name(project, queue_id)},
            )
        return config

    def project_of(self, request: jobs_pb2.CreateJobRequest) -> str:
        """The project the request creates in (see the module docstring)."""
        if request.parent:
            return parse_parent(request.parent)
        visible = self.access.visible_projects(Permission.CREATE)
        if visible is not None and len(visible) == 1:
            return next(iter(visible))
        return self.default_project

    def new_record(
        self,
        request: jobs_pb2.CreateJobRequest,
        project: str | None = None,
        *,
        queue: QueueConfig | None = None,
    ) -> OperationRecord:
        """Validate the request (INVALID_ARGUMENT saying what is wrong) and build
        the record, in `project` (default: `project_of(request)`) and `queue`
        (its stored configuration; None: the default queue's defaults);
        nothing is stored or authorized here."""
        project = project if project is not None else self.project_of(request)
        params_bytes = request.params.SerializeToString(deterministic=True)
        check_params_size(params_bytes)
        check_params_values(request.params)
        labels = dict(request.labels)
        check_labels(labels)
        request_id = check_request_id(request.request_id)
        spec = self.registry.validate(request.task, MessageToDict(request.params))
        now = self.clock.now()
        queue_id = queue.queue_id if queue is not None else job_queue(project, request.queue)
        retry = effective_retry(spec.retry, queue.retry if queue is not None else None)
        schedule = self.schedule_of(request, now)
        ahead = schedule is not None and schedule > now
        return OperationRecord(
            id=self.ids(),
            task=request.task,
            params=params_bytes,
            state=State.QUEUED,
            create_time=now,
            update_time=now,
            labels=labels,
            max_attempts=retry.max_attempts,
            request_id=request_id,
            request_hash=(
                request_fingerprint(request.task, params_bytes, labels) if request_id else None
            ),
            dispatch_due_time=schedule if ahead else self.dispatcher.first_dispatch_due(now),
            run_after=schedule if ahead else None,
            schedule_time=schedule,
            wait_reason=WaitReason.SCHEDULED if ahead else WaitReason.READY,
            project=project,
            creator=current_principal().id,
            queue=queue_id,
            dispatch_deadline=check_dispatch_deadline(request),
            concurrency_key=check_concurrency_key(request.concurrency_key),
            trace=current_traceparent() or None,
        )

    def schedule_of(self, request: jobs_pb2.CreateJobRequest, now: datetime) -> datetime | None:
        """The request's schedule_time (None when unset); INVALID_ARGUMENT past
        `max_schedule_ahead` from `now`."""
        if not request.HasField("schedule_time"):
            return None
        ts = request.schedule_time
        if not 0 <= ts.nanos < 1_000_000_000:
            raise InvalidArgument("schedule_time has invalid nanos", reason="SCHEDULE_TIME_INVALID")
        try:
            when = ts.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidArgument(
                f"schedule_time is not a valid time: {exc}", reason="SCHEDULE_TIME_INVALID"
            ) from exc
        limit = now + self.max_schedule_ahead
        if when > limit:
            days = self.max_schedule_ahead.total_seconds() / 86400
            raise InvalidArgument(
                f"schedule_time {when.isoformat()} is more than {days:g} days ahead "
                f"(latest accepted now: {limit.isoformat()})",
                reason="SCHEDULE_TIME_TOO_FAR",
                metadata={"schedule_time": when.isoformat(), "latest": limit.isoformat()},
            )
        return when


def check_dispatch_deadline(request: jobs_pb2.CreateJobRequest) -> timedelta | None:
    if not request.HasField("dispatch_deadline"):
        return None
    d = request.dispatch_deadline
    if d.seconds < 0 or d.nanos < 0 or d.nanos >= 1_000_000_000:
        raise InvalidArgument(
            "dispatch_deadline must be a positive duration", reason="DISPATCH_DEADLINE_INVALID"
        )
    value = d.ToTimedelta()
    if not MIN_DISPATCH_DEADLINE <= value <= MAX_DISPATCH_DEADLINE:
        raise InvalidArgument(
            f"dispatch_deadline must be between {MIN_DISPATCH_DEADLINE.total_seconds():g}s and "
            f"{MAX_DISPATCH_DEADLINE.total_seconds():g}s, got {value.total_seconds():g}s",
            reason="DISPATCH_DEADLINE_INVALID",
        )
    return value


def check_concurrency_key(key: str) -> str | None:
    if not key:
        return None
    if len(key) > MAX_CONCURRENCY_KEY or not key.isprintable():
        raise InvalidArgument(
            f"concurrency_key must be 1-{MAX_CONCURRENCY_KEY} printable characters",
            reason="CONCURRENCY_KEY_INVALID",
        )
    return key
