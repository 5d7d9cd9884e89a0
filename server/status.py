"""The server edge: domain errors become google.rpc.Status with an ErrorInfo
(AIP-193), sent as grpc-status-details-bin."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lro.errors import DOMAIN, LongrunError

log = logging.getLogger("longrun.server")

T = TypeVar("T")


def to_status(error: LongrunError) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])


def internal_status(exc: BaseException) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error ({type(exc).__name__}); see the server log",
        details=[detail],
    )


def rpc_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Decorate an async servicer method: LongrunError -> its status; any other
    exception -> INTERNAL (logged)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
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
