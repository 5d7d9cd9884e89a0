"""OperationFuture / AsyncOperationFuture fed fixed sequences of states, and the
clients against a tiny in-test server that implements GetOperation only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_client import (
    AsyncClient,
    AsyncOperationFuture,
    Client,
    JobCancelled,
    JobFailed,
    LongrunClientError,
    NotFound,
    OperationFuture,
    ServiceError,
    Unavailable,
    Unimplemented,
    WaitPolicy,
)

NAME = "operations/abc"
FAST = WaitPolicy(poll_initial=0.001, poll_maximum=0.005, progress_poll=0.5, long_poll=30)
State = jobs_pb2.JobMetadata.State


def op(
    state: jobs_pb2.JobMetadata.State.ValueType = State.RUNNING,
    percent: int = 0,
    message: str = "",
    *,
    response: Any = None,
    error: status_pb2.Status | None = None,
) -> operations_pb2.Operation:
    operation = operations_pb2.Operation(name=NAME)
    operation.metadata.Pack(
        jobs_pb2.JobMetadata(
            task="t", state=state, progress_percent=percent, progress_message=message
        )
    )
    if response is not None:
        operation.done = True
        operation.response.Pack(response)
    if error is not None:
        operation.done = True
        operation.error.CopyFrom(error)
    return operation


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def failure(code: int, message: str, reason: str) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="longrun.dev"))
    return status


DONE = op(State.SUCCEEDED, 100, response=struct({"n": 2, "x": 1.5, "tags": ["a"]}))


class FakeTransport:
    """Answers each call with the next item of `answers` (an Operation, or an
    exception to raise); records the calls."""

    def __init__(self, *answers: operations_pb2.Operation | Exception, wait: bool = True) -> None:
        self.answers = list(answers)
        self.wait_supported = wait
        self.calls: list[tuple[str, float | None]] = []
        self.cancelled: list[str] = []

    def _next(self) -> operations_pb2.Operation:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get(self, name: str) -> operations_pb2.Operation:
        self.calls.append(("get", None))
        return self._next()

    def wait(self, name: str, timeout: float) -> operations_pb2.Operation:
        self.calls.append(("wait", timeout))
        return self._next()

    def cancel(self, name: str) -> None:
        self.cancelled.append(name)


class AsyncFakeTransport(FakeTransport):
    async def get(self, name: str) -> operations_pb2.Operation:  # type: ignore[override]
        return FakeTransport.get(self, name)

    async def wait(self, name: str, timeout: float) -> operations_pb2.Operation:  # type: ignore[override]
        return FakeTransport.wait(self, name, timeout)

    async def cancel(self, name: str) -> None:  # type: ignore[override]
        FakeTransport.cancel(self, name)


def rpc_error(cls: type[ServiceError], code: grpc.StatusCode) -> ServiceError:
    return cls(code, "boom", status_pb2.Status(code=code.value[0], message="boom"))


def test_result_long_polls_wait_and_unpacks_struct_to_dict() -> None:
    transport = FakeTransport(op(State.QUEUED), op(State.RUNNING, 50), DONE)
    future: OperationFuture[Any] = OperationFuture(op(State.QUEUED), transport, policy=FAST)
    assert future.result() == {"n": 2, "x": 1.5, "tags": ["a"]}
    assert isinstance(future.result()["n"], int)
    assert [c[0] for c in transport.calls] == ["wait", "wait", "wait"]
    assert all(timeout == pytest.approx(30, abs=0.1) for _, timeout in transport.calls)
    assert future.metadata.state == State.SUCCEEDED
    assert future.operation.done and future.done()
    assert len(transport.calls) == 3  # done() asks nothing once done


def test_result_as_typed_message() -> None:
    transport = FakeTransport(DONE)
    future: OperationFuture[struct_pb2.Struct] = OperationFuture(
        op(), transport, response_type=struct_pb2.Struct
    )
    result = future.result(timeout=5)
    assert isinstance(result, struct_pb2.Struct)
    assert result["n"] == 2


def test_result_type_mismatch_is_type_error() -> None:
    future: OperationFuture[Any] = OperationFuture(
        DONE, FakeTransport(DONE), response_type=jobs_pb2.CreateJobRequest
    )
    with pytest.raises(TypeError, match=r"longrun\.v1\.CreateJobRequest.*google\.protobuf\.Struct"):
        future.result()


def test_failed_operation_raises_job_failed_with_status() -> None:
    failed = op(State.FAILED, error=failure(code_pb2.UNKNOWN, "PermanentError: no", "TASK_FAILED"))
    future: OperationFuture[Any] = OperationFuture(op(), FakeTransport(failed), policy=FAST)
    with pytest.raises(JobFailed) as caught:
        future.result(timeout=5)
    assert caught.value.code == grpc.StatusCode.UNKNOWN
    assert caught.value.message == "PermanentError: no"
    assert caught.value.reason == "TASK_FAILED"
    assert caught.value.status.details[0].TypeName() == "google.rpc.ErrorInfo"
    assert caught.value.operation.name == NAME
    assert isinstance(future.exception(), JobFailed)
    assert not future.cancelled()


def test_cancelled_operation_raises_job_cancelled() -> None:
    cancelled = op(State.CANCELLED, error=failure(code_pb2.CANCELLED, "cancelled", "CANCELLED"))
    transport = FakeTransport(op(), cancelled)
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    assert future.cancel() is True
    assert transport.cancelled == [NAME]
    with pytest.raises(JobCancelled):
        future.result(timeout=5)
    assert future.cancelled()
    assert future.cancel() is False  # known done: nothing sent
    assert transport.cancelled == [NAME]


def test_done_with_neither_response_nor_error_is_an_error() -> None:
    broken = op()
    broken.done = True
    future: OperationFuture[Any] = OperationFuture(broken, FakeTransport(broken))
    with pytest.raises(LongrunClientError, match="neither response nor error"):
        future.result()


def test_timeout_when_never_done() -> None:
    transport = FakeTransport(op())
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    assert transport.calls, "it asked the server"
    assert all(t is not None and t <= 0.05 for _, t in transport.calls), transport.calls


def test_unimplemented_wait_falls_back_to_get_polling() -> None:
    transport = FakeTransport(
        rpc_error(Unimplemented, grpc.StatusCode.UNIMPLEMENTED), op(), op(), DONE
    )
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    assert future.result(timeout=5)["n"] == 2
    assert [c[0] for c in transport.calls] == ["wait", "get", "get", "get"]
    assert transport.wait_supported is False


def test_unavailable_while_waiting_is_retried() -> None:
    transport = FakeTransport(rpc_error(Unavailable, grpc.StatusCode.UNAVAILABLE), DONE)
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    assert future.result(timeout=5)["n"] == 2
    assert [c[0] for c in transport.calls] == ["wait", "wait"]


def test_other_rpc_errors_propagate() -> None:
    transport = FakeTransport(rpc_error(NotFound, grpc.StatusCode.NOT_FOUND))
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    with pytest.raises(NotFound):
        future.result(timeout=5)


def test_progress_callbacks_fire_on_change_only_with_short_polls() -> None:
    transport = FakeTransport(
        op(State.RUNNING, 0),
        op(State.RUNNING, 0),
        op(State.RUNNING, 50, "half"),
        op(State.RUNNING, 50, "half"),
        DONE,
    )
    future: OperationFuture[Any] = OperationFuture(op(State.QUEUED), transport, policy=FAST)
    seen: list[tuple[int, int, str]] = []
    done: list[OperationFuture[Any]] = []
    future.add_progress_callback(
        lambda md: seen.append((md.state, md.progress_percent, md.progress_message))
    )
    future.add_done_callback(done.append)
    assert future.result(timeout=5)["n"] == 2
    assert seen == [
        (State.RUNNING, 0, ""),
        (State.RUNNING, 50, "half"),
        (State.SUCCEEDED, 100, ""),
    ]
    assert done == [future]
    assert {t for _, t in transport.calls} == {FAST.progress_poll}


def test_done_callback_runs_from_a_watcher_without_result() -> None:
    transport = FakeTransport(op(), DONE)
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    called = threading.Event()
    future.add_done_callback(lambda f: called.set())
    assert called.wait(5)
    # Registering on a done future calls at once, in this thread.
    again: list[OperationFuture[Any]] = []
    future.add_done_callback(again.append)
    assert again == [future]


def test_watcher_error_reaches_result() -> None:
    transport = FakeTransport(rpc_error(NotFound, grpc.StatusCode.NOT_FOUND))
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    future.add_done_callback(lambda f: None)
    with pytest.raises(NotFound):
        future.result(timeout=5)


def test_a_failing_callback_does_not_stop_waiting() -> None:
    future: OperationFuture[Any] = OperationFuture(op(), FakeTransport(DONE), policy=FAST)

    def explode(metadata: Any) -> None:
        raise RuntimeError("callback bug")

    future.add_progress_callback(explode)
    assert future.result(timeout=5)["n"] == 2


def test_done_never_goes_back() -> None:
    transport = FakeTransport(DONE, op())
    future: OperationFuture[Any] = OperationFuture(op(), transport, policy=FAST)
    future.result(timeout=5)
    future._update(op())
    assert future.operation.done


def test_operation_property_is_a_copy() -> None:
    future: OperationFuture[Any] = OperationFuture(op(), FakeTransport(DONE))
    future.operation.done = True
    assert not future.operation.done


async def test_async_future_same_behaviour() -> None:
    transport = AsyncFakeTransport(
        rpc_error(Unimplemented, grpc.StatusCode.UNIMPLEMENTED), op(State.RUNNING, 50), DONE
    )
    future: AsyncOperationFuture[Any] = AsyncOperationFuture(op(), transport, policy=FAST)
    seen: list[int] = []
    future.add_progress_callback(lambda md: seen.append(md.progress_percent))
    assert await future.result(timeout=5) == {"n": 2, "x": 1.5, "tags": ["a"]}
    assert seen == [50, 100]
    assert [c[0] for c in transport.calls] == ["wait", "get", "get"]
    assert await future.done()


async def test_async_failure_and_timeout() -> None:
    never = AsyncOperationFuture[Any](op(), AsyncFakeTransport(op()), policy=FAST)
    with pytest.raises(TimeoutError):
        await never.result(timeout=0.05)
    failed = op(State.FAILED, error=failure(code_pb2.INTERNAL, "bad", "TASK_FAILED"))
    future = AsyncOperationFuture[Any](op(), AsyncFakeTransport(failed), policy=FAST)
    with pytest.raises(JobFailed) as caught:
        await future.result(timeout=5)
    assert caught.value.code == grpc.StatusCode.INTERNAL


# -- the clients against a server that implements GetOperation only ----------------


class GetOnlyServer(grpc.GenericRpcHandler):
    """google.longrunning.Operations with GetOperation alone: the operation is
    done on the third Get. Records every method asked for and its metadata."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.gets = 0
        self.lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        with self.lock:
            self.methods.append(details.method.rsplit("/", 1)[-1])
            self.metadata.append(dict(details.invocation_metadata))
        if details.method != "/google.longrunning.Operations/GetOperation":
            return None  # grpc answers UNIMPLEMENTED
        return grpc.unary_unary_rpc_method_handler(
            self.get,
            request_deserializer=operations_pb2.GetOperationRequest.FromString,
            response_serializer=operations_pb2.Operation.SerializeToString,
        )

    def get(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        with self.lock:
            self.gets += 1
            gets = self.gets
        if request.name != NAME:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
        return DONE if gets % 3 == 0 else op(State.RUNNING, 10 * gets)


@pytest.fixture
def get_only() -> Iterator[tuple[GetOnlyServer, str]]:
    handler = GetOnlyServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_client_falls_back_to_get_operation_polling(get_only: tuple[GetOnlyServer, str]) -> None:
    handler, target = get_only
    metadata = [("authorization", "Bearer secret")]
    with Client(target, metadata=metadata, wait_policy=FAST) as client:
        future = client.follow(NAME)
        assert future.result(timeout=10) == {"n": 2, "x": 1.5, "tags": ["a"]}
        assert handler.methods == ["WaitOperation", "GetOperation", "GetOperation", "GetOperation"]
        # The client remembers: the next wait polls at once.
        assert client.wait(NAME, timeout=10).done
        assert "WaitOperation" not in handler.methods[4:]
        with pytest.raises(NotFound) as caught:
            client.get("operations/other")
        assert caught.value.message == "no operations/other"
    assert all(md.get("authorization") == "Bearer secret" for md in handler.metadata)
    assert metadata == [("authorization", "Bearer secret")]  # not mutated


async def test_async_client_falls_back_to_get_operation_polling(
    get_only: tuple[GetOnlyServer, str],
) -> None:
    handler, target = get_only
    async with AsyncClient(target, wait_policy=FAST) as client:
        future = client.follow(NAME)
        assert (await future.result(timeout=10))["n"] == 2
        assert handler.methods[0] == "WaitOperation"
        assert set(handler.methods[1:]) == {"GetOperation"}
        with pytest.raises(Unimplemented):
            await client.delete(NAME)


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", attempts=2, timeout=5) as client, pytest.raises(Unavailable):
        client.get(NAME)


def test_submit_does_not_modify_callers_params(get_only: tuple[GetOnlyServer, str]) -> None:
    _, target = get_only
    params = {"a": [1, 2], "b": {"c": 1}}
    labels = {"k": "v"}
    with Client(target, attempts=1) as client, pytest.raises(Unimplemented):
        client.submit("noop", params, labels=labels)
    assert params == {"a": [1, 2], "b": {"c": 1}} and labels == {"k": "v"}


def test_client_needs_a_target_or_channel() -> None:
    with pytest.raises(ValueError):
        Client(None)
    with pytest.raises(ValueError):
        asyncio.run(_make_async_client_without_target())


async def _make_async_client_without_target() -> None:
    AsyncClient(None)
