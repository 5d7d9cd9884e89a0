"""The gateway in process, against a stub gRPC server on loopback: what the
HTTP caller gets back, and that a caller who hangs up cancels the call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import any_pb2

from longrun_server.rest import RestGateway, build_routes, served_services


@dataclass
class Stub:
    """Answers GetOperation with a canned Operation; WaitOperation blocks."""

    operation: operations_pb2.Operation = field(default_factory=operations_pb2.Operation)
    wait_started: asyncio.Event = field(default_factory=asyncio.Event)
    wait_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    deadlines: list[float | None] = field(default_factory=list)

    async def get(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return self.operation

    async def wait(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        self.deadlines.append(context.time_remaining())
        self.wait_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise
        return self.operation


@dataclass
class Running:
    stub: Stub
    base: str


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    stub = Stub()
    server = grpc.aio.server()
    handlers = {
        "GetOperation": grpc.unary_unary_rpc_method_handler(
            stub.get,
            request_deserializer=operations_pb2.GetOperationRequest.FromString,
            response_serializer=operations_pb2.Operation.SerializeToString,
        ),
        "WaitOperation": grpc.unary_unary_rpc_method_handler(
            stub.wait,
            request_deserializer=operations_pb2.WaitOperationRequest.FromString,
            response_serializer=operations_pb2.Operation.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("google.longrunning.Operations", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gateway = RestGateway(
        f"127.0.0.1:{port}", build_routes(served_services()), max_wait=600.0, grace=0.5
    )
    http_port = await gateway.start("127.0.0.1", 0)
    try:
        yield Running(stub, f"http://127.0.0.1:{http_port}")
    finally:
        await gateway.stop()
        await server.stop(0)


async def _get(url: str, **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(kw.pop("method", "GET"), url, **kw) as reply,
    ):
        return reply.status, await reply.json()


async def test_responses_are_lower_camel_case_json(running: Running) -> None:
    running.stub.operation.name = "operations/abc"
    running.stub.operation.metadata.Pack(
        operations_pb2.OperationInfo(response_type="x.Y", metadata_type="x.M")
    )
    status, body = await _get(running.base + "/v1/operations/abc")
    assert status == 200
    assert body == {
        "name": "operations/abc",
        "metadata": {
            "@type": "type.googleapis.com/google.longrunning.OperationInfo",
            "responseType": "x.Y",
            "metadataType": "x.M",
        },
    }


async def test_an_any_of_an_unknown_type_is_served_base64_saying_why(running: Running) -> None:
    """Stored data never makes the gateway fail: the Any it cannot print is
    sent in the fallback form, the rest of the operation as usual."""
    running.stub.operation.name = "operations/abc"
    running.stub.operation.metadata.CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/no.such.Metadata", value=b"\x08\x01")
    )
    status, body = await _get(running.base + "/v1/operations/abc")
    assert status == 200
    assert body["name"] == "operations/abc"
    metadata = body["metadata"]
    assert metadata["@type"] == "type.googleapis.com/no.such.Metadata"
    assert metadata["value"] == "CAE="
    assert "no.such.Metadata" in metadata["@unprintable"]


async def test_unimplemented_methods_come_back_as_501(running: Running) -> None:
    status, body = await _get(running.base + "/v1/operations/abc", method="DELETE")
    assert status == 501
    assert body["error"]["status"] == "UNIMPLEMENTED"
    assert body["error"]["details"][0]["reason"] == "UNIMPLEMENTED"


async def test_wait_gets_a_deadline_above_its_timeout(running: Running) -> None:
    url = running.base + "/v1/operations/abc:wait"
    task = asyncio.create_task(_get(url, method="POST", json={"timeout": "5s"}))
    await asyncio.wait_for(running.stub.wait_started.wait(), 10)
    (remaining,) = running.stub.deadlines
    # timeout 5 s + the 2 s margin; grpc's deadline clock may read a few ms
    # above that on the server side (seen: 7.0096).
    assert remaining is not None and 5.0 < remaining <= 7.1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_caller_who_hangs_up_cancels_the_grpc_call(running: Running) -> None:
    url = running.base + "/v1/operations/abc:wait"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_get(url, method="POST", json={"timeout": "20s"}), 1.0)
    await asyncio.wait_for(running.stub.wait_cancelled.wait(), 10)
