"""Python clients for longrun: `Client` (sync), `AsyncClient` (asyncio), and
the `longrun` CLI (longrun_client.cli). See docs/clients.md."""

from longrun_client.aio import AsyncClient, AsyncOperationFuture
from longrun_client.client import Client
from longrun_client.credentials import ChannelSecurity, CredentialsError
from longrun_client.errors import (
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
from longrun_client.future import OperationFuture, WaitPolicy
from longrun_client.queues import JobOptions, LimitOptions, RetryOptions

__all__ = [
    "AsyncClient",
    "AsyncOperationFuture",
    "ChannelSecurity",
    "Client",
    "CredentialsError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JobCancelled",
    "JobFailed",
    "JobOptions",
    "LimitOptions",
    "LongrunClientError",
    "NotFound",
    "OperationError",
    "OperationFuture",
    "RetryOptions",
    "ServiceError",
    "Unavailable",
    "Unimplemented",
    "WaitPolicy",
]
