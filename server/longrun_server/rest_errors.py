"""HTTP side of errors (AIP-193): a google.rpc.Status becomes an HTTP status
and the JSON body `{"error": {"code", "status", "message", "details"}}` that
Google REST APIs send."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from longrun_core.errors import DOMAIN
from longrun_server.rest_json import message_json

log = logging.getLogger("longrun.http")

#: google.rpc.Code -> HTTP status, as in google/rpc/code.proto.
HTTP_STATUS: Mapping[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


def http_status(code: int) -> int:
    """The HTTP status for a google.rpc.Code value (500 for unknown values)."""
    return HTTP_STATUS.get(code, 500)


def code_name(code: int) -> str:
    try:
        return str(code_pb2.Code.Name(code))
    except ValueError:
        return "UNKNOWN"


def make_status(
    code: int, message: str, reason: str, metadata: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """A Status with an ErrorInfo in domain `longrun.dev` (errors the gateway
    itself raises: bad path, bad body, ...)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    return status_pb2.Status(code=code, message=message, details=[detail])


def status_from_rpc_error(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status the server sent (grpc-status-details-bin), or one built
    from the code and details when there is none (e.g. a channel error)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    try:
        rich = rpc_status.from_call(error)
    except ValueError:
        log.warning("grpc-status-details-bin disagrees with the call status", exc_info=True)
        rich = None
    if rich is not None:
        return rich
    number = int(code.value[0]) if code is not None else code_pb2.UNKNOWN
    return make_status(number, details or code_name(number), reason=code_name(number))


def error_headers(status: status_pb2.Status) -> dict[str, str]:
    """HTTP headers for an error: `Retry-After` (whole seconds, rounded up)
    when the status carries a google.rpc.RetryInfo, so plain HTTP clients and
    proxies learn the delay the JSON body's RetryInfo detail gives; and
    `WWW-Authenticate: Bearer` on UNAUTHENTICATED (RFC 6750)."""
    if status.code == code_pb2.UNAUTHENTICATED:
        return {"WWW-Authenticate": 'Bearer realm="longrun"'}
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.ToTimedelta().total_seconds()
            return {"Retry-After": str(max(math.ceil(seconds), 0))}
    return {}


def error_body(status: status_pb2.Status, http: int | None = None) -> dict[str, Any]:
    """The AIP-193 JSON form of `status`; `http` overrides the mapped code
    (405 has no google.rpc.Code of its own)."""
    return {
        "error": {
            "code": http if http is not None else http_status(status.code),
            "status": code_name(status.code),
            "message": status.message,
            "details": [detail_json(d) for d in status.details],
        }
    }


def detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    """A detail as proto3 JSON; one this process cannot print (a type it does
    not know) in the gateway's fallback form, base64 encoded."""
    return dict(message_json(detail))
