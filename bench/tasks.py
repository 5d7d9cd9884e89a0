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


@tasks.task(
    "span",
    retry=RetryPolicy(max_attempts=5, min_backoff=0.05, max_backoff=0.2),
    isolation="inline",
)
async def span(ctx: TaskContext) -> dict[str, Any]:
    """Sleep `params.ms` milliseconds, appending `start`/`end` lines (wall
    clock, process id) to `params.dir`/<operation>-<attempt>.span: the
    concurrency-limit benchmark counts overlaps from them. Inline, so
    killing the worker ends it."""
    import os
    from pathlib import Path

    op_id = ctx.operation.rsplit("/", 1)[-1]
    path = Path(str(ctx.params["dir"])) / f"{op_id}-{ctx.attempt}.span"
    with path.open("a") as out:
        out.write(f"start {time.time():.6f} {os.getpid()}\n")
    await asyncio.sleep(float(ctx.params.get("ms", 100)) / 1000)
    with path.open("a") as out:
        out.write(f"end {time.time():.6f} {os.getpid()}\n")
    return {}
