"""Client exceptions: one root, `LongrunClientError`.

Two families, because they mean different things to a caller:

- `ServiceError` (and a subclass per common code): an RPC itself failed, e.g.
  GetOperation on a name that does not exist (`NotFound`) or a CreateJob the
  server rejected (`InvalidArgument`). Carries the google.rpc.Status the server
  sent (AIP-193), with its ErrorInfo.
- `OperationError` (`JobFailed`, `JobCancelled`): the RPCs worked, and the
  operation finished with `Operation.error`. Carries that google.rpc.Status.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class LongrunClientError(Exception):
    """Root of every exception this package raises on purpose."""


def _unpack_detail(details: list[any_pb2.Any], cls: type[Any]) -> Any:
    for detail in details:
        if detail.TypeName() == cls.DESCRIPTOR.full_name:
            message = cls()
            detail.Unpack(message)
            return message
    return None


class _StatusMixin:
    status: status_pb2.Status

    @property
    def details(self) -> list[any_pb2.Any]:
        """The Status details as they are (packed Any messages)."""
        return list(self.status.details)

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The AIP-193 ErrorInfo among the details, if any."""
        info: error_details_pb2.ErrorInfo | None = _unpack_detail(
            self.details, error_details_pb2.ErrorInfo
        )
        return info

    @property
    def reason(self) -> str:
        """ErrorInfo.reason (e.g. "OPERATION_NOT_FOUND"), or "" when none was sent."""
        info = self.error_info
        return info.reason if info is not None else ""

    @property
    def debug_info(self) -> error_details_pb2.DebugInfo | None:
        debug: error_details_pb2.DebugInfo | None = _unpack_detail(
            self.details, error_details_pb2.DebugInfo
        )
        return debug


class ServiceError(_StatusMixin, LongrunClientError):
    """An RPC failed. `code` is the grpc.StatusCode; `status` the full
    google.rpc.Status (details included) when the server sent one."""

    def __init__(self, code: grpc.StatusCode, message: str, status: status_pb2.Status) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @staticmethod
    def from_grpc(error: grpc.RpcError) -> ServiceError:
        """The right subclass for a grpc (sync or aio) error, status details parsed."""
        code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message: str = (error.details() if hasattr(error, "details") else None) or ""
        status = status_pb2.Status(code=code.value[0], message=message)
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == STATUS_DETAILS_KEY:
                status = status_pb2.Status.FromString(value)
                break
        cls = _BY_CODE.get(code, ServiceError)
        return cls(code, message or status.message, status)


class NotFound(ServiceError):
    """NOT_FOUND: e.g. the operation does not exist (or has expired)."""


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT: the request is wrong; the message says how."""


class FailedPrecondition(ServiceError):
    """FAILED_PRECONDITION: the request cannot be done in the current state."""


class Unavailable(ServiceError):
    """UNAVAILABLE: the server (or its backend) could not be reached; retryable."""


class DeadlineExceeded(ServiceError):
    """DEADLINE_EXCEEDED: the RPC ran out of time."""


class Unimplemented(ServiceError):
    """UNIMPLEMENTED: the server does not offer this method."""


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Status (UNKNOWN for unknown numbers)."""
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN


class OperationError(_StatusMixin, LongrunClientError):
    """The operation finished with `Operation.error` (held in `status`)."""

    def __init__(self, operation: operations_pb2.Operation) -> None:
        self.operation = operation
        self.status = operation.error
        self.code = status_code(operation.error)
        self.message = operation.error.message
        super().__init__(f"{operation.name} {self.code.name}: {self.message}")


class JobFailed(OperationError):
    """The operation failed (any error code but CANCELLED)."""


class JobCancelled(OperationError):
    """The operation was cancelled: its error code is CANCELLED (1)."""


def operation_error(operation: operations_pb2.Operation) -> OperationError:
    """The exception for a done operation holding an error."""
    if operation.error.code == code_pb2.CANCELLED:
        return JobCancelled(operation)
    return JobFailed(operation)
