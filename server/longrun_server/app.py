"""Server factory: every service built with its dependencies, plus health
checking and reflection. `create_server` binds; callers start and stop."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from longrun.v1 import api_keys_pb2, jobs_pb2, queues_pb2
from longrun_core.access import Access
from longrun_core.clock import Clock, IdGenerator, SystemClock, uuid_ids
from longrun_core.failpoints import Failpoints
from longrun_core.queue import TaskQueue
from longrun_core.queue_stores import queue_store_for
from longrun_core.queues import QueueStore
from longrun_core.settings import ServerSettings
from longrun_core.shared_secrets import PAGE_TOKEN_KEY, fresh_secret, shared_secret
from longrun_core.store import OperationStore, PageTokens
from longrun_core.tasks import TaskRegistry
from longrun_server.api_keys_service import ApiKeysService
from longrun_server.auth_setup import AuthSetup
from longrun_server.dispatcher import Dispatcher
from longrun_server.gateway_link import GatewayLink
from longrun_server.health import HealthServicer
from longrun_server.jobs_service import JobsService
from longrun_server.operations_service import OperationsService
from longrun_server.pages import PageLimits
from longrun_server.queues_service import QueuesService
from longrun_server.quotas import OpenOperationsQuota
from longrun_server.reflection import enable_reflection
from longrun_server.status import service_handler
from longrun_server.tls import CertificateFiles, grpc_server_credentials

# Raise grpc's pending-request limits so thousands of concurrent
# WaitOperation calls are held, not rejected.
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1_000_000),
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
]


def port_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """SO_REUSEPORT only with --reuse-port: otherwise a port another process
    holds fails the start instead of being silently shared."""
    return [("grpc.so_reuseport", 1 if settings.reuse_port else 0)]


def message_limit_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The server's message limits, set explicitly (gRPC's own default sends
    messages of any size, which default clients then refuse above 4 MiB)."""
    return [
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
    ]


def page_limits(settings: ServerSettings) -> PageLimits:
    return PageLimits(
        max_bytes=settings.page_budget, max_message_bytes=settings.max_send_message_bytes
    )


def connection_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """gRPC options that close idle, old, dead and half-open connections
    (see ServerSettings). A connection past its age gets GOAWAY and keeps
    its calls until the longest WaitOperation could end."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout)),
        ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle)),
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_wait + settings.grace)),
        ("grpc.server_handshake_timeout_ms", ms(settings.grpc_handshake_timeout)),
        # Clients may ping idle connections too (at most every 10 s).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]


async def page_token_key(settings: ServerSettings, store: OperationStore) -> bytes:
    """--page-token-secret, else the key kept in the store (so every server
    on one store accepts the others' tokens), else one for this process."""
    if settings.page_token_secret:
        return settings.page_token_secret
    return await shared_secret(store, PAGE_TOKEN_KEY) or fresh_secret()


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
    auth: AuthSetup | None = None,
    certificates: CertificateFiles | None = None,
    gateway_link: GatewayLink | None = None,
    access: Access | None = None,
    queue_store: QueueStore | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, Dispatcher]:
    """Build and bind the server (not started). Returns (server, bound port, dispatcher).
    `auth` (server/auth_setup.py): who may call, and `auth.access` what they may
    do in which project; default: everyone may do everything. `access`
    overrides `auth.access` (tests). `queue_store` (longrun.v1.Queues):
    default, the one beside `store`. With `certificates` the port serves TLS
    (server/tls.py); with `gateway_link` the server also listens on the HTTP
    gateway's private socket (server/gateway_link.py). `interceptors` run
    outside authentication's (server/metrics.py: the metrics interceptor)."""
    settings.check()
    clock = clock or SystemClock()
    auth = auth or AuthSetup()
    access = access or auth.access
    retention = timedelta(seconds=settings.retention)
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=settings.redispatch_after),
        retention=retention,
        sweep_interval=settings.sweep_interval,
        outage_lease_grace=timedelta(seconds=settings.outage_lease_grace),
        lease_check_interval=settings.lease_check_interval,
        max_timers=settings.dispatch_timers,
    )
    server = grpc.aio.server(
        options=[
            *SERVER_OPTIONS,
            *port_options(settings),
            *message_limit_options(settings),
            *connection_options(settings),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=[*interceptors, *auth.interceptors],
    )
    operations = OperationsService(
        store,
        clock=clock,
        tokens=PageTokens(await page_token_key(settings, store)),
        retention=retention,
        max_wait=settings.max_wait,
        page_limits=page_limits(settings),
        view_cache_bytes=settings.view_cache_max_bytes,
        list_scan_budget=settings.list_scan_budget,
        access=access,
    )
    if queue_store is None:
        queue_store = queue_store_for(store)
    await queue_store.start()
    jobs = JobsService(
        store,
        dispatcher,
        registry,
        clock=clock,
        ids=ids,
        failpoints=Failpoints.from_env(),
        access=access,
        default_project=settings.default_project,
        open_quota=OpenOperationsQuota(
            settings.auth.quota_open_operations if auth.interceptor is not None else 0,
            store.count_open,
        ),
        queues=queue_store,
        max_schedule_ahead=timedelta(seconds=settings.max_schedule_ahead),
        max_batch_create=settings.max_batch_create,
    )
    queues = QueuesService(
        queue_store,
        store,
        dispatcher,
        access,
        clock=clock,
        retention=retention,
        resume_repeat=settings.queue_resume_repeat,
        task_queue=queue,
        stats_limit=settings.queue_stats_limit,
        dead_letters_scan=settings.dead_letters_scan,
    )
    server.add_generic_rpc_handlers(
        (
            service_handler(operations_pb2.DESCRIPTOR.services_by_name["Operations"], operations),
            service_handler(jobs_pb2.DESCRIPTOR.services_by_name["Jobs"], jobs),
            service_handler(queues_pb2.DESCRIPTOR.services_by_name["Queues"], queues),
        )
    )
    served = ["longrun.v1.Jobs", "google.longrunning.Operations", "longrun.v1.Queues"]
    if auth.key_store is not None:
        keys_service = api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeys"]
        server.add_generic_rpc_handlers(
            (
                service_handler(
                    keys_service,
                    ApiKeysService(
                        auth.key_store, auth.access, clock=clock, verifier=auth.key_verifier
                    ),
                ),
            )
        )
        served.append(keys_service.full_name)
    for user in user_services:
        user.register(server, jobs)
    user_names = [name for user in user_services for name in user.names]
    health_servicer = health_servicer or HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", *served, *user_names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    names = [
        *served,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        *user_names,
    ]
    enable_reflection(names, server)
    if certificates is not None:
        port = server.add_secure_port(settings.address, grpc_server_credentials(certificates))
    else:
        port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    if gateway_link is not None and not server.add_insecure_port(gateway_link.target):
        raise OSError(f"could not bind {gateway_link.target}")
    return server, port, dispatcher
