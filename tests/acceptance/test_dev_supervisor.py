"""`longrun-dev` supervises its children (issue 11, finding 1): a killed
worker or server is started again, the service keeps working, and SIGTERM
stops everything."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.harness import ROOT, Service, backend_env, wait_for

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    log: Path
    svc: Service

    def pids(self, name: str) -> list[int]:
        """Every pid `name` was started with, in order."""
        text = self.log.read_text(errors="replace")
        return [int(pid) for child, pid in STARTED.findall(text) if child == name]

    def pid(self, name: str) -> int:
        pids = self.pids(name)
        assert pids, self.log.read_text()
        return pids[-1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    port = _free_port()
    env = backend_env("embedded", tmp_path) | {
        "LONGRUN_ADDRESS": f"127.0.0.1:{port}",
        "LONGRUN_DEV_RESTART_DELAY": "0.2",
    }
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "longrun_server.dev", "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    svc = Service(tmp_path, env, port=port)
    running = Dev(proc, log, svc)
    try:
        wait_for(lambda: "worker started" in log.read_text(), 90, "a worker to start")
        wait_for(lambda: _reachable(svc), 90, "the server to answer")
        yield running
    except BaseException:
        print(log.read_text(errors="replace")[-6000:])
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


def _job_completes(svc: Service) -> None:
    op = svc.call("longrun.v1.Jobs/CreateJob", {"task": "noop", "params": {"x": 1}})
    done = svc.call(
        "google.longrunning.Operations/WaitOperation", {"name": op["name"], "timeout": "60s"}
    )
    assert done["response"]["value"] == {"x": 1}, done


def test_killed_worker_and_server_are_restarted_and_sigterm_stops_all(dev: Dev) -> None:
    wait_for(lambda: len(dev.pids("worker-1")) == 1, 30, "worker-1's pid")
    _job_completes(dev.svc)
    first = dev.pid("worker-1")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(dev.pids("worker-1")) == 2, 60, "worker-1 to be started again")
    assert f"worker-1 (pid {first}) was killed by SIGKILL" in dev.log.read_text()
    assert _alive(dev.pid("worker-1"))
    server = dev.pid("server")
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: len(dev.pids("server")) == 2, 60, "the server to be started again")
    assert dev.proc.poll() is None
    wait_for(lambda: _reachable(dev.svc), 60, "the restarted server to answer")
    _job_completes(dev.svc)
    children = [dev.pid("server"), dev.pid("worker-1"), dev.pid("worker-2")]
    assert all(_alive(pid) for pid in children)
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(timeout=40) == 0
    wait_for(lambda: not any(_alive(pid) for pid in children), 10, "every child to stop")


def _reachable(svc: Service) -> bool:
    return svc.grpcurl("list").code == 0
