"""clients.Client and clients.AsyncClient against the real server and worker.

`running_service` and `BACKENDS` are shared with the other client acceptance
modules (each starts one service for all its tests)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from longrun.v1 import jobs_pb2
from longrun_client import (
    AsyncClient,
    Client,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    NotFound,
)
from tests.acceptance.harness import Service, backend_env

State = jobs_pb2.JobMetadata.State

BACKENDS = ["embedded", pytest.param("google", marks=pytest.mark.google)]

#: Server and workers that also know the example `convert` task and service.
EXAMPLE_ENV = {
    "LONGRUN_TASK_MODULES": "longrun_worker.builtin_tasks examples.convert.tasks",
    "LONGRUN_SERVICE_MODULES": "examples.convert.service",
}


def require_backend(backend: str) -> None:
    if backend == "google":
        from tests.contract.google_backends import require_emulators

        require_emulators()


@contextmanager
def running_service(
    backend: str, workdir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """Server + one worker for a whole test module."""
    require_backend(backend)
    svc = Service(workdir, backend_env(backend, workdir) | dict(extra_env or {}))
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        yield svc


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(request.param, tmp_path_factory.mktemp("clients")) as svc:
        yield svc


@pytest.fixture
def client(shared: Service) -> Iterator[Client]:
    with Client(shared.target) as c:
        yield c


def test_submit_reports_progress_and_result(client: Client) -> None:
    future = client.submit("sleep", {"worktime": 2})
    assert future.name.startswith("projects/default/operations/")
    seen: list[tuple[int, int]] = []
    future.add_progress_callback(lambda md: seen.append((md.state, md.progress_percent)))
    assert future.result(timeout=30) == {"slept_seconds": 2}
    assert any(state == State.RUNNING and 0 < pct < 100 for state, pct in seen), seen
    assert seen[-1] == (State.SUCCEEDED, 100)
    assert future.metadata.state == State.SUCCEEDED
    assert future.done() and not future.cancelled()


def test_result_arrives_without_a_polling_delay(client: Client) -> None:
    params = {"a": 1, "b": [True, None, "x"], "c": {"d": 2.5}}
    future = client.submit("noop", params, labels={"suite": "clients"})
    result = future.result(timeout=30)
    received = time.time()
    assert result == {"a": 1, "b": [True, None, "x"], "c": {"d": 2.5}}
    assert params == {"a": 1, "b": [True, None, "x"], "c": {"d": 2.5}}
    ended = future.metadata.end_time.ToDatetime(tzinfo=UTC).timestamp()
    # WaitOperation returns when the operation finishes: no poll interval to sit out.
    assert received - ended < 1.0, f"result came {received - ended:.2f}s after the end"
    assert future.metadata.labels == {"suite": "clients"}


def test_typed_response(client: Client) -> None:
    future = client.submit("noop", {"k": "v"}, response_type=struct_pb2.Struct)
    result = future.result(timeout=30)
    assert isinstance(result, struct_pb2.Struct)
    assert result["k"] == "v"


def test_failed_job_raises_job_failed_with_status(client: Client) -> None:
    future = client.submit("fail", {"permanent": True, "message": "nope"})
    with pytest.raises(JobFailed) as caught:
        future.result(timeout=30)
    error = caught.value
    assert "nope" in error.message
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.reason == "TASK_FAILED"
    assert error.error_info is not None and error.error_info.domain == "longrun.dev"
    assert error.debug_info is None  # only from a worker started with --debug-errors
    assert future.metadata.state == State.FAILED


def test_cancel_a_running_job(client: Client) -> None:
    future = client.submit("sleep", {"worktime": 60})
    running = threading.Event()
    future.add_progress_callback(lambda md: running.set() if md.state == State.RUNNING else None)
    assert running.wait(30), "the job never ran"
    assert future.cancel() is True
    with pytest.raises(JobCancelled) as caught:
        future.result(timeout=15)
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert future.cancelled()
    assert future.metadata.state == State.CANCELLED


def test_request_id_makes_submit_idempotent(client: Client) -> None:
    request_id = str(uuid.uuid4())
    first = client.submit("noop", {"n": 1}, request_id=request_id)
    again = client.submit("noop", {"n": 1}, request_id=request_id)
    assert again.name == first.name


def test_submit_many_creates_a_batch_in_one_call_and_each_job_runs(client: Client) -> None:
    project = f"batch-{uuid.uuid4().hex[:8]}"
    futures = client.submit_many("noop", [{"n": i} for i in range(5)], project=project)
    assert len({f.name for f in futures}) == 5
    assert all(f.name.startswith(f"projects/{project}/operations/") for f in futures)
    assert [f.result(timeout=30) for f in futures] == [{"n": i} for i in range(5)]
    # One bad item: the whole batch is refused, naming it, and nothing is stored.
    with pytest.raises(InvalidArgument) as info:
        client.submit_many("noop", [{"n": 9}, {"n": float("nan")}], project=f"{project}-bad")
    assert info.value.error_info is not None
    assert info.value.error_info.metadata["index"] == "1"
    assert list(client.list(project=f"{project}-bad")) == []


def test_get_list_wait_delete(client: Client) -> None:
    run = uuid.uuid4().hex[:12]
    names = {client.submit("noop", {"i": i}, labels={"run": run}).name for i in range(3)}
    for name in names:
        assert client.wait(name, timeout=30).done
    listed = list(client.list(filter=f'metadata.labels.run = "{run}"', page_size=1))
    assert {op.name for op in listed} == names  # three pages of one
    assert all(op.done for op in listed)

    gone = sorted(names)[0]
    client.delete(gone)
    with pytest.raises(NotFound) as caught:
        client.get(gone)
    assert caught.value.reason == "OPERATION_NOT_FOUND"
    assert {op.name for op in client.list(filter=f"labels.run = {run!r}")} == names - {gone}

    slow = client.submit("sleep", {"worktime": 30})
    started = time.monotonic()
    latest = client.wait(slow.name, timeout=0.5)
    assert not latest.done and latest.name == slow.name
    assert time.monotonic() - started < 5
    client.cancel(slow.name)
    assert client.get(slow.name).name == slow.name


def test_rpc_errors_carry_reason(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.submit("no-such-task")
    assert caught.value.reason == "TASK_UNKNOWN"
    assert "registered tasks" in caught.value.message
    with pytest.raises(InvalidArgument) as malformed:
        client.get("not-an-operation")
    assert malformed.value.reason == "NAME_MALFORMED"
    with pytest.raises(InvalidArgument):
        client.submit("sleep", {"worktime": "long"})


async def test_async_client(shared: Service) -> None:
    async with AsyncClient(shared.target) as client:
        future = await client.submit("sleep", {"worktime": 1}, labels={"suite": "aio"})
        seen: list[int] = []
        future.add_progress_callback(lambda md: seen.append(md.progress_percent))
        assert await future.result(timeout=30) == {"slept_seconds": 1}
        assert seen and seen[-1] == 100

        typed = await client.submit("noop", {"x": 1}, response_type=struct_pb2.Struct)
        assert (await typed.result(timeout=30))["x"] == 1

        failing = await client.submit("fail", {"permanent": True})
        with pytest.raises(JobFailed):
            await failing.result(timeout=30)

        slow = await client.submit("sleep", {"worktime": 60})
        assert not (await client.wait(slow.name, timeout=0.2)).done
        assert await slow.cancel()
        with pytest.raises(JobCancelled):
            await slow.result(timeout=15)
        assert await slow.cancelled()

        names = [op.name async for op in client.list(filter='labels.suite = "aio"', page_size=1)]
        assert names == [future.name]
        await client.delete(future.name)
        with pytest.raises(NotFound):
            await client.get(future.name)


def test_a_client_project_scopes_submit_and_list(shared: Service) -> None:
    run = uuid.uuid4().hex[:12]
    flt = f'labels.run = "{run}"'
    with Client(shared.target, project="client-a") as a, Client(shared.target) as anywhere:
        mine = a.submit("noop", {"n": 1}, labels={"run": run})
        other = a.submit("noop", {"n": 2}, labels={"run": run}, project="client-b")
        default = anywhere.submit("noop", {"n": 3}, labels={"run": run})
        assert mine.name.startswith("projects/client-a/operations/")
        assert other.name.startswith("projects/client-b/operations/")
        assert default.name.startswith("projects/default/operations/")
        assert [op.name for op in a.list(filter=flt)] == [mine.name]
        assert [op.name for op in a.list(filter=flt, project="client-b")] == [other.name]
        everything = {op.name for op in anywhere.list(filter=flt)}
        assert everything == {mine.name, other.name, default.name}
        # A request id is the client's project's: the same one elsewhere is another job.
        rid = str(uuid.uuid4())
        first = a.submit("noop", {"n": 4}, request_id=rid)
        assert a.submit("noop", {"n": 4}, request_id=rid).name == first.name
        assert a.submit("noop", {"n": 4}, request_id=rid, project="client-b").name != first.name
        with pytest.raises(InvalidArgument) as bad:
            a.submit("noop", project="Bad_Project")
        assert bad.value.reason == "PROJECT_ID_INVALID"


async def test_an_async_client_submits_many(shared: Service) -> None:
    async with AsyncClient(shared.target) as client:
        futures = await client.submit_many("noop", [{"x": 1}, None, {"x": 3}])
        assert [await f.result(timeout=30) for f in futures] == [{"x": 1}, {}, {"x": 3}]


async def test_an_async_client_project_scopes_submit_and_list(shared: Service) -> None:
    run = uuid.uuid4().hex[:12]
    async with AsyncClient(shared.target, project="aio-a") as client:
        future = await client.submit("noop", {"n": 1}, labels={"run": run})
        assert future.name.startswith("projects/aio-a/operations/")
        listed = [op.name async for op in client.list(filter=f'labels.run = "{run}"')]
        assert listed == [future.name]
        elsewhere = [
            op.name async for op in client.list(filter=f'labels.run = "{run}"', project="aio-b")
        ]
        assert elsewhere == []
