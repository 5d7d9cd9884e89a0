"""The server's RPC spans (server/rpc_tracing.py) on a real grpc.aio server:
the spans opentelemetry-instrumentation-grpc made (name, kind, rpc.*
attributes, status), the caller's `traceparent` as the parent, and the
wrapped handler built once per method."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from longrun_server.rpc_tracing import RpcTracingInterceptor
from tests.support.waiting import wait_until

Traced = tuple[grpc.aio.Channel, InMemorySpanExporter, RpcTracingInterceptor]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request


async def _count(
    request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    for i in range(3):
        yield bytes([i])


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = RpcTracingInterceptor(provider)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.Svc",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(_echo),
                    "Count": grpc.unary_stream_rpc_method_handler(_count),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, exporter, interceptor
    finally:
        await server.stop(None)


async def test_a_call_with_a_traceparent_is_its_child(
    traced: Traced,
) -> None:
    channel, exporter, _ = traced
    echo = channel.unary_unary("/t.Svc/Echo")
    metadata = (("traceparent", f"00-{TRACE}-{PARENT_SPAN}-01"), ("tracestate", "v=1"))
    assert await echo(b"hi", metadata=metadata) == b"hi"
    (span,) = exporter.get_finished_spans()
    assert span.name == "/t.Svc/Echo" and span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_SPAN
    assert span.context.trace_state.get("v") == "1"
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "t.Svc",
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_without_a_well_formed_traceparent_a_call_starts_a_trace(
    traced: Traced,
) -> None:
    channel, exporter, _ = traced
    echo = channel.unary_unary("/t.Svc/Echo")
    await echo(b"a")
    await echo(b"b", metadata=(("traceparent", "00-xyz-1-01"),))
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


async def test_a_failed_call_records_its_code(
    traced: Traced,
) -> None:
    channel, exporter, _ = traced
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/t.Svc/Echo")(b"fail")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    # context.abort sends the status before the handler unwinds: the span
    # ends a moment after the caller has the error.
    (span,) = await wait_until(
        lambda: exporter.get_finished_spans() or None, description="the failed call's span"
    )
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "NOT_FOUND"


async def test_a_server_stream_is_one_span_and_handlers_are_wrapped_once(
    traced: Traced,
) -> None:
    channel, exporter, interceptor = traced
    count = channel.unary_stream("/t.Svc/Count")
    for _ in range(2):
        assert [m async for m in count(b"")] == [b"\x00", b"\x01", b"\x02"]
    echo = channel.unary_unary("/t.Svc/Echo")
    await echo(b"1")
    wrapped = interceptor._wrapped["/t.Svc/Echo"][1]
    await echo(b"2")
    assert interceptor._wrapped["/t.Svc/Echo"][1] is wrapped
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["/t.Svc/Count"] * 2 + ["/t.Svc/Echo"] * 2
