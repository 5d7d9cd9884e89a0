"""What one attempt of a handler came to, wherever it ran: the packed
result, or a google.rpc.Status and whether the task's retry policy asks for
another attempt. Made where the handler ran (the child process, a thread,
the task loop), so the worker's control loop only writes it."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2

from longrun_core.packing import error_status, pack_result
from longrun_core.tasks import RetryPolicy


@dataclass(frozen=True, slots=True)
class Outcome:
    #: A packed google.protobuf.Any: the attempt succeeded.
    response: bytes | None = None
    #: A serialized google.rpc.Status: the attempt failed.
    error: bytes | None = None
    #: The failure asks for another attempt (the task's RetryPolicy said so).
    retryable: bool = False


class TaskCrashed(Exception):
    """The task's process ended without an outcome (os._exit, a signal)."""


class AttemptTimedOut(Exception):
    """The attempt ran past its task's `timeout`."""


def outcome_of(
    result: Any,
    exc: BaseException | None,
    *,
    policy: RetryPolicy,
    attempt: int,
    max_attempts: int,
    code: int = code_pb2.UNKNOWN,
) -> Outcome:
    """The outcome of a handler that returned `result` or raised `exc` (any
    BaseException: SystemExit and friends are the task's failure too). A
    result that cannot be packed fails at once, without a retry."""
    if exc is None:
        try:
            return Outcome(response=pack_result(result))
        except TypeError as type_error:
            exc, policy = type_error, _NEVER
    return Outcome(
        error=error_status(exc, code=code, attempt=attempt, max_attempts=max_attempts),
        retryable=policy.is_retryable(exc),
    )


_NEVER = RetryPolicy(max_attempts=1, retry_on=())


def describe_exit(exitcode: int | None) -> str:
    """A process's end as people say it: "exited with code 3", "killed by SIGSEGV"."""
    if exitcode is None:
        return "did not end"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"
