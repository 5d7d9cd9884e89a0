"""longrun-dev's supervision: restart with doubling delays, reset after a
healthy run, stop on a usage error (fake processes and clock)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import cast

import pytest

from longrun_server.dev import HEALTHY_AFTER, Child, Supervisor


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> tuple[Supervisor, list[FakeProc], Clock]:
    spawned: list[FakeProc] = []
    clock = Clock()

    def spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        proc = FakeProc(100 + len(spawned))
        spawned.append(proc)
        return cast("subprocess.Popen[bytes]", proc)

    children = [Child("server", ("server",)), Child("worker-1", ("worker",))]
    sup = Supervisor(
        children, {}, restart_delay=1.0, restart_delay_max=8.0, spawn=spawn, clock=clock
    )
    sup.start()
    return sup, spawned, clock


def test_a_dead_worker_is_restarted_with_doubling_delays(
    world: tuple[Supervisor, list[FakeProc], Clock],
) -> None:
    sup, spawned, clock = world
    server, worker = sup.children
    delays = []
    for _ in range(5):
        assert worker.proc is not None
        cast(FakeProc, worker.proc).returncode = -9
        sup.poll()
        assert worker.restart_at is not None
        delays.append(worker.restart_at - clock.now)
        clock.now = worker.restart_at - 0.01
        sup.poll()
        assert worker.restart_at is not None  # not before its time
        clock.now = worker.restart_at
        sup.poll()
        assert worker.restart_at is None and worker.proc is cast(object, spawned[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert worker.restarts == 5
    assert (
        server.proc is cast(object, spawned[0]) and server.restarts == 0
    )  # the server was left alone
    assert sup.fatal is None


def test_a_child_that_ran_long_enough_starts_over_at_the_first_delay(
    world: tuple[Supervisor, list[FakeProc], Clock],
) -> None:
    sup, _, clock = world
    server = sup.children[0]
    for _ in range(3):  # three quick failures: 1, 2, 4 s
        cast(FakeProc, server.proc).returncode = 1
        sup.poll()
        assert server.restart_at is not None
        clock.now = server.restart_at
        sup.poll()
    clock.now += HEALTHY_AFTER
    cast(FakeProc, server.proc).returncode = 1
    sup.poll()
    assert server.restart_at == clock.now + 1.0


def test_a_usage_error_stops_everything(world: tuple[Supervisor, list[FakeProc], Clock]) -> None:
    sup, spawned, _ = world
    cast(FakeProc, sup.children[1].proc).returncode = 2
    sup.poll()
    assert sup.fatal == 2
    assert len(spawned) == 2  # nothing restarted
