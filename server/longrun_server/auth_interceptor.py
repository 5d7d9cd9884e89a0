"""The gRPC edge of authentication: `AuthInterceptor` authenticates every
call once (but health checking and reflection, which stay open), answers
UNAUTHENTICATED with an ErrorInfo naming the reason, and otherwise runs the
handler inside `acting_as(principal)`. The wrapper runs in the handler's own
task, so `current_principal()` is the caller's wherever the handler looks.

Transport identities: `transport_sans(context)` (optional) returns the
subject alternative names of the caller's verified client certificate; the
TLS edge passes it (`client_certificate_sans`). The server adds the
interceptor only when authentication is configured: without it a call costs
nothing extra.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from longrun_core.access import Principal, acting_as
from longrun_core.auth.authenticator import Authenticator
from longrun_core.errors import LongrunError
from longrun_server.gateway_link import GatewayLink, forwarded_sans
from longrun_server.quotas import RateQuota
from longrun_server.reflection import SERVICE_NAMES as REFLECTION_SERVICES
from longrun_server.status import internal_status, to_status
from longrun_server.tls import peer_sans

log = logging.getLogger("longrun.auth")

#: Services every caller may use without credentials.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", *REFLECTION_SERVICES})

SansOf = Callable[[grpc.aio.ServicerContext[Any, Any]], Sequence[str]]


def client_certificate_sans(link: GatewayLink | None) -> SansOf:
    """The transport identities of a call: the SANs of the client certificate
    the gRPC port verified, else (for a call from the HTTP gateway over its
    private socket) the SANs the gateway forwarded with a valid MAC."""

    def sans(context: grpc.aio.ServicerContext[Any, Any]) -> Sequence[str]:
        direct = peer_sans(context)
        if direct or link is None:
            return direct
        return forwarded_sans(context.invocation_metadata(), link.secret, peer=context.peer())

    return sans


def _service(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        *,
        transport_sans: SansOf | None = None,
        rate_quota: RateQuota | None = None,
    ):
        self.authenticator = authenticator
        self.transport_sans = transport_sans
        self.rate_quota = rate_quota or RateQuota(0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or _service(handler_call_details.method) in OPEN_SERVICES:
            return handler
        return self.wrap(handler)

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler with each behaviour authenticating first."""
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._single(handler.unary_unary), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._single(handler.stream_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream), **kw)
        return handler  # pragma: no cover - a handler has one behaviour

    async def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller, or the call aborted with UNAUTHENTICATED (or UNAVAILABLE
        when the token issuer's keys cannot be fetched), or RESOURCE_EXHAUSTED
        when the caller is over its request rate."""
        sans = self.transport_sans(context) if self.transport_sans is not None else ()
        try:
            principal = await self.authenticator.authenticate(
                context.invocation_metadata() or (), sans
            )
            self.rate_quota.admit(principal.id)
            return principal
        except LongrunError as exc:
            await context.abort_with_status(rpc_status.to_status(to_status(exc)))
        except Exception as exc:
            log.exception("authentication failed unexpectedly")
            await context.abort_with_status(rpc_status.to_status(internal_status(exc)))
        raise AssertionError("unreachable")  # abort_with_status always raises

    def _single(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self.principal(context)
            with acting_as(principal):
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result

        return authenticated

    def _stream(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def authenticated(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            principal = await self.principal(context)
            with acting_as(principal):
                result = behavior(request, context)
                if inspect.isawaitable(result):  # writes with context.write
                    await result
                    return
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item

        return authenticated
