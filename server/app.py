"""Server factory: every service built with its dependencies, plus health
checking and reflection. `create_server` binds; callers start and stop."""

from __future__ import annotations

import secrets
from datetime import timedelta

import grpc
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longrun.v1 import jobs_pb2
from lro.clock import Clock, IdGenerator, SystemClock, uuid_ids
from lro.failpoints import Failpoints
from lro.queue import TaskQueue
from lro.settings import ServerSettings
from lro.store import OperationStore, PageTokens
from lro.tasks import TaskRegistry
from server.dispatcher import Dispatcher
from server.jobs_service import JobsService
from server.operations_service import OperationsService
from server.status import service_handler

# Raise grpc's pending-request limits so thousands of concurrent
# WaitOperation calls are held, not rejected.
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1_000_000),
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
    ("grpc.so_reuseport", 0),
]

_ = (struct_pb2, operations_pb2)  # types reflection must resolve (Any metadata/response)


async def create_server(
    *,
    store: OperationStore,
    queue: TaskQueue,
    registry: TaskRegistry,
    settings: ServerSettings,
    clock: Clock | None = None,
    ids: IdGenerator = uuid_ids,
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int, Dispatcher]:
    """Build and bind the server (not started). Returns (server, bound port, dispatcher)."""
    clock = clock or SystemClock()
    retention = timedelta(seconds=settings.retention)
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=settings.redispatch_after),
        retention=retention,
        sweep_interval=settings.sweep_interval,
    )
    server = grpc.aio.server(
        options=SERVER_OPTIONS, maximum_concurrent_rpcs=settings.max_concurrent_rpcs
    )
    operations = OperationsService(
        store,
        clock=clock,
        tokens=PageTokens(settings.page_token_secret or secrets.token_bytes(32)),
        retention=retention,
        max_wait=settings.max_wait,
    )
    jobs = JobsService(
        store, dispatcher, registry, clock=clock, ids=ids, failpoints=Failpoints.from_env()
    )
    server.add_generic_rpc_handlers(
        (
            service_handler(operations_pb2.DESCRIPTOR.services_by_name["Operations"], operations),
            service_handler(jobs_pb2.DESCRIPTOR.services_by_name["Jobs"], jobs),
        )
    )
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", "google.longrunning.Operations", "longrun.v1.Jobs"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    names = [
        jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
        operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    return server, port, dispatcher
