"""`longrun-worker`: pull task messages and run them.

`longrun-worker --push`: serve a Pub/Sub push endpoint instead (see
longrun_worker.push and docs/push.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import click

from longrun_core.backends import build_backends
from longrun_core.cli_options import (
    METRICS_OFF,
    TRACING_OFF,
    MetricsSettings,
    backend_options,
    backend_settings,
    metrics_settings,
    run_main,
    setup_logging,
    task_registry,
    tracing_settings,
)
from longrun_core.clock import CLOCK_SKEW_VAR, clock_from_env
from longrun_core.errors import StartupError
from longrun_core.failpoints import Failpoints
from longrun_core.observability.tracing import TracingSettings, build_tracer_provider
from longrun_core.packing import MAX_RESULT_BYTES, MIN_RESULT_BYTES
from longrun_core.queue_stores import queue_store_for
from longrun_core.settings import BackendSettings
from longrun_core.store import OperationStore
from longrun_core.tasks import TaskRegistry
from longrun_worker.metrics import worker_observability
from longrun_worker.push_cli import push_config, push_options, serve_push
from longrun_worker.queue_view import QueueView
from longrun_worker.runtime import Worker, WorkerSettings
from longrun_worker.tracing import AttemptTracer

log = logging.getLogger("longrun.worker")
_W = WorkerSettings()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--concurrency",
    type=int,
    default=_W.concurrency,
    envvar="LONGRUN_CONCURRENCY",
    show_envvar=True,
    show_default=True,
    help="Tasks run at once.",
)
@click.option(
    "--lease",
    type=float,
    default=_W.lease,
    envvar="LONGRUN_LEASE",
    show_envvar=True,
    show_default=True,
    help="Seconds a claim lasts without a heartbeat.",
)
@click.option(
    "--heartbeat",
    type=float,
    default=_W.heartbeat,
    envvar="LONGRUN_HEARTBEAT",
    show_envvar=True,
    show_default=True,
    help="Seconds between lease renewals.",
)
@click.option(
    "--shutdown-grace",
    type=float,
    default=_W.shutdown_grace,
    envvar="LONGRUN_SHUTDOWN_GRACE",
    show_envvar=True,
    show_default=True,
    help="On SIGTERM, seconds in-flight tasks may finish before their leases are released.",
)
@click.option(
    "--kill-grace",
    type=click.FloatRange(min=0),
    default=_W.kill_grace,
    envvar="LONGRUN_KILL_GRACE",
    show_envvar=True,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a task process is stopped "
    "(cancelled, past its deadline, or at shutdown).",
)
@click.option(
    "--max-releases",
    type=click.IntRange(min=0),
    default=_W.max_releases,
    envvar="LONGRUN_MAX_RELEASES",
    show_envvar=True,
    show_default=True,
    help="Attempts a shutdown may give back to one operation; past that an "
    "interrupted attempt counts against its max_attempts.",
)
@click.option(
    "--max-clock-skew",
    type=click.FloatRange(min=0),
    default=_W.max_clock_skew,
    envvar="LONGRUN_MAX_CLOCK_SKEW",
    show_envvar=True,
    show_default=True,
    help="Log a warning when this machine's clock is this many seconds off the store's.",
)
@click.option(
    "--retention",
    type=float,
    default=_W.retention,
    envvar="LONGRUN_RETENTION",
    show_envvar=True,
    show_default=True,
)
@click.option(
    "--max-result-bytes",
    type=click.IntRange(min=MIN_RESULT_BYTES, max=MAX_RESULT_BYTES),
    default=_W.max_result_bytes,
    envvar="LONGRUN_MAX_RESULT_BYTES",
    show_envvar=True,
    show_default=True,
    help="Largest serialized task result or error stored; a larger one fails the operation "
    "with RESULT_TOO_LARGE. Keep it below the server's --max-send-message-bytes.",
)
@click.option(
    "--debug-errors/--no-debug-errors",
    default=_W.debug_errors,
    envvar="LONGRUN_DEBUG_ERRORS",
    show_envvar=True,
    show_default=True,
    help="Put a DebugInfo (the traceback, with package-relative paths) into a failed "
    "task's error. Every caller who may read the operation sees it: for development.",
)
@click.option(
    "--queue-refresh",
    type=click.FloatRange(min=0.05, max=60.0),
    default=_W.queue_refresh,
    envvar="LONGRUN_QUEUE_REFRESH",
    show_envvar=True,
    show_default=True,
    help="Seconds between reads of the queues' configuration: a paused queue starts no new "
    "attempt on this worker from about this long after the pause.",
)
@click.option(
    "--limit-retry",
    type=click.FloatRange(min=0.01, max=60.0),
    default=_W.limit_retry_max,
    envvar="LONGRUN_LIMIT_RETRY",
    show_envvar=True,
    show_default=True,
    help="A job refused for its queue's concurrency limit is published again after a random "
    "delay of up to this many seconds (at least a fifth of it).",
)
@click.option(
    "--rate-reserve-max",
    type=click.FloatRange(min=1.0, max=3600.0),
    default=_W.rate_reserve_max,
    envvar="LONGRUN_RATE_RESERVE_MAX",
    show_envvar=True,
    show_default=True,
    help="Longest a claim of a rate-limited queue reserves its token ahead (seconds); past "
    "it the job waits unreserved and is tried again later.",
)
@click.option(
    "--max-queues",
    type=click.IntRange(min=1, max=1_000_000),
    default=_W.max_queues,
    envvar="LONGRUN_MAX_QUEUES",
    show_envvar=True,
    show_default=True,
    help="Most configured queues (all projects) the worker reads each refresh.",
)
@click.option(
    "--burst",
    is_flag=True,
    envvar="LONGRUN_BURST",
    show_envvar=True,
    help="Exit once the queue is empty (tests, batch jobs).",
)
@backend_options
@push_options
def main(**kw: Any) -> None:
    """Run tasks from the queue and record their outcomes."""
    log_format = kw.pop("log_format")
    setup_logging(kw.pop("log_level"), log_format, kw["project"])
    os.environ["LONGRUN_LOG_FORMAT"] = log_format  # task processes log the same way
    metrics = metrics_settings(kw)
    tracing = tracing_settings(kw)
    backends = backend_settings(kw)
    registry = task_registry(kw)
    push = push_config(kw)
    try:
        settings = WorkerSettings(
            concurrency=kw["concurrency"],
            lease=kw["lease"],
            heartbeat=kw["heartbeat"],
            shutdown_grace=kw["shutdown_grace"],
            retention=kw["retention"],
            max_result_bytes=kw["max_result_bytes"],
            outage_retry_max=backends.outage_retry_max,
            kill_grace=kw["kill_grace"],
            max_releases=kw["max_releases"],
            max_clock_skew=kw["max_clock_skew"],
            debug_errors=kw["debug_errors"],
            queue_refresh=kw["queue_refresh"],
            max_queues=kw["max_queues"],
            limit_retry_min=kw["limit_retry"] / 5,
            limit_retry_max=kw["limit_retry"],
            rate_reserve_max=kw["rate_reserve_max"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if push is not None:
        if kw["burst"]:
            raise click.UsageError("--burst does not apply to --push")
        if metrics.enabled or tracing.enabled:
            raise click.UsageError(
                "--metrics-address and --trace-exporter do not apply to --push (not yet)"
            )
        run_main(serve_push(settings, backends, registry, push))
        return
    run_main(work(settings, backends, registry, kw["burst"], metrics, tracing))


async def work(
    settings: WorkerSettings,
    backend_cfg: BackendSettings,
    registry: TaskRegistry,
    burst: bool,
    metrics: MetricsSettings = METRICS_OFF,
    tracing: TracingSettings = TRACING_OFF,
) -> None:
    clock = clock_from_env()
    if os.environ.get(CLOCK_SKEW_VAR):
        log.warning("%s is set: this process's clock is skewed (a test hook)", CLOCK_SKEW_VAR)
    backends = build_backends(backend_cfg, clock)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if not await backends.start_patiently(stopping):
        await backends.close()
        return
    worker_metrics, endpoint = None, None
    if metrics.enabled:
        worker_metrics, endpoint = worker_observability(
            metrics.address,
            backends.store,
            backends.queue,
            port_file=metrics.port_file,
            max_queues=metrics.max_queues,
        )
        try:
            await endpoint.start()
        except OSError as exc:
            await backends.close()
            raise StartupError(f"cannot serve metrics on {metrics.address}: {exc}") from exc
    tracer_provider = build_tracer_provider(tracing, "longrun-worker") if tracing.enabled else None
    try:
        worker = Worker(
            store=backends.store,
            queue=backends.queue,
            registry=registry,
            settings=settings,
            clock=clock,
            failpoints=Failpoints.from_env(),
            rejections=backends.rejections,
            queues=queue_view(settings, backends.store),
            metrics=worker_metrics,
            tracer=AttemptTracer(tracer_provider),
        )
    except ValueError as exc:  # a task that cannot run as declared
        if endpoint is not None:
            await endpoint.stop()
        await backends.close()
        raise click.UsageError(str(exc)) from exc

    def shut_down() -> None:
        if not worker.stopping:
            _exit_after(settings.shutdown_grace + settings.shutdown_bound + CLOSE_TIMEOUT)
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shut_down)
    log.info(
        "worker %s: %s; tasks %s, concurrency %d",
        worker.id,
        backend_cfg.describe(),
        ",".join(registry.names),
        settings.concurrency,
    )
    try:
        await worker.run(burst=burst)
    finally:
        if endpoint is not None:
            await endpoint.stop()
        if tracer_provider is not None:
            tracer_provider.shutdown()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await backends.close()
        except TimeoutError:
            log.warning("the store and queue did not close within %gs", CLOSE_TIMEOUT)


def queue_view(settings: WorkerSettings, store: OperationStore) -> QueueView:
    """The worker's view of the queues stored beside `store`."""
    return QueueView(
        queue_store_for(store), interval=settings.queue_refresh, limit=settings.max_queues
    )


#: Longest the store and queue may take to close at exit.
CLOSE_TIMEOUT = 5.0
#: Exit status when shutdown overran its bound and the process ended itself.
OVERRAN = 70


def _exit_after(seconds: float) -> None:
    """The last resort behind the shutdown bound: end the process after
    `seconds` even if something (a hung close, a thread the interpreter waits
    for at exit) still holds it."""

    def overran() -> None:
        log.error("shutdown took over %gs; exiting now", seconds)
        logging.shutdown()
        os._exit(OVERRAN)

    timer = threading.Timer(seconds, overran)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    main()
