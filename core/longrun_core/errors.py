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
    #: Seconds a client should wait before retrying (sent as google.rpc.RetryInfo);
    #: None for errors that a retry does not fix.
    retry_delay: float | None = None

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
    retry_delay = 0.1


class Unavailable(LongrunError):
    """A backend cannot serve now (unreachable, busy, cannot write): an
    outage, not a bug. Safe to retry; every process rides it out with backoff.
    Subclasses refine the reason (and, for a full disk, the code)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "BACKEND_UNAVAILABLE"
    retry_delay = 1.0


class StoreUnavailable(Unavailable):
    """The embedded store's file cannot be written or read now: read-only,
    an I/O error, locked for longer than the busy timeout."""

    default_reason = "STORE_UNAVAILABLE"


class StorageFull(Unavailable):
    """The store's disk is full. RESOURCE_EXHAUSTED, as google.rpc.Code
    documents it ("perhaps the entire file system is out of space"); retryable
    once space is freed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "STORAGE_FULL"
    retry_delay = 5.0


class StoreReplaced(Unavailable):
    """The database file this process opened was deleted or replaced under it.
    Refused until the original file is back at its path or the process is
    restarted by an operator: never written to (or read from) silently."""

    default_reason = "STORE_FILE_REPLACED"
    retry_delay = 10.0


class Unimplemented(LongrunError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class StartupError(Exception):
    """A process cannot start with its configuration (a database it cannot
    open or create, say): reported as one line, never retried."""


class Unauthenticated(LongrunError):
    """No credentials, or credentials that do not verify (AIP-193: UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(LongrunError):
    """The caller is known but holds no role granting the permission on the
    resource. Raised whether or not the resource exists (AIP-211)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "IAM_PERMISSION_DENIED"


class QuotaExceeded(LongrunError):
    """A per-principal quota ran out (requests per second, open operations):
    RESOURCE_EXHAUSTED with RetryInfo (and QuotaFailure at the edge)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMIT_EXCEEDED"
    retry_delay = 1.0
