"""One root exception; each subclass carries its canonical gRPC code and an
AIP-193 reason. Mapping to google.rpc.Status happens at the server edge only
(longrun_server/status.py)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

DOMAIN = "longrun.dev"


class LongrunError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(LongrunError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(LongrunError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "OPERATION_NOT_FOUND"


class AlreadyExists(LongrunError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(LongrunError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(LongrunError):
    """A guarded write lost a race too many times; safe to retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONCURRENT_MODIFICATION"


class Unavailable(LongrunError):
    """A backend could not be reached; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "BACKEND_UNAVAILABLE"


class Unimplemented(LongrunError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class StartupError(Exception):
    """A process cannot start with its configuration (a database it cannot
    open or create, say): reported as one line, never retried."""
