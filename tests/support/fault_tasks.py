"""Tasks for fault-injection tests and the chaos run (never loaded by default).

`record` appends one line per execution that reached its end to
`$LONGRUN_TEST_RECORD_DIR/<operation id>`, so a test can count executions
across processes. `crash` kills its worker process every time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from longrun_core.tasks import PermanentError, RetryPolicy, TaskContext, TaskSet

tasks = TaskSet()


@tasks.task("record", retry=RetryPolicy(max_attempts=10, min_backoff=0.05, max_backoff=0.5))
async def record(ctx: TaskContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 0))
    if seconds and await ctx.wait_cancelled(seconds):
        raise PermanentError("cancelled")
    directory = Path(os.environ["LONGRUN_TEST_RECORD_DIR"])
    op_id = ctx.operation.rsplit("/", 1)[-1]
    with (directory / op_id).open("a") as fh:
        fh.write(f"{ctx.attempt} {os.getpid()}\n")
    return {"attempt": ctx.attempt}


@tasks.task("crash", retry=RetryPolicy(max_attempts=3, min_backoff=0.05, max_backoff=0.1))
async def crash(ctx: TaskContext) -> None:
    os._exit(137)
