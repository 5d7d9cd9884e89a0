"""`longrun-worker --push`: the push-endpoint mode of the worker CLI
(options, settings, and the serving loop; see longrun_worker.push)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from longrun_core.queue_stores import queue_store_for
from longrun_core.settings import BackendSettings
from longrun_core.tasks import TaskRegistry
from longrun_worker.push_config import (
    AUTH_MODES,
    GOOGLE_CERTS_URL,
    MAX_CLOCK_SKEW,
    MAX_REPLAY_CACHE,
    MAX_TOKEN_LIFETIME_LIMIT,
    AuthSettings,
    PushSettings,
)
from longrun_worker.queue_view import QueueView
from longrun_worker.runtime import WorkerSettings

log = logging.getLogger("longrun.push")
F = TypeVar("F", bound=Callable[..., Any])
_P = PushSettings()


@dataclass(frozen=True)
class PushConfig:
    host: str
    port: int
    settings: PushSettings
    port_file: str | None = None


def default_http_address(env: dict[str, str] | None = None) -> str:
    """0.0.0.0:$PORT (Cloud Run sets PORT), else 0.0.0.0:8080."""
    e = os.environ if env is None else env
    return f"0.0.0.0:{e.get('PORT') or 8080}"


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(
            f"expected HOST:PORT, got {address!r}", param_hint="--http-address"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def push_options(fn: F) -> F:
    options = [
        click.option(
            "--push",
            is_flag=True,
            envvar="LONGRUN_PUSH",
            show_envvar=True,
            help="Serve a Pub/Sub push endpoint (Cloud Run) instead of pulling from the queue.",
        ),
        click.option(
            "--http-address",
            default=None,
            envvar="LONGRUN_PUSH_ADDRESS",
            show_envvar=True,
            help="HOST:PORT of the push endpoint [default: 0.0.0.0:$PORT, else 0.0.0.0:8080].",
        ),
        click.option(
            "--push-path",
            default=_P.path,
            envvar="LONGRUN_PUSH_PATH",
            show_envvar=True,
            show_default=True,
            help="URL path Pub/Sub pushes to.",
        ),
        click.option(
            "--push-auth",
            type=click.Choice(AUTH_MODES),
            default=_P.auth.mode,
            envvar="LONGRUN_PUSH_AUTH",
            show_envvar=True,
            show_default=True,
            help="oidc: verify the Google-signed token of the push subscription; "
            "none: no check (emulator only).",
        ),
        click.option(
            "--push-audience",
            default=None,
            envvar="LONGRUN_PUSH_AUDIENCE",
            show_envvar=True,
            help="Expected token audience: the push subscription's --push-auth-token-audience "
            "(by default its push endpoint URL). Required with --push-auth oidc; never taken "
            "from the request.",
        ),
        click.option(
            "--push-allowed-sa",
            "push_allowed_sa",
            multiple=True,
            envvar="LONGRUN_PUSH_ALLOWED_SA",
            show_envvar=True,
            help="Service-account email allowed to push (the subscription's "
            "--push-auth-service-account); repeat for several (env: space-separated). "
            "Required with --push-auth oidc.",
        ),
        click.option(
            "--push-certs-url",
            default=GOOGLE_CERTS_URL,
            envvar="LONGRUN_PUSH_CERTS_URL",
            show_envvar=True,
            show_default=True,
            help="Where the token-signing keys are fetched: Google's {key id: PEM} "
            "certificates, or another OIDC issuer's JWK set (jwks_uri).",
        ),
        click.option(
            "--push-issuer",
            "push_issuers",
            multiple=True,
            envvar="LONGRUN_PUSH_ISSUERS",
            show_envvar=True,
            help="Accepted token issuer (iss); repeat for several (env: space-separated) "
            "[default: accounts.google.com, https://accounts.google.com].",
        ),
        click.option(
            "--push-max-token-lifetime",
            type=click.IntRange(60, MAX_TOKEN_LIFETIME_LIMIT),
            default=_P.auth.max_token_lifetime,
            envvar="LONGRUN_PUSH_MAX_TOKEN_LIFETIME",
            show_envvar=True,
            show_default=True,
            help="Longest token lifetime accepted (exp - iat, and exp - now), in seconds.",
        ),
        click.option(
            "--push-clock-skew",
            type=click.IntRange(0, MAX_CLOCK_SKEW),
            default=_P.auth.clock_skew,
            envvar="LONGRUN_PUSH_CLOCK_SKEW",
            show_envvar=True,
            show_default=True,
            help="Seconds of slack on the token's iat, exp and lifetime.",
        ),
        click.option(
            "--push-replay-cache",
            type=click.IntRange(0, MAX_REPLAY_CACHE),
            default=_P.replay_cache,
            envvar="LONGRUN_PUSH_REPLAY_CACHE",
            show_envvar=True,
            show_default=True,
            help="Settled message ids remembered; a push of one is acked without running.",
        ),
        click.option(
            "--push-port-file",
            default=None,
            type=click.Path(dir_okay=False),
            envvar="LONGRUN_PUSH_PORT_FILE",
            show_envvar=True,
            help="Write the port the push endpoint listens on to this file (tests).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def push_config(kw: dict[str, Any]) -> PushConfig | None:
    """Pop the push options from `kw`; None unless --push was given."""
    enabled = kw.pop("push")
    address = kw.pop("http_address") or default_http_address()
    path = kw.pop("push_path")
    issuers = tuple(kw.pop("push_issuers"))
    auth = AuthSettings(
        mode=kw.pop("push_auth"),
        audience=kw.pop("push_audience") or None,
        allowed_emails=tuple(kw.pop("push_allowed_sa")),
        certs_url=kw.pop("push_certs_url"),
        issuers=issuers or _P.auth.issuers,
        max_token_lifetime=kw.pop("push_max_token_lifetime"),
        clock_skew=kw.pop("push_clock_skew"),
    )
    settings = PushSettings(path=path, auth=auth, replay_cache=kw.pop("push_replay_cache"))
    port_file = kw.pop("push_port_file")
    if not enabled:
        return None
    if not path.startswith("/"):
        raise click.BadParameter("must start with /", param_hint="--push-path")
    try:
        settings.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    host, port = parse_address(address)
    return PushConfig(host, port, settings, port_file)


async def serve_push(
    settings: WorkerSettings,
    backend_cfg: BackendSettings,
    registry: TaskRegistry,
    cfg: PushConfig,
) -> None:
    # Imported here: the pull worker never loads aiohttp.
    from longrun_core.backends import build_backends
    from longrun_core.clock import clock_from_env
    from longrun_core.errors import StartupError
    from longrun_core.failpoints import Failpoints
    from longrun_core.process_limits import limit_accept_error_logs, raise_open_files_limit
    from longrun_core.sqlite.queue import SqliteTaskQueue
    from longrun_worker.push import PubSubDeadLetters, PushEndpoint, serve
    from longrun_worker.runtime import Worker

    raise_open_files_limit()
    limit_accept_error_logs()
    clock = clock_from_env()
    backends = build_backends(backend_cfg, clock)
    # Only the store: the Pub/Sub queue's start would create the pull
    # subscription, which a push deployment must not have (see docs/push.md).
    # A SQLite queue is started: it holds the database's signing key.
    await backends.store.start()
    if isinstance(backends.queue, SqliteTaskQueue):
        await backends.queue.start()
    signing = backends.queue.signing_keys
    if signing is None:  # unreachable: both queues have keys once started
        raise StartupError("the push endpoint has no message signing keys")
    dead_letters = None
    if backend_cfg.queue == "pubsub":
        dead_letters = PubSubDeadLetters(
            f"projects/{backend_cfg.project}/topics/{backend_cfg.pubsub_dead_letter_topic}"
        )
    try:
        worker = Worker(
            store=backends.store,
            queue=backends.queue,  # unused: messages arrive over HTTP
            registry=registry,
            settings=settings,
            clock=clock,
            failpoints=Failpoints.from_env(),
            rejections=backends.rejections,
            queues=QueueView(
                queue_store_for(backends.store),
                interval=settings.queue_refresh,
                limit=settings.max_queues,
            ),
        )
    except ValueError as exc:  # a task that cannot run as declared
        await backends.close()
        raise click.UsageError(str(exc)) from exc
    endpoint = PushEndpoint(worker, cfg.settings, signing=signing, dead_letters=dead_letters)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "push worker %s: %s; tasks %s, auth %s",
        worker.id,
        backend_cfg.describe(),
        ",".join(registry.names),
        cfg.settings.auth.mode,
    )
    assert worker.queues is not None
    await worker.queues.first_refresh(settings.receive_timeout)
    refresh = asyncio.create_task(worker.queues.run(), name="queue-view")
    try:
        await serve(endpoint, cfg.host, cfg.port, stop=stop, port_file=cfg.port_file)
    finally:
        refresh.cancel()
        worker.close()
        if dead_letters is not None:
            await dead_letters.close()
        await backends.close()
