"""Tasks for fault-injection tests and the chaos run (never loaded by default).

`record` appends one line per execution that reached its end to
`$LONGRUN_TEST_RECORD_DIR/<operation id>`, so a test can count executions
across processes; `record_once` is the same with max_attempts=1, and
`record_sync` a sync one; `fails_once` fails transiently on its first attempt
only. The
misbehaving tasks note each start there (`note`), then: `crash` kills its
worker process every time (an inline async task is not isolated), `exits`
raises SystemExit, `hard_exit` calls os._exit, `segfault` dereferences NULL,
`swallows_cancel` ignores every cancellation, `ignores_cancel` ignores the
cancel and SIGTERM, `blocks_loop` blocks its event loop, `forks` leaves a
zombie and a live process behind."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from longrun_core.tasks import PermanentError, RetryPolicy, TaskContext, TaskSet, TransientError

tasks = TaskSet()

TWICE = RetryPolicy(max_attempts=2, min_backoff=0.05, max_backoff=0.2)


def note(ctx: TaskContext, line: str) -> None:
    directory = Path(os.environ["LONGRUN_TEST_RECORD_DIR"])
    op_id = ctx.operation.rsplit("/", 1)[-1]
    with (directory / op_id).open("a") as fh:
        fh.write(f"{line}\n")


async def _record(ctx: TaskContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 0))
    if seconds and await ctx.wait_cancelled(seconds):
        raise PermanentError("cancelled")
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    return {"attempt": ctx.attempt}


@tasks.task("record", retry=RetryPolicy(max_attempts=10, min_backoff=0.05, max_backoff=0.5))
async def record(ctx: TaskContext) -> dict[str, Any]:
    return await _record(ctx)


@tasks.task("record_once", retry=RetryPolicy(max_attempts=1))
async def record_once(ctx: TaskContext) -> dict[str, Any]:
    return await _record(ctx)


@tasks.task("record_sync")
def record_sync(ctx: TaskContext) -> dict[str, Any]:
    """`record` as a sync task (in a task process by default)."""
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    return {"attempt": ctx.attempt}


@tasks.task("fails_once", retry=RetryPolicy(max_attempts=3, min_backoff=0.05, max_backoff=0.1))
async def fails_once(ctx: TaskContext) -> dict[str, Any]:
    """Fail transiently on the first attempt, succeed on the next."""
    if ctx.attempt == 1:
        raise TransientError("the first attempt fails")
    return {"attempt": ctx.attempt}


@tasks.task("crash", retry=RetryPolicy(max_attempts=3, min_backoff=0.05, max_backoff=0.1))
async def crash(ctx: TaskContext) -> None:
    os._exit(137)


@tasks.task("exits", retry=TWICE)
async def exits(ctx: TaskContext) -> None:
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    sys.exit(3)


@tasks.task("hard_exit", retry=TWICE)
def hard_exit(ctx: TaskContext) -> None:
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    os._exit(3)


@tasks.task("segfault", retry=TWICE)
def segfault(ctx: TaskContext) -> None:
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    ctypes.string_at(0)


@tasks.task("swallows_cancel", cancel_grace=1.0)
async def swallows_cancel(ctx: TaskContext) -> None:
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue


@tasks.task("ignores_cancel", cancel_grace=1.0)
def ignores_cancel(ctx: TaskContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    time.sleep(3600)


@tasks.task("blocks_loop")
async def blocks_loop(ctx: TaskContext) -> dict[str, Any]:
    note(ctx, f"{ctx.attempt} {os.getpid()}")
    time.sleep(float(ctx.params.get("seconds", 15)))  # noqa: ASYNC251 - the point
    return {"attempt": ctx.attempt}


@tasks.task("forks")
def forks(ctx: TaskContext) -> dict[str, Any]:
    exited = os.fork()
    if exited == 0:
        os._exit(0)
    lingering = os.fork()
    if lingering == 0:
        time.sleep(3600)
        os._exit(0)
    time.sleep(0.2)  # the first child is a zombie by now
    note(ctx, f"{exited} {lingering}")
    return {"children": [exited, lingering]}
