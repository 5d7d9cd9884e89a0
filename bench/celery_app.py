"""The Celery baseline: the same no-op (and stamp) tasks as bench.tasks, with
redis as broker and result backend (`BENCH_REDIS_URL`, started by the bench).

Run by `celery -A bench.celery_app worker --pool prefork --concurrency 2`."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped,import-not-found,unused-ignore]

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def noop(**params: Any) -> dict[str, Any]:
    """Return the params unchanged (longrun's `noop`)."""
    return params


def stamp(sleep: float = 0.0) -> dict[str, float]:
    """Sleep, then return the wall-clock time the body ended (bench.tasks.stamp)."""
    if sleep > 0:
        time.sleep(sleep)
    return {"done_at": time.time()}


def make_app(url: str) -> Any:
    """A Celery app on `url` with `bench.noop` and `bench.stamp`. The client
    makes one per redis it talks to (an app caches its connections)."""
    celery = Celery("bench", broker=url, backend=url, set_as_current=False)
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    celery.task(name="bench.noop")(noop)
    celery.task(name="bench.stamp")(stamp)
    return celery


app = make_app(URL)
