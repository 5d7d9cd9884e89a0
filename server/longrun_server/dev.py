"""`python -m longrun_server.dev`: the server and N workers as child processes, for a
local try-out (`make run`). Every backend flag/env var of the server applies
to all of them (they inherit the environment). Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from longrun_core.signing import SigningKeys


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workers",
    type=int,
    default=2,
    envvar="LONGRUN_DEV_WORKERS",
    show_envvar=True,
    show_default=True,
    help="Worker processes to start.",
)
@click.option(
    "--store",
    envvar="LONGRUN_STORE",
    show_envvar=True,
    default=None,
    help="Passed on as LONGRUN_STORE.",
)
@click.option(
    "--queue",
    envvar="LONGRUN_QUEUE",
    show_envvar=True,
    default=None,
    help="Passed on as LONGRUN_QUEUE.",
)
def main(workers: int, store: str | None, queue: str | None) -> None:
    """Start the server and workers; stop them all on Ctrl-C or SIGTERM."""
    env = dict(os.environ)
    if store:
        env["LONGRUN_STORE"] = store
    if queue:
        env["LONGRUN_QUEUE"] = queue
    if env.get("LONGRUN_QUEUE") == "pubsub" and not env.get("LONGRUN_MESSAGE_SIGNING_KEYS"):
        # A try-out: one key for this run, shared by the server and its workers.
        env["LONGRUN_MESSAGE_SIGNING_KEYS"] = SigningKeys.generate("dev")[1]
        click.echo("longrun-dev: signing task messages with a key made for this run", err=True)
    procs = [subprocess.Popen([sys.executable, "-m", "longrun_server"], env=env)]
    procs += [
        subprocess.Popen([sys.executable, "-m", "longrun_worker"], env=env) for _ in range(workers)
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    sys.exit(0 if stopping else 1)


if __name__ == "__main__":
    main()
