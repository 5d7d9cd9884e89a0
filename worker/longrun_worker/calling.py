"""Calling a handler so that nothing it raises escapes: SystemExit,
KeyboardInterrupt, GeneratorExit and CancelledError end the attempt, never
the loop, thread or process that runs it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

Called = tuple[Any, BaseException | None]


async def call_async(handler: Callable[..., Any], ctx: Any) -> Called:
    """On an event loop: (result, None), or (None, what the handler raised)."""
    try:
        result = handler(ctx)
        if inspect.isawaitable(result):
            result = await result
    except BaseException as exc:  # the attempt's failure, whatever it is
        return None, exc
    return result, None


def call_blocking(handler: Callable[..., Any], ctx: Any) -> Called:
    """On a thread with no running loop: a sync handler is called as it is,
    an async one (or a returned awaitable) runs on a loop of its own."""
    try:
        result = handler(ctx)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except BaseException as exc:  # the attempt's failure, whatever it is
        return None, exc
    return result, None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
