"""Wait for a condition instead of sleeping a guessed amount of time."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    *,
    description: str | None = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    *,
    description: str | None = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.01,
    *,
    description: str | None = None,
) -> object:
    """Poll `predicate` (sync or async) every `interval` seconds until it
    returns something truthy, and return that value (so a predicate returning
    `Record | None` yields a `Record`). After `timeout` seconds, raise
    AssertionError naming the condition (`description`, else the predicate)
    and its last value. Exceptions from the predicate propagate."""
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
