"""Awaiting a synchronous gRPC channel's calls on the event loop.

`multicallable.future(...)` starts a call without holding a Python thread;
the channel's own completion thread resolves it, and `await_call` hands the
result to the loop. Cheaper than a blocking call on an executor thread
(submit, a thread wake-up, a Condition per call) and it cannot exhaust an
executor when calls are slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Sequence
from typing import Any

import grpc

_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


async def await_call(call: Any) -> Any:
    """The result of a grpc.Future (its RpcError raised); cancelling the
    awaiting task cancels the RPC."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(done: Any) -> None:
        if waiter.done():
            return
        try:
            waiter.set_result(done.result())
        except grpc.RpcError as exc:
            waiter.set_exception(exc)
        except grpc.FutureCancelledError:
            waiter.cancel()

    def on_done(done: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(settle, done)

    call.add_done_callback(on_done)
    try:
        return await waiter
    except asyncio.CancelledError:
        call.cancel()
        raise


async def retried(
    method: Any,
    request: Any,
    metadata: Sequence[tuple[str, str]],
    total: float,
    codes: Collection[grpc.StatusCode],
    *,
    multiplier: float = 2.0,
) -> Any:
    """`method(request)` until it succeeds, fails with a code not in `codes`,
    or `total` seconds pass (then its last RpcError), pausing 0.1 s, then
    `multiplier` times longer each time (at most 5 s)."""
    deadline = time.monotonic() + total
    pause = _FIRST_PAUSE
    while True:
        left = max(deadline - time.monotonic(), 0.001)
        try:
            return await await_call(method.future(request, timeout=left, metadata=metadata))
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code not in codes or time.monotonic() + pause >= deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * multiplier, _MAX_PAUSE)
