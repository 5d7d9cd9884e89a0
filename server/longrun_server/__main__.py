"""`longrun-server` (`python -m longrun_server`): the Operations + Jobs gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from longrun_core.auth.key_stores import build_key_store
from longrun_core.backends import build_backends
from longrun_core.cli_options import (
    METRICS_OFF,
    TRACING_OFF,
    MetricsSettings,
    auth_options,
    auth_settings,
    backend_options,
    backend_settings,
    metrics_settings,
    run_main,
    setup_logging,
    task_registry,
    tls_options,
    tls_settings,
    tracing_settings,
)
from longrun_core.errors import InvalidArgument, StartupError
from longrun_core.names import check_project_id
from longrun_core.observability.tracing import TracingSettings, build_tracer_provider
from longrun_core.process_limits import limit_accept_error_logs, raise_open_files_limit
from longrun_core.settings import (
    MIN_MESSAGE_BYTES,
    PAGE_HEADROOM_BYTES,
    BackendSettings,
    ServerSettings,
)
from longrun_core.tasks import TaskRegistry
from longrun_server.app import create_server, load_services
from longrun_server.auth_interceptor import client_certificate_sans
from longrun_server.auth_setup import build_auth
from longrun_server.cors import CorsPolicy, parse_origins
from longrun_server.exposure import ExposureRefused, check_exposure
from longrun_server.gateway_link import GatewayLink
from longrun_server.health import HealthServicer, StoreHealth
from longrun_server.keys_cli import keys
from longrun_server.metrics import ServerObservability, server_tracing
from longrun_server.rest import (
    RestGateway,
    build_routes,
    served_services,
    split_host_port,
)
from longrun_server.rest_connections import ConnectionLimits
from longrun_server.tls import CertificateError, CertificateFiles, https_context

log = logging.getLogger("longrun.server")
_S = ServerSettings()


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--address",
    default="localhost:50051",
    envvar="LONGRUN_ADDRESS",
    show_envvar=True,
    show_default=True,
    help="host:port to listen on (port 0: any).",
)
@click.option(
    "--retention",
    type=float,
    default=30 * 86400.0,
    envvar="LONGRUN_RETENTION",
    show_envvar=True,
    show_default=True,
    help="Seconds finished operations are kept before they expire.",
)
@click.option(
    "--redispatch-after",
    type=float,
    default=30.0,
    envvar="LONGRUN_REDISPATCH_AFTER",
    show_envvar=True,
    show_default=True,
    help="Seconds before a stored, unclaimed operation is published again.",
)
@click.option(
    "--sweep-interval",
    type=float,
    default=1.0,
    envvar="LONGRUN_SWEEP_INTERVAL",
    show_envvar=True,
    show_default=True,
)
@click.option(
    "--lease-check-interval",
    type=click.FloatRange(min=0),
    default=2.0,
    envvar="LONGRUN_LEASE_CHECK_INTERVAL",
    show_envvar=True,
    show_default=True,
    help="Seconds between looks at the running operations' leases (one read each); "
    "a dead worker's operation is taken over this long after its lease at most.",
)
@click.option(
    "--page-token-secret",
    default="",
    envvar="LONGRUN_PAGE_TOKEN_SECRET",
    show_envvar=True,
    help="Key that signs page tokens (default: one generated once and kept in the store, "
    "so every server on the store accepts the others' tokens).",
)
@click.option(
    "--reuse-port/--no-reuse-port",
    default=False,
    envvar="LONGRUN_REUSE_PORT",
    show_envvar=True,
    show_default=True,
    help="Let several server processes listen on the same --address (and --http-address) "
    "port, SO_REUSEPORT: the kernel spreads new connections over them. Without it a port "
    "in use fails the start.",
)
@click.option(
    "--grace",
    type=float,
    default=5.0,
    envvar="LONGRUN_GRACE",
    show_envvar=True,
    show_default=True,
    help="Seconds in-flight RPCs get on SIGTERM.",
)
@click.option(
    "--list-scan-budget",
    type=click.IntRange(min=1),
    default=ServerSettings.list_scan_budget,
    envvar="LONGRUN_LIST_SCAN_BUDGET",
    show_envvar=True,
    show_default=True,
    help="Rows one ListOperations call may read; past it the page is shorter (even empty) "
    "and its next_page_token resumes the scan.",
)
@click.option(
    "--default-project",
    default=ServerSettings.default_project,
    envvar="LONGRUN_DEFAULT_PROJECT",
    show_envvar=True,
    show_default=True,
    help="Project of a CreateJob without parent (when the caller may create in more than "
    "one project, or authorization is off): operations are named "
    "projects/PROJECT/operations/ID.",
)
@click.option(
    "--grpc-keepalive-time",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.grpc_keepalive_time,
    envvar="LONGRUN_GRPC_KEEPALIVE_TIME",
    show_envvar=True,
    show_default=True,
    help="Seconds between keepalive pings to an idle gRPC client (a dead peer is dropped).",
)
@click.option(
    "--grpc-keepalive-timeout",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.grpc_keepalive_timeout,
    envvar="LONGRUN_GRPC_KEEPALIVE_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds a gRPC keepalive ping may go unanswered before the connection is closed.",
)
@click.option(
    "--grpc-max-connection-idle",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.grpc_max_connection_idle,
    envvar="LONGRUN_GRPC_MAX_CONNECTION_IDLE",
    show_envvar=True,
    show_default=True,
    help="Seconds a gRPC connection without calls stays open.",
)
@click.option(
    "--grpc-max-connection-age",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.grpc_max_connection_age,
    envvar="LONGRUN_GRPC_MAX_CONNECTION_AGE",
    show_envvar=True,
    show_default=True,
    help="Seconds after which a gRPC connection is asked to go away (its calls may finish).",
)
@click.option(
    "--grpc-handshake-timeout",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.grpc_handshake_timeout,
    envvar="LONGRUN_GRPC_HANDSHAKE_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds a new gRPC connection has to complete its HTTP/2 handshake.",
)
@click.option(
    "--http-header-timeout",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.http_header_timeout,
    envvar="LONGRUN_HTTP_HEADER_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds an HTTP request's headers may take once it starts arriving.",
)
@click.option(
    "--http-body-timeout",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.http_body_timeout,
    envvar="LONGRUN_HTTP_BODY_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds an HTTP request body may take (then 408).",
)
@click.option(
    "--http-idle-timeout",
    type=click.FloatRange(min=0.001),
    default=ServerSettings.http_idle_timeout,
    envvar="LONGRUN_HTTP_IDLE_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds an HTTP connection without a request in progress stays open.",
)
@click.option(
    "--http-max-connections",
    type=click.IntRange(min=1),
    default=ServerSettings.http_max_connections,
    envvar="LONGRUN_HTTP_MAX_CONNECTIONS",
    show_envvar=True,
    show_default=True,
    help="HTTP connections open at once; more are answered 503 and closed.",
)
@click.option(
    "--health-interval",
    type=click.FloatRange(min=0.05),
    default=ServerSettings.health_interval,
    envvar="LONGRUN_HEALTH_INTERVAL",
    show_envvar=True,
    show_default=True,
    help="Seconds between probes of the operation store; grpc.health.v1 reports "
    "NOT_SERVING while they fail (disk full, read-only, store unreachable).",
)
@click.option(
    "--health-timeout",
    type=click.FloatRange(min=0.05),
    default=ServerSettings.health_timeout,
    envvar="LONGRUN_HEALTH_TIMEOUT",
    show_envvar=True,
    show_default=True,
    help="Seconds a store probe may take before it counts as failed.",
)
@click.option(
    "--outage-lease-grace",
    type=click.FloatRange(min=0.0),
    default=ServerSettings.outage_lease_grace,
    envvar="LONGRUN_OUTAGE_LEASE_GRACE",
    show_envvar=True,
    show_default=True,
    help="After a storage outage, seconds that leases which expired meanwhile are left "
    "to their workers before the sweeper takes the operations back.",
)
@click.option(
    "--max-schedule-ahead",
    type=click.FloatRange(min=1.0, max=365 * 86400.0),
    default=ServerSettings.max_schedule_ahead,
    envvar="LONGRUN_MAX_SCHEDULE_AHEAD",
    show_envvar=True,
    show_default=True,
    help="Furthest ahead (seconds) a CreateJob schedule_time may be; 30 days like Cloud Tasks.",
)
@click.option(
    "--max-batch-create",
    type=click.IntRange(min=1, max=10_000),
    default=ServerSettings.max_batch_create,
    envvar="LONGRUN_MAX_BATCH_CREATE",
    show_envvar=True,
    show_default=True,
    help="Most jobs one BatchCreateJobs call may create (AIP-233 batch bound).",
)
@click.option(
    "--queue-resume-repeat",
    type=click.FloatRange(min=0.0, max=600.0),
    default=ServerSettings.queue_resume_repeat,
    envvar="LONGRUN_QUEUE_RESUME_REPEAT",
    show_envvar=True,
    show_default=True,
    help="ResumeQueue republishes the queue's waiting jobs at once and again after this many "
    "seconds (keep it above the workers' --queue-refresh).",
)
@click.option(
    "--dispatch-timers",
    type=click.IntRange(min=0, max=1_000_000),
    default=ServerSettings.dispatch_timers,
    envvar="LONGRUN_DISPATCH_TIMERS",
    show_envvar=True,
    show_default=True,
    help="Most timers publishing work on time (scheduled jobs, retries due within two sweep "
    "intervals); 0: the sweeper publishes everything at its next pass.",
)
@click.option(
    "--queue-stats-limit",
    type=click.IntRange(min=1, max=10_000_000),
    default=ServerSettings.queue_stats_limit,
    envvar="LONGRUN_QUEUE_STATS_LIMIT",
    show_envvar=True,
    show_default=True,
    help="Queue stats (GetQueue/ListQueues with read_mask=stats): each count of waiting and "
    "running jobs stops at this many.",
)
@click.option(
    "--dead-letters-scan",
    type=click.IntRange(min=1, max=100_000),
    default=ServerSettings.dead_letters_scan,
    envvar="LONGRUN_DEAD_LETTERS_SCAN",
    show_envvar=True,
    show_default=True,
    help="ListDeadLetters reads at most this many dead letters per call (a page may be "
    "short, with a token to go on).",
)
@click.option(
    "--port-file",
    type=click.Path(),
    default=None,
    envvar="LONGRUN_PORT_FILE",
    show_envvar=True,
    help="Write the bound port here once serving (for tests and scripts).",
)
@click.option(
    "--http-address",
    default="",
    envvar="LONGRUN_HTTP_ADDRESS",
    show_envvar=True,
    help="HOST:PORT for the HTTP/JSON gateway, e.g. localhost:8080 (port 0: any; "
    "default: off). See docs/rest.md.",
)
@click.option(
    "--http-port-file",
    type=click.Path(),
    default=None,
    envvar="LONGRUN_HTTP_PORT_FILE",
    show_envvar=True,
    help="Write the bound HTTP port here once serving (written before --port-file).",
)
@click.option(
    "--cors-allowed-origins",
    default="",
    envvar="LONGRUN_CORS_ALLOWED_ORIGINS",
    show_envvar=True,
    help="Comma-separated exact origins (https://app.example.com) whose pages may call "
    "the HTTP gateway from a browser (CORS); default: none. See docs/console.md.",
)
@click.option(
    "--console/--no-console",
    default=ServerSettings.console,
    envvar="LONGRUN_CONSOLE",
    show_envvar=True,
    show_default=True,
    help="Serve the operations console at /console/ on the HTTP gateway (docs/console.md).",
)
@click.option(
    "--max-send-message-bytes",
    type=click.IntRange(min=MIN_MESSAGE_BYTES),
    default=_S.max_send_message_bytes,
    envvar="LONGRUN_MAX_SEND_MESSAGE_BYTES",
    show_envvar=True,
    show_default=True,
    help="Largest message the server sends (clients accept 4 MiB unless told "
    "otherwise); ListOperations pages stop early below it.",
)
@click.option(
    "--max-receive-message-bytes",
    type=click.IntRange(min=MIN_MESSAGE_BYTES),
    default=_S.max_receive_message_bytes,
    envvar="LONGRUN_MAX_RECEIVE_MESSAGE_BYTES",
    show_envvar=True,
    show_default=True,
    help="Largest request the server accepts, over gRPC and as an HTTP body.",
)
@click.option(
    "--list-page-max-bytes",
    type=click.IntRange(min=0),
    default=_S.list_page_max_bytes,
    envvar="LONGRUN_LIST_PAGE_MAX_BYTES",
    show_envvar=True,
    show_default=True,
    help="Bytes of operations a ListOperations page holds before it ends early with a "
    f"next_page_token (0: the max send size less {PAGE_HEADROOM_BYTES // 1024} KiB).",
)
@click.option(
    "--service-module",
    "service_modules",
    multiple=True,
    envvar="LONGRUN_SERVICE_MODULES",
    show_envvar=True,
    help="Module whose `register(server, jobs)` mounts a user service on this server, "
    "e.g. examples.convert.service; repeat for several (env: space-separated).",
)
@auth_options
@tls_options
@backend_options
@click.pass_context
def main(ctx: click.Context, /, **kw: Any) -> None:
    """Serve google.longrunning.Operations and longrun.v1.Jobs (and
    longrun.v1.ApiKeys with --api-keys). `longrun-server keys --help`: mint
    the first admin key straight into the store."""
    setup_logging(kw.pop("log_level"), kw.pop("log_format"), kw["project"])
    metrics = metrics_settings(kw)
    tracing = tracing_settings(kw)
    backends = backend_settings(kw)
    if ctx.invoked_subcommand is not None:
        ctx.obj = backends
        return
    try:
        auth = auth_settings(kw)
        auth.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    tls = tls_settings(kw)
    registry = task_registry(kw)
    try:
        cors_origins = parse_origins(kw["cors_allowed_origins"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cors-allowed-origins") from exc
    settings = ServerSettings(
        address=kw["address"],
        tls=tls,
        allow_unauthenticated=kw["allow_unauthenticated"],
        retention=kw["retention"],
        redispatch_after=kw["redispatch_after"],
        sweep_interval=kw["sweep_interval"],
        lease_check_interval=kw["lease_check_interval"],
        page_token_secret=kw["page_token_secret"].encode(),
        reuse_port=kw["reuse_port"],
        grace=kw["grace"],
        max_send_message_bytes=kw["max_send_message_bytes"],
        max_receive_message_bytes=kw["max_receive_message_bytes"],
        list_page_max_bytes=kw["list_page_max_bytes"],
        view_cache_max_bytes=backends.cache_max_bytes,
        list_scan_budget=kw["list_scan_budget"],
        default_project=kw["default_project"],
        grpc_keepalive_time=kw["grpc_keepalive_time"],
        grpc_keepalive_timeout=kw["grpc_keepalive_timeout"],
        grpc_max_connection_idle=kw["grpc_max_connection_idle"],
        grpc_max_connection_age=kw["grpc_max_connection_age"],
        grpc_handshake_timeout=kw["grpc_handshake_timeout"],
        http_header_timeout=kw["http_header_timeout"],
        http_body_timeout=kw["http_body_timeout"],
        http_idle_timeout=kw["http_idle_timeout"],
        http_max_connections=kw["http_max_connections"],
        cors_allowed_origins=cors_origins,
        console=kw["console"],
        health_interval=kw["health_interval"],
        health_timeout=kw["health_timeout"],
        outage_lease_grace=kw["outage_lease_grace"],
        max_schedule_ahead=kw["max_schedule_ahead"],
        max_batch_create=kw["max_batch_create"],
        queue_resume_repeat=kw["queue_resume_repeat"],
        dispatch_timers=kw["dispatch_timers"],
        queue_stats_limit=kw["queue_stats_limit"],
        dead_letters_scan=kw["dead_letters_scan"],
        auth=auth,
    )
    try:
        check_project_id(settings.default_project)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, param_hint="--default-project") from exc
    try:
        settings.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--list-page-max-bytes") from exc
    http = None
    if kw["http_address"]:
        try:
            host, http_port = split_host_port(kw["http_address"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--http-address") from exc
        http = HttpListener(host, http_port, kw["http_port_file"])
    refuse_exposure(settings, [settings.address, *([kw["http_address"]] if http else [])])
    run_main(
        serve(
            settings,
            backends,
            registry,
            kw["port_file"],
            http,
            tuple(kw["service_modules"]),
            metrics,
            tracing,
        )
    )


def refuse_exposure(settings: ServerSettings, addresses: list[str]) -> None:
    """Exit 2 with one line when a listener would be reachable from other
    machines without authentication (server/exposure.py)."""
    try:
        check_exposure(
            addresses,
            authentication_configured=settings.authentication_configured,
            allow_unauthenticated=settings.allow_unauthenticated,
        )
    except ExposureRefused as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


@dataclass(frozen=True)
class HttpListener:
    """Where the HTTP/JSON gateway listens (server/rest.py)."""

    host: str | None
    port: int
    port_file: str | None = None


async def serve(
    settings: ServerSettings,
    backend_cfg: BackendSettings,
    registry: TaskRegistry,
    port_file: str | None,
    http: HttpListener | None = None,
    service_modules: tuple[str, ...] = (),
    metrics: MetricsSettings = METRICS_OFF,
    tracing: TracingSettings = TRACING_OFF,
) -> None:
    raise_open_files_limit()
    limit_accept_error_logs()
    user_services = load_services(service_modules)
    backends = build_backends(backend_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not await backends.start_patiently(stop):
        await backends.close()
        return
    certificates = None
    if settings.tls is not None:
        try:
            certificates = CertificateFiles(settings.tls)
        except CertificateError as exc:
            await backends.close()
            raise StartupError(str(exc)) from exc
        if settings.tls.client_auth == "optional":
            log.warning(
                "--tls-client-auth optional: HTTPS asks for client certificates; the gRPC "
                "port does not (grpcio can only require them or not ask)"
            )
    # The gateway's own way in: not the public port, which may demand TLS
    # and client certificates (server/gateway_link.py).
    link = GatewayLink.create() if http is not None else None
    transport_sans = None
    if settings.tls is not None and settings.tls.client_ca_file is not None:
        transport_sans = client_certificate_sans(link)
    auth = build_auth(
        settings.auth,
        key_store=build_key_store(backend_cfg, backends.store) if settings.auth.api_keys else None,
        transport_sans=transport_sans,
    )
    try:
        await auth.start()
    except Exception:
        await auth.close()
        await backends.close()
        raise
    auth.reload_on_sighup(loop)
    if settings.authentication_configured:
        a = settings.auth
        log.info(
            "authentication: %s; %s; policy %s",
            f"ID tokens for audience {a.oidc_audience!r} from {', '.join(a.oidc_issuer_keys())}"
            if a.oidc_audience
            else "no ID tokens",
            "API keys" if a.api_keys else "no API keys",
            a.policy_file or "(API keys' own bindings only)",
        )
    else:
        log.warning(
            "no authentication configured: every caller may read, create, cancel and delete "
            "every operation (see docs/security.md)"
        )
    observability = (
        ServerObservability.build(
            metrics.address,
            backends.store,
            backends.queue,
            port_file=metrics.port_file,
            max_queues=metrics.max_queues,
        )
        if metrics.enabled
        else None
    )
    tracer_provider = build_tracer_provider(tracing, "longrun-server") if tracing.enabled else None
    health_servicer = HealthServicer()
    server, port, dispatcher = await create_server(
        store=backends.store,
        queue=backends.queue,
        registry=registry,
        settings=settings,
        health_servicer=health_servicer,
        user_services=user_services,
        auth=auth,
        certificates=certificates,
        gateway_link=link,
        interceptors=[
            *([server_tracing(tracer_provider)] if tracer_provider is not None else []),
            *([observability.interceptor] if observability is not None else []),
        ],
    )
    gateway = None
    if http is not None and link is not None:
        # Listen for HTTP before the gRPC server starts, so a busy port fails cleanly.
        gateway = RestGateway(
            link.target,
            build_routes(served_services(api_keys=auth.key_store is not None)),
            max_wait=settings.max_wait,
            grace=settings.grace,
            max_request_bytes=settings.max_receive_message_bytes,
            max_response_bytes=settings.max_send_message_bytes,
            limits=ConnectionLimits(
                header_timeout=settings.http_header_timeout,
                body_timeout=settings.http_body_timeout,
                idle_timeout=settings.http_idle_timeout,
                max_connections=settings.http_max_connections,
            ),
            forwarding_secret=link.secret,
            cors=CorsPolicy(settings.cors_allowed_origins),
            console=settings.console,
        )
        try:
            http_port = await gateway.start(
                http.host,
                http.port,
                https_context(certificates) if certificates is not None else None,
                reuse_port=settings.reuse_port,
            )
        except OSError as exc:
            await gateway.stop()
            await auth.close()
            await backends.close()
            link.close()
            raise SystemExit(f"cannot listen for HTTP on {http.host}:{http.port}: {exc}") from exc
    if observability is not None:
        try:
            await observability.start(dispatcher)
        except OSError as exc:
            if gateway is not None:
                await gateway.stop()
            if link is not None:
                link.close()
            await auth.close()
            await backends.close()
            raise StartupError(f"cannot serve metrics on {metrics.address}: {exc}") from exc
    await server.start()
    dispatcher.start()
    store_health = StoreHealth(
        backends.probe,
        health_servicer,
        interval=settings.health_interval,
        timeout=settings.health_timeout,
    )
    store_health.start()
    log.info(
        "serving %s on port %d; %s; tasks %s",
        "TLS" if certificates is not None else "plaintext",
        port,
        backend_cfg.describe(),
        ",".join(registry.names),
    )
    if http is not None and http.port_file:
        Path(http.port_file).write_text(str(http_port))  # noqa: ASYNC240
    if port_file:
        Path(port_file).write_text(str(port))  # noqa: ASYNC240
    await stop.wait()
    log.info("stopping (grace %.1fs)", settings.grace)
    await store_health.stop()
    await health_servicer.enter_graceful_shutdown()
    await dispatcher.stop()
    if gateway is not None:
        # Together, so HTTP requests in flight get their answers within the grace.
        await asyncio.gather(gateway.stop(), server.stop(settings.grace))
    else:
        await server.stop(settings.grace)
    if observability is not None:
        await observability.stop()
    if tracer_provider is not None:
        tracer_provider.shutdown()
    await auth.close()
    await backends.close()
    if link is not None:
        link.close()


main.add_command(keys)

if __name__ == "__main__":
    main()
