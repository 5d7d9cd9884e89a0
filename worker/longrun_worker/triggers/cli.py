"""`longrun-trigger`: run the triggers of a TOML file (docs/triggers.md).

A process of its own, beside the server and the workers: it pulls each
trigger's Pub/Sub subscription and creates operations with Jobs.CreateJob
on the server at --target, with the credentials of any client
(LONGRUN_TOKEN, LONGRUN_API_KEY, LONGRUN_ID_TOKEN_AUDIENCE, LONGRUN_TLS,
LONGRUN_CA_FILE, LONGRUN_CLIENT_CERT/KEY), so authentication, roles,
quotas and per-project request ids apply to events as to any caller.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from longrun_client.credentials import ChannelSecurity, CredentialsError
from longrun_core.cli_options import run_main, setup_logging
from longrun_core.errors import StartupError
from longrun_worker.triggers.config import TriggerConfigError, load_triggers
from longrun_worker.triggers.folder import FolderSubscription
from longrun_worker.triggers.runner import (
    MAX_ACK_DEADLINE,
    GrpcJobs,
    PubSubSubscription,
    RunnerSettings,
    Subscription,
    run_triggers,
)

log = logging.getLogger("longrun.trigger")
_R = RunnerSettings()
F = TypeVar("F", bound=Callable[..., Any])


def _opt(name: str, env: str, **kw: Any) -> Callable[[F], F]:
    option: Callable[[F], F] = click.option(
        name, envvar=env, show_envvar=True, show_default=True, **kw
    )
    return option


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_opt(
    "--triggers-file",
    "LONGRUN_TRIGGERS_FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="TOML file of [[trigger]] tables.",
)
@_opt("--target", "LONGRUN_TARGET", default="localhost:50051", help="The longrun server.")
@_opt(
    "--stats-file",
    "LONGRUN_TRIGGER_STATS_FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the counters of every trigger here as JSON after each batch.",
)
@_opt(
    "--stats-interval",
    "LONGRUN_TRIGGER_STATS_INTERVAL",
    type=click.FloatRange(min=0),
    default=_R.stats_interval,
    help="Seconds between counter lines in the log (0: at exit only).",
)
@_opt(
    "--max-messages",
    "LONGRUN_TRIGGER_MAX_MESSAGES",
    type=click.IntRange(1, 1000),
    default=_R.max_messages,
    help="Messages per pull.",
)
@_opt(
    "--pull-wait",
    "LONGRUN_TRIGGER_PULL_WAIT",
    type=click.FloatRange(min=0.1, max=600),
    default=_R.pull_wait,
    help="Seconds one pull waits for messages.",
)
@_opt(
    "--create-timeout",
    "LONGRUN_TRIGGER_CREATE_TIMEOUT",
    type=click.FloatRange(min=0.1, max=600),
    default=_R.create_timeout,
    help="Seconds a CreateJob call may take.",
)
@_opt(
    "--retry-delay",
    "LONGRUN_TRIGGER_RETRY_DELAY",
    type=click.IntRange(0, MAX_ACK_DEADLINE),
    default=_R.retry_delay,
    help="Seconds before an event whose CreateJob failed for now is redelivered.",
)
@_opt("--log-level", "LONGRUN_LOG_LEVEL", default="INFO")
def main(**kw: Any) -> None:
    """Turn Pub/Sub messages into operations, one per event."""
    setup_logging(kw["log_level"])
    try:
        triggers = load_triggers(kw["triggers_file"])
        security = ChannelSecurity.from_env()
    except (TriggerConfigError, CredentialsError) as exc:
        raise click.UsageError(str(exc)) from exc
    settings = RunnerSettings(
        max_messages=kw["max_messages"],
        pull_wait=kw["pull_wait"],
        create_timeout=kw["create_timeout"],
        retry_delay=kw["retry_delay"],
        stats_interval=kw["stats_interval"],
    )
    run_main(_serve(triggers, security, kw["target"], settings, kw["stats_file"]))


async def _serve(
    triggers: Any,
    security: ChannelSecurity,
    target: str,
    settings: RunnerSettings,
    stats_file: Path | None,
) -> None:
    subscriber = publisher = None
    if any(t.subscription for t in triggers):
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
    subscriptions: dict[str, Subscription] = {
        t.name: (
            PubSubSubscription(t, subscriber, publisher)
            if t.subscription
            else FolderSubscription(t.name, t.folder or Path("."), t.settle)
        )
        for t in triggers
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        channel = security.aio_channel(target)
    except CredentialsError as exc:
        raise StartupError(str(exc)) from exc
    log.info(
        "longrun-trigger: %d trigger(s) -> %s: %s",
        len(triggers),
        target,
        ", ".join(f"{t.name} ({t.source} -> {t.task})" for t in triggers),
    )
    try:
        async with channel:
            await run_triggers(
                triggers,
                subscriptions,
                GrpcJobs(channel, settings.create_timeout),
                settings,
                stats_file,
                stop,
            )
    finally:
        if subscriber is not None:
            subscriber.close()
        if publisher is not None:
            publisher.stop()
