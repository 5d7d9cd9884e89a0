"""Bench-only tasks, loaded with LONGRUN_TASK_MODULES="longrun_worker.builtin_tasks bench.tasks"
by the server (validation) and the workers (execution).

`stamp` returns the wall-clock time at which its body ended, so a waiter on
the same machine can tell how long the outcome write, the change
notification and the WaitOperation return took: `time.time()` on return
minus `done_at`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from longrun_core.tasks import RetryPolicy, TaskContext, TaskSet

tasks = TaskSet()


def _check_stamp(params: Mapping[str, Any]) -> None:
    sleep = params.get("sleep", 0)
    if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or not 0 <= sleep <= 600:
        raise ValueError("sleep must be a number of seconds between 0 and 600")


@tasks.task("stamp", validate=_check_stamp, retry=RetryPolicy(max_attempts=1))
async def stamp(ctx: TaskContext) -> dict[str, Any]:
    """Sleep `params.sleep` seconds, then return {"done_at": time.time()}."""
    sleep = float(ctx.params.get("sleep", 0))
    if sleep > 0:
        await asyncio.sleep(sleep)
    return {"done_at": time.time()}
