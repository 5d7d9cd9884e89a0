"""Wait for a condition instead of sleeping a guessed amount of time."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,
    interval: float = ...,
    description: str | None = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = ...,
    interval: float = ...,
    description: str | None = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    description: str | None = None,
) -> object:
    """Poll `predicate` (sync or async) until it returns something truthy, and
    return that value. Raises AssertionError naming the condition and its last
    value after `timeout` seconds. Exceptions from the predicate propagate."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            what = description or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"condition not met within {timeout:g}s: {what} (last value: {value!r})"
            )
        await asyncio.sleep(interval)
