"""A task that records its own start and end (tests of concurrency limits):
`stamped` sleeps `ms` milliseconds and appends `start`/`end` lines (wall
clock, its process id, its operation and attempt) to a file per attempt in
`dir`. Inline on the worker's loop, so killing the worker ends it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from longrun_core.tasks import RetryPolicy, TaskContext, TaskSet, TransientError

tasks = TaskSet()


@tasks.task(
    "stamped",
    retry=RetryPolicy(max_attempts=5, min_backoff=0.05, max_backoff=0.2),
    isolation="inline",
)
async def stamped(ctx: TaskContext) -> dict[str, Any]:
    ms = float(ctx.params.get("ms", 100))
    op_id = ctx.operation.rsplit("/", 1)[-1]
    path = Path(str(ctx.params["dir"])) / f"{op_id}-{ctx.attempt}.stamps"
    with path.open("a") as out:
        out.write(f"start {time.time():.6f} {os.getpid()}\n")
    await asyncio.sleep(ms / 1000)
    with path.open("a") as out:
        out.write(f"end {time.time():.6f} {os.getpid()}\n")
    return {"ms": ms}


@tasks.task(
    "stamped_failing",
    retry=RetryPolicy(max_attempts=2, min_backoff=30, max_backoff=30),
    isolation="inline",
)
async def stamped_failing(ctx: TaskContext) -> dict[str, Any]:
    """Stamp the attempt's start like `stamped`, then fail transiently (its
    own retry policy is far off what a queue's retry_config sets)."""
    op_id = ctx.operation.rsplit("/", 1)[-1]
    path = Path(str(ctx.params["dir"])) / f"{op_id}-{ctx.attempt}.stamps"
    with path.open("a") as out:
        out.write(f"start {time.time():.6f} {os.getpid()}\n")
    raise TransientError("failing on purpose")
