"""The server edge: domain errors become google.rpc.Status with an ErrorInfo
(AIP-193), sent as grpc-status-details-bin."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from longrun_core.errors import DOMAIN, InvalidArgument, LongrunError, QuotaExceeded

log = logging.getLogger("longrun.server")

T = TypeVar("T")


def to_status(error: LongrunError) -> status_pb2.Status:
    """The google.rpc.Status of a domain error: its code and message, an
    ErrorInfo (reason, domain longrun.dev, metadata) and, for an error a retry
    can fix (AIP-194: UNAVAILABLE, a full disk's RESOURCE_EXHAUSTED, ...), a
    RetryInfo with the delay to wait first."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if error.retry_delay is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=error.retry_delay))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    if isinstance(error, QuotaExceeded):
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=error.metadata.get("principal", ""), description=error.message
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        details.append(packed)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


def internal_status(exc: BaseException) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error ({type(exc).__name__}); see the server log",
        details=[detail],
    )


class Malformed:
    """Stands in for a request whose bytes did not parse, so the method can
    answer INVALID_ARGUMENT (grpc itself would say INTERNAL)."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"request is not a valid {self.type_name}: {self.reason} (a field has the wrong "
            "type, e.g. params must be a JSON object / google.protobuf.Struct)",
            reason="REQUEST_MALFORMED",
        )


def lenient_deserializer(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def deserialize(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Malformed(cls.DESCRIPTOR.full_name, str(exc) or "cannot parse")

    return deserialize


def service_handler(descriptor: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """Register `servicer` for the unary methods of `descriptor`, parsing
    requests leniently (see `Malformed`)."""
    handlers = {}
    for method in descriptor.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def rpc_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Decorate an async servicer method: LongrunError -> its status; any other
    exception -> INTERNAL (logged)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await method(self, request, context)
        except LongrunError as exc:
            await context.abort_with_status(rpc_status.to_status(to_status(exc)))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            log.exception("unhandled error in %s", method.__name__)
            await context.abort_with_status(rpc_status.to_status(internal_status(exc)))
        raise AssertionError("unreachable")  # abort_with_status always raises

    return wrapper
