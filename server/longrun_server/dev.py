"""`longrun-dev` (`python -m longrun_server.dev`): the server and N workers as
child processes, for a local try-out (`make run`). Every backend flag/env var
of the server applies to all of them (they inherit the environment).

It supervises them: a child that exits (a crash, a kill, a fatal error at
start) is started again after a delay that doubles with each quick failure
(`--restart-delay`, up to `--restart-delay-max`; a child that ran for
`HEALTHY_AFTER` seconds starts over at the first delay). A worker dying never
takes the server down. A child that exits with a usage error (exit 2: a bad
flag) would only fail again, so that stops everything. Ctrl-C or SIGTERM
stops them all (SIGTERM, then SIGKILL after `STOP_TIMEOUT` seconds)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import click

from longrun_core.signing import SigningKeys

log = logging.getLogger("longrun.dev")

#: Exit status of a usage error (click): restarting would not help.
USAGE_ERROR = 2
#: A child that ran this long before it exited is restarted after the first delay again.
HEALTHY_AFTER = 30.0
#: Seconds children get to stop on SIGTERM before they are killed.
STOP_TIMEOUT = 15.0
POLL = 0.2

Spawn = Callable[[Sequence[str], Mapping[str, str]], "subprocess.Popen[bytes]"]


def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), env=dict(env))


@dataclass
class Child:
    """One supervised process: what to run and how it has fared."""

    name: str
    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Exits in a row, each before HEALTHY_AFTER seconds of running.
    quick_failures: int = 0
    #: When (monotonic) to start it again; None while it runs.
    restart_at: float | None = None
    #: How many times it was started again.
    restarts: int = 0


@dataclass
class Supervisor:
    children: list[Child]
    env: Mapping[str, str]
    restart_delay: float = 1.0
    restart_delay_max: float = 30.0
    spawn: Spawn = _spawn
    clock: Callable[[], float] = time.monotonic
    #: Set when a child failed in a way a restart cannot fix (its exit status).
    fatal: int | None = field(default=None, init=False)

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = self.spawn(child.argv, self.env)
        child.started_at = self.clock()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def delay(self, child: Child) -> float:
        """The pause before `child` is started again."""
        return float(
            min(self.restart_delay * 2 ** max(child.quick_failures - 1, 0), self.restart_delay_max)
        )

    def poll(self) -> None:
        """Notice children that exited; start those whose delay is over."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None and child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                child.quick_failures = 1 if ran >= HEALTHY_AFTER else child.quick_failures + 1
                if code == USAGE_ERROR:
                    log.error("%s exited with a usage error (status 2): stopping", child.name)
                    self.fatal = code
                    return
                child.restart_at = now + self.delay(child)
                log.warning(
                    "%s (pid %d) %s after %.1fs; restarting in %.1fs",
                    child.name,
                    child.proc.pid,
                    _describe_exit(code),
                    ran,
                    child.restart_at - now,
                )
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def stop(self) -> None:
        """SIGTERM every running child, then SIGKILL those still running after STOP_TIMEOUT."""
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in running:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workers",
    type=click.IntRange(min=0),
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
@click.option(
    "--restart-delay",
    type=click.FloatRange(min=0.0),
    default=1.0,
    envvar="LONGRUN_DEV_RESTART_DELAY",
    show_envvar=True,
    show_default=True,
    help="Seconds before a child that exited is started again (doubles per quick failure).",
)
@click.option(
    "--restart-delay-max",
    type=click.FloatRange(min=0.0),
    default=30.0,
    envvar="LONGRUN_DEV_RESTART_DELAY_MAX",
    show_envvar=True,
    show_default=True,
    help="Longest delay before a restart.",
)
def main(
    workers: int,
    store: str | None,
    queue: str | None,
    restart_delay: float,
    restart_delay_max: float,
) -> None:
    """Start the server and workers, restart any that exits, stop them all on
    Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    env = dict(os.environ)
    if store:
        env["LONGRUN_STORE"] = store
    if queue:
        env["LONGRUN_QUEUE"] = queue
    if env.get("LONGRUN_QUEUE") == "pubsub" and not env.get("LONGRUN_MESSAGE_SIGNING_KEYS"):
        # A try-out: one key for this run, shared by the server and its workers.
        env["LONGRUN_MESSAGE_SIGNING_KEYS"] = SigningKeys.generate("dev")[1]
        click.echo("longrun-dev: signing task messages with a key made for this run", err=True)
    children = [Child("server", (sys.executable, "-m", "longrun_server"))]
    children += [
        Child(f"worker-{i + 1}", (sys.executable, "-m", "longrun_worker")) for i in range(workers)
    ]
    supervisor = Supervisor(
        children, env, restart_delay=restart_delay, restart_delay_max=restart_delay_max
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.start()
    try:
        while not stopping and supervisor.fatal is None:
            time.sleep(POLL)
            if not stopping:
                supervisor.poll()
    finally:
        log.info("stopping %d processes", len(children))
        supervisor.stop()
    sys.exit(supervisor.fatal or 0)


if __name__ == "__main__":
    main()
