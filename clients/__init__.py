"""Python clients for longrun: `Client` (sync), `AsyncClient` (asyncio), and
the `longrun` CLI (clients.cli). See docs/clients.md."""

from clients.aio import AsyncClient, AsyncOperationFuture
from clients.client import Client
from clients.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    LongrunClientError,
    NotFound,
    OperationError,
    ServiceError,
    Unavailable,
    Unimplemented,
)
from clients.future import OperationFuture, WaitPolicy

__all__ = [
    "AsyncClient",
    "AsyncOperationFuture",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JobCancelled",
    "JobFailed",
    "LongrunClientError",
    "NotFound",
    "OperationError",
    "OperationFuture",
    "ServiceError",
    "Unavailable",
    "Unimplemented",
    "WaitPolicy",
]
