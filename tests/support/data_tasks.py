"""Tasks whose outcomes cannot be stored as they are (never loaded by
default): the bounded-data and canonical-error acceptance tests load them
with `--task-module tests.support.data_tasks`."""

from __future__ import annotations

from typing import Any

from longrun_core.tasks import PermanentError, TaskContext, TaskSet

tasks = TaskSet()


@tasks.task("big_result")
async def big_result(ctx: TaskContext) -> dict[str, Any]:
    """A result of about `size` bytes."""
    return {"blob": "x" * int(ctx.params["size"])}


@tasks.task("nan_result")
async def nan_result(ctx: TaskContext) -> dict[str, Any]:
    return {"ratio": float("nan"), "ok": 1}


@tasks.task("deep_result")
async def deep_result(ctx: TaskContext) -> dict[str, Any]:
    """Nested `depth` objects deep (default: far past any recursion limit)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(int(ctx.params.get("depth", 5000)) - 1):
        value = {"a": value}
    return value


class Unprintable(PermanentError):
    def __str__(self) -> str:
        raise RuntimeError("this exception has no text")


@tasks.task("unprintable_error")
async def unprintable_error(ctx: TaskContext) -> None:
    raise Unprintable()
