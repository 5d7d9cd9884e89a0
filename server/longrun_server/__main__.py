"""`longrun-server` (`python -m longrun_server`): the Operations + Jobs gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from longrun_core.backends import build_backends
from longrun_core.cli_options import (
    backend_options,
    backend_settings,
    run_main,
    setup_logging,
    task_registry,
)
from longrun_core.settings import BackendSettings, ServerSettings
from longrun_core.tasks import TaskRegistry
from longrun_server.app import create_server, load_services
from longrun_server.health import HealthServicer
from longrun_server.rest import (
    RestGateway,
    build_routes,
    loopback_target,
    served_services,
    split_host_port,
)

log = logging.getLogger("longrun.server")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    help="Key that signs page tokens (default: random per process; "
    "set it when several servers share a store).",
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
    "--service-module",
    "service_modules",
    multiple=True,
    envvar="LONGRUN_SERVICE_MODULES",
    show_envvar=True,
    help="Module whose `register(server, jobs)` mounts a user service on this server, "
    "e.g. examples.convert.service; repeat for several (env: space-separated).",
)
@backend_options
def main(**kw: Any) -> None:
    """Serve google.longrunning.Operations and longrun.v1.Jobs."""
    setup_logging(kw.pop("log_level"))
    backends = backend_settings(kw)
    registry = task_registry(kw)
    settings = ServerSettings(
        address=kw["address"],
        retention=kw["retention"],
        redispatch_after=kw["redispatch_after"],
        sweep_interval=kw["sweep_interval"],
        lease_check_interval=kw["lease_check_interval"],
        page_token_secret=kw["page_token_secret"].encode(),
        grace=kw["grace"],
    )
    http = None
    if kw["http_address"]:
        try:
            host, http_port = split_host_port(kw["http_address"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--http-address") from exc
        http = HttpListener(host, http_port, kw["http_port_file"])
    run_main(
        serve(settings, backends, registry, kw["port_file"], http, tuple(kw["service_modules"]))
    )


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
) -> None:
    user_services = load_services(service_modules)
    backends = build_backends(backend_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not await backends.start_patiently(stop):
        await backends.close()
        return
    health_servicer = HealthServicer()
    server, port, dispatcher = await create_server(
        store=backends.store,
        queue=backends.queue,
        registry=registry,
        settings=settings,
        health_servicer=health_servicer,
        user_services=user_services,
    )
    gateway = None
    if http is not None:
        # Listen for HTTP before the gRPC server starts, so a busy port fails cleanly.
        gateway = RestGateway(
            loopback_target(settings.address, port),
            build_routes(served_services()),
            max_wait=settings.max_wait,
            grace=settings.grace,
        )
        try:
            http_port = await gateway.start(http.host, http.port)
        except OSError as exc:
            await gateway.stop()
            await backends.close()
            raise SystemExit(f"cannot listen for HTTP on {http.host}:{http.port}: {exc}") from exc
    await server.start()
    dispatcher.start()
    log.info(
        "serving on port %d; %s; tasks %s",
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
    await health_servicer.enter_graceful_shutdown()
    await dispatcher.stop()
    if gateway is not None:
        # Together, so HTTP requests in flight get their answers within the grace.
        await asyncio.gather(gateway.stop(), server.stop(settings.grace))
    else:
        await server.stop(settings.grace)
    await backends.close()


if __name__ == "__main__":
    main()
