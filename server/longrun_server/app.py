"""Server factory: every service built with its dependencies, plus health
checking and reflection. `create_server` binds; callers start and stop."""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from longrun.v1 import jobs_pb2
from longrun_core.clock import Clock, IdGenerator, SystemClock, uuid_ids
from longrun_core.failpoints import Failpoints
from longrun_core.queue import TaskQueue
from longrun_core.settings import ServerSettings
from longrun_core.store import OperationStore, PageTokens
from longrun_core.tasks import TaskRegistry
from longrun_server.dispatcher import Dispatcher
from longrun_server.health import HealthServicer
from longrun_server.jobs_service import JobsService
from longrun_server.operations_service import OperationsService
from longrun_server.reflection import enable_reflection
from longrun_server.status import service_handler

# Raise grpc's pending-request limits so thousands of concurrent
# WaitOperation calls are held, not rejected.
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1_000_000),
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
    ("grpc.so_reuseport", 0),
]

_ = (struct_pb2, operations_pb2)  # types reflection must resolve (Any metadata/response)


@dataclass(frozen=True)
class UserService:
    """A module mounted with `--service-module`: `register(server, jobs)` adds its
    servicers (which may delegate to `jobs`); its optional `SERVICE_NAMES` are
    listed by reflection and reported SERVING by health."""

    register: Callable[[grpc.aio.Server, JobsService], None]
    names: tuple[str, ...] = ()


def load_services(modules: Iterable[str]) -> list[UserService]:
    """Import each module and take its `register` (and `SERVICE_NAMES`)."""
    found: list[UserService] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        register = getattr(module, "register", None)
        if not callable(register):
            raise ValueError(f"module {module_name!r} has no `register(server, jobs)`")
        found.append(UserService(register, tuple(getattr(module, "SERVICE_NAMES", ()))))
    return found


async def create_server(
    *,
    store: OperationStore,
    queue: TaskQueue,
    registry: TaskRegistry,
    settings: ServerSettings,
    clock: Clock | None = None,
    ids: IdGenerator = uuid_ids,
    health_servicer: health.aio.HealthServicer | None = None,
    user_services: Sequence[UserService] = (),
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
        lease_check_interval=settings.lease_check_interval,
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
    for user in user_services:
        user.register(server, jobs)
    user_names = [name for user in user_services for name in user.names]
    health_servicer = health_servicer or HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", "google.longrunning.Operations", "longrun.v1.Jobs", *user_names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    names = [
        jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
        operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        *user_names,
    ]
    enable_reflection(names, server)
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    return server, port, dispatcher
