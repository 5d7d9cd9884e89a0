"""Client-side helpers for the bounded-data and canonical-error acceptance
tests: a service with the HTTP gateway and the data tasks, plain gRPC
calls with a default client's limits, plain HTTP calls, and writing a
record straight into the service's store (data stored before a limit
existed, or by another version)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.model import OperationRecord
from longrun_core.names import COLLECTION
from longrun_core.store import OperationStore
from tests.acceptance.harness import Service, backend_env

DATA_TASKS = "longrun_worker.builtin_tasks tests.support.data_tasks"
MIB = 1024 * 1024


@dataclass
class DataService:
    service: Service
    backend: str
    http: str

    @property
    def target(self) -> str:
        return self.service.target

    @contextmanager
    def stubs(self) -> Iterator[tuple[jobs_pb2_grpc.JobsStub, operations_pb2_grpc.OperationsStub]]:
        """Stubs on a channel with gRPC's default limits (receives at most 4 MiB)."""
        with grpc.insecure_channel(self.target) as channel:
            yield jobs_pb2_grpc.JobsStub(channel), operations_pb2_grpc.OperationsStub(channel)

    def create(self, task: str, params: Mapping[str, Any] | None = None) -> str:
        struct = struct_pb2.Struct()
        struct.update(dict(params or {}))
        with self.stubs() as (jobs, _):
            op = jobs.CreateJob(jobs_pb2.CreateJobRequest(task=task, params=struct), timeout=30)
        return str(op.name)

    def wait(self, name: str, timeout: float = 60) -> operations_pb2.Operation:
        with self.stubs() as (_, ops):
            op: operations_pb2.Operation = ops.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=name, timeout=duration_pb2.Duration(seconds=int(timeout))
                ),
                timeout=timeout + 5,
            )
        assert op.done, f"{name} not done after {timeout}s\n{self.service.logs()}"
        return op

    def list_pages(self, page_size: int = 0) -> list[operations_pb2.ListOperationsResponse]:
        pages = []
        token = ""
        with self.stubs() as (_, ops):
            while True:
                page = ops.ListOperations(
                    operations_pb2.ListOperationsRequest(
                        name=COLLECTION, page_size=page_size, page_token=token
                    ),
                    timeout=60,
                )
                pages.append(page)
                token = page.next_page_token
                if not token:
                    return pages

    def http_call(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            self.http + path, data=body, method=method, headers=dict(headers or {})
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=60) as reply:
                return reply.status, dict(reply.headers), json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read())

    def http_list(self) -> list[Any]:
        pages = []
        token = ""
        while True:
            status, _, page = self.http_call(
                "/v1/operations" + (f"?pageToken={token}" if token else "")
            )
            assert status == 200, page
            pages.append(page)
            token = page.get("nextPageToken", "")
            if not token:
                return pages

    def store_directly(self, rec: OperationRecord) -> None:
        """Write `rec` into the service's store from this process."""
        asyncio.run(_store(self.backend, self.service.env, rec))


async def _store(backend: str, env: Mapping[str, str], rec: OperationRecord) -> None:
    store: OperationStore
    if backend == "embedded":
        from longrun_core.sqlite.backend import SqliteBackend
        from longrun_core.sqlite.store import SqliteOperationStore

        store = SqliteOperationStore(SqliteBackend(Path(env["LONGRUN_SQLITE_PATH"])))
    else:
        from longrun_core.google.firestore_store import FirestoreOperationStore

        store = FirestoreOperationStore(project=env["GOOGLE_CLOUD_PROJECT"])
    await store.start()
    try:
        await store.create(rec)
    finally:
        await store.close()


@contextmanager
def data_service(
    backend: str,
    workdir: Path,
    *,
    server_args: tuple[str, ...] = (),
    worker_env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Iterator[DataService]:
    """Server (HTTP gateway on) and workers knowing the data tasks."""
    env = backend_env(backend, workdir) | {"LONGRUN_TASK_MODULES": DATA_TASKS}
    svc = Service(workdir, env)
    port_file = workdir / "http-port"
    with svc.kept():
        svc.start_server(
            *server_args,
            extra_env={
                "LONGRUN_HTTP_ADDRESS": "127.0.0.1:0",
                "LONGRUN_HTTP_PORT_FILE": str(port_file),
            },
        )
        for _ in range(workers):
            svc.start_worker(extra_env=worker_env)
        yield DataService(svc, backend, f"http://127.0.0.1:{int(port_file.read_text())}")


def error_info(status_details: Any) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo among a google.rpc.Status's details."""
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status_details.details), status_details
    return info


def rpc_error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    return error_info(status)
