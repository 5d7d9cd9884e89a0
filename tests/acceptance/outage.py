"""Helpers for storage-fault tests on real processes: a stream of CreateJob
calls that records what clients saw, the server's health, a small tmpfs."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import Service, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Seen:
    """One failed call as the client saw it."""

    code: grpc.StatusCode
    reason: str
    retry_delay: float | None
    message: str


def rich_error(error: grpc.RpcError) -> Seen:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, delay = "", None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return Seen(error.code(), reason, delay, error.details() or "")


@dataclass
class JobStream:
    """Creates `task` jobs back to back from a thread until stopped; keeps
    the names of the created ones and every error a client saw."""

    target: str
    task: str = "record"
    params: dict[str, float] = field(default_factory=lambda: {"seconds": 0.05})
    created: list[str] = field(default_factory=list)
    errors: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> JobStream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = jobs_pb2_grpc.JobsStub(channel)
            while not self._stop.is_set():
                request = jobs_pb2.CreateJobRequest(task=self.task)
                request.params.update(self.params)
                try:
                    self.created.append(stub.CreateJob(request, timeout=30).name)
                except grpc.RpcError as exc:
                    self.errors.append(rich_error(exc))
                    self._stop.wait(0.05)

    def codes(self) -> Counter[str]:
        return Counter(e.code.name for e in self.errors)


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(response.status)


def wait_health(svc: Service, status: int, timeout: float = 60) -> None:
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    wait_for(lambda: health(svc.target) == status, timeout, f"health {name}")


def get_operation(target: str, name: str) -> operations_pb2.Operation:
    with grpc.insecure_channel(target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        return stub.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=30)


def states(target: str, names: list[str]) -> Counter[str]:
    """How many of `names` are in each state (JobMetadata.state)."""
    out: Counter[str] = Counter()
    with grpc.insecure_channel(target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        for name in names:
            op = stub.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=30)
            meta = jobs_pb2.JobMetadata()
            op.metadata.Unpack(meta)
            out[jobs_pb2.JobMetadata.State.Name(meta.state)] += 1
    return out


def wait_workers_started(svc: Service, timeout: float = 60) -> None:
    """Until every worker logged that it started (its store is open)."""
    logs = [svc.workdir / f"worker-{i}.log" for i in range(len(svc.workers))]
    wait_for(
        lambda: all(p.exists() and "worker started" in p.read_text() for p in logs),
        timeout,
        "the workers to start",
    )


def alive(svc: Service) -> list[str]:
    """Problems: every process the service started should still run."""
    return [
        f"pid {p.pid} ({' '.join(map(str, p.args[2:4]))}) exited with {p.returncode}"  # type: ignore[index]
        for p in svc.procs
        if p.poll() is not None
    ]


def executions(record_dir: Path) -> Counter[str]:
    """Executions per operation id that the `record` task logged."""
    return Counter(
        {p.name: len(p.read_text().splitlines()) for p in record_dir.iterdir() if p.is_file()}
    )
