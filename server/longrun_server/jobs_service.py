"""longrun.v1.Jobs: create an operation, store it, hand it to the queue.

The operation goes to the project `parent` names (`projects/{p}`); without
one, to the caller's only project (the one project it may create in, per
`access.visible_projects`), else to the server's default project. The
caller must hold CREATE there (`access.require`). Its `request_id` is
unique within that project: a request repeating one gets the operation the
first created, with the trailing metadata `longrun-request-replayed: true`
(event triggers count duplicates with it; clients may ignore it)."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2
from google.protobuf.json_format import MessageToDict

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.access import Access, AllowAll, Permission, current_principal
from longrun_core.clock import Clock, IdGenerator
from longrun_core.failpoints import Failpoints
from longrun_core.model import OperationRecord, State
from longrun_core.names import DEFAULT_PROJECT, check_project_id, parse_parent
from longrun_core.store import OperationStore, request_fingerprint
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
    ) -> None:
        self.store = store
        #: Unfinished operations per authenticated principal (quotas.py).
        self.open_quota = open_quota or OpenOperationsQuota(0, store.count_open)
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
        rec = self.new_record(request, project)
        principal = current_principal()
        if not principal.anonymous:
            await self.open_quota.admit(principal.id)
        result = await self.store.create(rec)
        self.failpoints.hit("after_store")
        if result.created and not result.enqueued:
            self.dispatcher.dispatch_soon(result.record)
        if not result.created:
            context.set_trailing_metadata(((REPLAYED_METADATA_KEY, "true"),))
        return result.record.to_operation()

    def project_of(self, request: jobs_pb2.CreateJobRequest) -> str:
        """The project the request creates in (see the module docstring)."""
        if request.parent:
            return parse_parent(request.parent)
        visible = self.access.visible_projects(Permission.CREATE)
        if visible is not None and len(visible) == 1:
            return next(iter(visible))
        return self.default_project

    def new_record(
        self, request: jobs_pb2.CreateJobRequest, project: str | None = None
    ) -> OperationRecord:
        """Validate the request (INVALID_ARGUMENT saying what is wrong) and build
        the record, in `project` (default: `project_of(request)`); nothing is
        stored or authorized here."""
        params_bytes = request.params.SerializeToString(deterministic=True)
        check_params_size(params_bytes)
        check_params_values(request.params)
        labels = dict(request.labels)
        check_labels(labels)
        request_id = check_request_id(request.request_id)
        spec = self.registry.validate(request.task, MessageToDict(request.params))
        now = self.clock.now()
        return OperationRecord(
            id=self.ids(),
            task=request.task,
            params=params_bytes,
            state=State.QUEUED,
            create_time=now,
            update_time=now,
            labels=labels,
            max_attempts=spec.retry.max_attempts,
            request_id=request_id,
            request_hash=(
                request_fingerprint(request.task, params_bytes, labels) if request_id else None
            ),
            dispatch_due_time=self.dispatcher.first_dispatch_due(now),
            project=project if project is not None else self.project_of(request),
            creator=current_principal().id,
        )
