"""What one attempt of a handler came to, wherever it ran: the packed
result, or a google.rpc.Status and whether the task's retry policy asks for
another attempt. Made where the handler ran (the child process, a thread,
the task loop), so the worker's control loop only writes it."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2

from longrun_core.packing import bounded_error, error_status, result_outcome
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
    limit: int,
    code: int = code_pb2.UNKNOWN,
    debug: bool = False,
) -> Outcome:
    """The outcome of a handler that returned `result` or raised `exc` (any
    BaseException: SystemExit and friends are the task's failure too), within
    `limit` bytes (the worker's `Worker.outcome_limit`). Never raises for the
    result: one that cannot be packed (RESULT_INVALID) or is over `limit`
    (RESULT_TOO_LARGE) fails at once, without a retry; an error over `limit`
    becomes RESULT_TOO_LARGE keeping the start of its message. With `debug`
    (the worker's --debug-errors) an error carries a DebugInfo."""
    if exc is None:
        response, refused = result_outcome(
            result, limit=limit, attempt=attempt, max_attempts=max_attempts
        )
        if refused is None:
            return Outcome(response=response)
        return Outcome(error=refused)
    error = error_status(exc, code=code, attempt=attempt, max_attempts=max_attempts, debug=debug)
    return Outcome(
        error=bounded_error(error, limit=limit, attempt=attempt, max_attempts=max_attempts),
        retryable=policy.is_retryable(exc),
    )


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
