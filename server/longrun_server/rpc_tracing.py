"""The server's span for each RPC (`--trace-exporter`), replacing
opentelemetry-instrumentation-grpc's aio server interceptor, which cost a
fifth of the no-op jobs/s (docs/observability.md#cost): it rebuilt the
handler, the attributes (peer address parsing, metadata dict) and a wrapper
of the servicer context on every call.

Same spans as that instrumentation: named by the full method
(`/longrun.v1.Jobs/CreateJob`), kind SERVER, attributes `rpc.system`,
`rpc.service`, `rpc.method` and `rpc.grpc.status_code`, status ERROR with
the code's name when the call ends with another code than OK; a W3C
`traceparent` (and `tracestate`) in the call's metadata is the parent.
What is cheaper: the wrapped handler is built once per method (and reused
while the inner handler is the same object), the attributes are a prebuilt
mapping per method, and the parent is read from the metadata directly
(trace_context.remote_parent), not through the global propagator. Unary
and server-streaming calls are traced; client-streaming ones (server
reflection) are not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.context import attach, detach
from opentelemetry.trace import set_span_in_context

from longrun_core.observability.trace_context import remote_parent

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

_CODES = {status.value[0]: status for status in grpc.StatusCode}


def _code_of(context: Any, ok: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK if ok else grpc.StatusCode.UNKNOWN


class RpcTracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer: Tracer = provider.get_tracer("longrun.server.rpc")
        self._kind = SpanKind.SERVER
        self._error = lambda code: Status(StatusCode.ERROR, code.name)
        #: method -> (the inner handler, its traced wrapper); bounded by the methods served.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def parent(self, context: Any) -> Context | None:
        """The caller's trace context from the call's metadata (None: a new trace)."""
        parent, state = "", ""
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                parent = value if isinstance(value, str) else ""
            elif key == "tracestate":
                state = value if isinstance(value, str) else ""
        return remote_parent(parent, state) if parent else None

    def _end(self, span: Span, context: Any, ok: bool) -> None:
        if span.is_recording():  # a span not sampled takes no attributes
            code = _code_of(context, ok)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(self._error(code))
        span.end()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").partition("/")
        attributes: Mapping[str, str] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
        }
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, attributes), **kw
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, attributes), **kw
            )
        return handler

    def _start(self, method: str, context: Any, attributes: Mapping[str, str]) -> Span:
        return self._tracer.start_span(
            method,
            context=self.parent(context),
            kind=self._kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _unary(
        self, behavior: Callable[..., Any], method: str, attributes: Mapping[str, str]
    ) -> Callable[..., Awaitable[Any]]:
        async def traced(request: Any, context: Any) -> Any:
            ok = False
            span = self._start(method, context, attributes)
            # Current for what the call does (CreateJob's task message takes its
            # traceparent): one attach/detach, not use_span's generator.
            token = attach(set_span_in_context(span))
            try:
                result = behavior(request, context)
                if hasattr(result, "__await__"):
                    result = await result
                ok = True
                return result
            finally:
                detach(token)
                self._end(span, context, ok)

        return traced

    def _stream(
        self, behavior: Callable[..., Any], method: str, attributes: Mapping[str, str]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def traced(request: Any, context: Any) -> AsyncIterator[Any]:
            ok = False
            span = self._start(method, context, attributes)
            token = attach(set_span_in_context(span))
            try:
                result = behavior(request, context)
                if hasattr(result, "__await__"):  # writes with context.write
                    await result
                elif hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item
                ok = True
            finally:
                detach(token)
                self._end(span, context, ok)

        return traced
