"""Tasks every worker knows: `sleep` (the tutorial job), `noop` (benchmarks),
`fail` (error paths)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from longrun_core.tasks import PermanentError, RetryPolicy, TaskContext, TaskSet, TransientError

tasks = TaskSet()

MAX_WORKTIME = 24 * 3600


def _check_sleep(params: Mapping[str, Any]) -> None:
    worktime = params.get("worktime", 1)
    if isinstance(worktime, bool) or not isinstance(worktime, (int, float)):
        raise ValueError(f"worktime must be a number of seconds, got {type(worktime).__name__}")
    if not 0 <= worktime <= MAX_WORKTIME:
        raise ValueError(f"worktime must be between 0 and {MAX_WORKTIME} seconds, got {worktime}")
    unknown = set(params) - {"worktime"}
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}; sleep takes only 'worktime'")


@tasks.task("sleep", validate=_check_sleep, retry=RetryPolicy(max_attempts=3))
async def sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleep `worktime` seconds, reporting progress every second; stops when cancelled."""
    worktime = float(ctx.params.get("worktime", 1))
    elapsed = 0.0
    await ctx.progress(0, f"sleeping {worktime:g}s")
    while elapsed < worktime:
        step = min(1.0, worktime - elapsed)
        if await ctx.wait_cancelled(step):
            raise CancelledByCaller(f"cancelled after {elapsed:g}s of {worktime:g}s")
        elapsed += step
        await ctx.progress(int(100 * elapsed / worktime), f"slept {elapsed:g}s of {worktime:g}s")
    return {"slept_seconds": worktime}


class CancelledByCaller(PermanentError):
    """The task stopped because the operation was cancelled."""


@tasks.task("noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    """Return the params unchanged."""
    return ctx.params


def _check_fail(params: Mapping[str, Any]) -> None:
    if not isinstance(params.get("message", ""), str):
        raise ValueError("message must be a string")


@tasks.task(
    "fail",
    validate=_check_fail,
    retry=RetryPolicy(max_attempts=3, min_backoff=0.05, max_backoff=0.2),
)
async def fail(ctx: TaskContext) -> None:
    """Fail: permanently if params.permanent, else transiently (retried)."""
    message = str(ctx.params.get("message", "failed on purpose"))
    if ctx.params.get("permanent"):
        raise PermanentError(message)
    raise TransientError(message)
