"""longrun.v1.Jobs: create an operation, store it, hand it to the queue."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2
from google.protobuf.json_format import MessageToDict

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.clock import Clock, IdGenerator
from longrun_core.failpoints import Failpoints
from longrun_core.model import OperationRecord, State
from longrun_core.store import OperationStore, request_fingerprint
from longrun_core.tasks import TaskRegistry
from longrun_core.validation import (
    check_labels,
    check_params_size,
    check_params_values,
    check_request_id,
)
from longrun_server.dispatcher import Dispatcher
from longrun_server.status import rpc_errors


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
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.registry = registry
        self.clock = clock
        self.ids = ids
        self.failpoints = failpoints or Failpoints()

    @rpc_errors
    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        rec = self.new_record(request)
        result = await self.store.create(rec)
        self.failpoints.hit("after_store")
        if result.created and not result.enqueued:
            self.dispatcher.dispatch_soon(result.record)
        return result.record.to_operation()

    def new_record(self, request: jobs_pb2.CreateJobRequest) -> OperationRecord:
        """Validate the request (INVALID_ARGUMENT saying what is wrong) and build
        the record; nothing is stored here."""
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
        )
