"""Tasks that log from their handler: where each kind of handler runs (a task
process for sync handlers, the task loop for async ones), its entries are
tagged with the attempt under --log-format json."""

from __future__ import annotations

import logging

from longrun_core.tasks import TaskContext, TaskSet

tasks = TaskSet()
log = logging.getLogger("tests.logging_tasks")


@tasks.task("logs_sync")
def logs_sync(ctx: TaskContext) -> dict[str, str]:
    log.warning("hello from logs_sync")
    return {"logged": "sync"}


@tasks.task("logs_async")
async def logs_async(ctx: TaskContext) -> dict[str, str]:
    log.warning("hello from logs_async")
    return {"logged": "async"}
