"""convert.v1.Converter: a typed API whose operations longrun runs and tracks.

`ConvertDocument` turns its ConvertRequest into a `longrun.v1.CreateJobRequest`
for the `convert` task (examples/convert/tasks.py) and hands it to the server's
JobsService, so validation, idempotency (request_id), storage, dispatch and
errors are exactly those of Jobs.CreateJob. The Operation it returns is followed
with google.longrunning.Operations on the same server; its response is a
`convert.v1.ConvertResponse`.

Mount it on the longrun server with the service-module hook:

    LONGRUN_TASK_MODULES="longrun_worker.builtin_tasks examples.convert.tasks" \\
        longrun-server --service-module examples.convert.service
    LONGRUN_TASK_MODULES="longrun_worker.builtin_tasks examples.convert.tasks" longrun-worker

or, in a server you compose yourself, call `add_to_server(server, jobs)` before
`server.start()`.
"""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from convert.v1 import convert_pb2
from longrun.v1 import jobs_pb2
from longrun_server.jobs_service import JobsService
from longrun_server.status import rpc_errors, service_handler

TASK = "convert"

#: Listed by reflection and health when mounted with --service-module.
SERVICE_NAMES = (convert_pb2.DESCRIPTOR.services_by_name["Converter"].full_name,)


def to_job_request(request: convert_pb2.ConvertRequest) -> jobs_pb2.CreateJobRequest:
    """The CreateJobRequest that runs `request` as the `convert` task: the
    document fields become params; parent, request_id and labels keep their
    meaning (so the operation lands in the caller's project, authorized as a
    CreateJob there)."""
    document = convert_pb2.ConvertRequest(
        content=request.content, target_format=request.target_format
    )
    params = struct_pb2.Struct()
    params.update(MessageToDict(document, preserving_proto_field_name=True))
    return jobs_pb2.CreateJobRequest(
        parent=request.parent,
        task=TASK,
        params=params,
        request_id=request.request_id,
        labels=dict(request.labels),
    )


class ConverterService:
    """The servicer of convert.v1.Converter. It delegates to a JobsService, so
    one place creates operations. (It needs no generated base class: it is
    registered from the service descriptor, see `add_to_server`.)"""

    def __init__(self, jobs: JobsService) -> None:
        self.jobs = jobs

    @rpc_errors
    async def ConvertDocument(
        self, request: convert_pb2.ConvertRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return await self.jobs.CreateJob(to_job_request(request), context)


def add_to_server(server: grpc.aio.Server, jobs: JobsService) -> ConverterService:
    """Add the Converter service to `server` (before it starts). Raises
    RuntimeError when the `convert` task is not loaded, since every request
    would then fail."""
    if TASK not in jobs.registry.names:
        raise RuntimeError(
            f"task {TASK!r} is not registered: add examples.convert.tasks to the task modules "
            "(LONGRUN_TASK_MODULES) of the server and the workers"
        )
    servicer = ConverterService(jobs)
    descriptor = convert_pb2.DESCRIPTOR.services_by_name["Converter"]
    # service_handler parses requests leniently, so a malformed request is
    # INVALID_ARGUMENT like on Jobs (grpc alone would answer INTERNAL).
    server.add_generic_rpc_handlers((service_handler(descriptor, servicer),))
    return servicer


def register(server: grpc.aio.Server, jobs: JobsService) -> None:
    """The `--service-module` hook of `longrun-server`."""
    add_to_server(server, jobs)
