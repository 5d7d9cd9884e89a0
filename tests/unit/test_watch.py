"""WatchHub: per-process fan-out of change notifications to waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from longrun_core.watch import WatchHub
from tests.support.waiting import wait_until

NAME = "operations/a"


class Source:
    """Records starts and stops of the backend watch per operation name."""

    def __init__(self, start_delay: float = 0.0) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        #: Names whose watch finished starting and is not stopped yet.
        self.live: set[str] = set()
        self.start_delay = start_delay

    async def start(self, name: str) -> Callable[[], None]:
        self.started.append(name)
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        self.live.add(name)

        def stop() -> None:
            self.stopped.append(name)
            self.live.discard(name)

        return stop


async def test_notify_wakes_a_waiter() -> None:
    hub = WatchHub()
    async with hub.subscribe(NAME) as sub:
        waiter = asyncio.create_task(sub.changed(timeout=5))
        await asyncio.sleep(0)  # let it wait
        assert not waiter.done()

        hub.notify(NAME)

        assert await asyncio.wait_for(waiter, 1) is True


async def test_notify_wakes_every_waiter_of_that_operation_only() -> None:
    hub = WatchHub()
    async with AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(hub.subscribe(NAME)) for _ in range(3)]
        other = await stack.enter_async_context(hub.subscribe("operations/b"))
        waiters = [asyncio.create_task(s.changed(timeout=5)) for s in subs]
        other_waiter = asyncio.create_task(other.changed(timeout=0.2))
        await asyncio.sleep(0)

        hub.notify(NAME)

        assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
        assert await other_waiter is False


async def test_a_change_between_subscribe_and_wait_is_not_lost() -> None:
    hub = WatchHub()
    async with hub.subscribe(NAME) as sub:
        hub.notify(NAME)  # e.g. while the waiter reads the record

        assert await sub.changed(timeout=0) is True
        # ... and it is consumed: the next wait sees only later changes.
        assert await sub.changed(timeout=0.05) is False
        hub.notify(NAME)
        assert await sub.changed(timeout=0) is True


async def test_several_changes_before_a_wait_wake_it_once() -> None:
    hub = WatchHub()
    async with hub.subscribe(NAME) as sub:
        hub.notify(NAME)
        hub.notify(NAME)
        hub.notify_all()
        assert await sub.changed(timeout=0) is True
        assert await sub.changed(timeout=0.02) is False


async def test_timeout_returns_false_after_the_timeout() -> None:
    hub = WatchHub()
    loop = asyncio.get_running_loop()
    async with hub.subscribe(NAME) as sub:
        started = loop.time()
        assert await sub.changed(timeout=0.1) is False
        assert loop.time() - started >= 0.09


async def test_notify_all_wakes_every_operation() -> None:
    hub = WatchHub()
    async with hub.subscribe("operations/a") as a, hub.subscribe("operations/b") as b:
        waiters = [asyncio.create_task(s.changed(timeout=5)) for s in (a, b)]
        await asyncio.sleep(0)

        hub.notify_all()

        assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True]


async def test_notify_of_an_unwatched_operation_keeps_nothing() -> None:
    hub = WatchHub()
    hub.notify(NAME)
    assert hub.watched == 0
    async with hub.subscribe(NAME) as sub:  # a notification before subscribing is not seen
        assert await sub.changed(timeout=0.02) is False


async def test_the_source_starts_once_for_many_waiters_and_stops_after_the_last() -> None:
    source = Source()
    hub = WatchHub(source.start)

    async with AsyncExitStack() as outer:
        await outer.enter_async_context(hub.subscribe(NAME))
        async with AsyncExitStack() as inner:
            for _ in range(4):
                await inner.enter_async_context(hub.subscribe(NAME))
            assert source.started == [NAME]
            assert hub.watched == 1
        assert source.stopped == []  # one waiter is left
        assert hub.watched == 1

    assert source.started == [NAME]
    assert source.stopped == [NAME]
    assert hub.watched == 0

    async with hub.subscribe(NAME):  # a later waiter starts it again
        assert source.started == [NAME, NAME]
    assert source.stopped == [NAME, NAME]


async def test_waiters_arriving_while_the_source_starts_share_it() -> None:
    source = Source(start_delay=0.05)
    hub = WatchHub(source.start)
    inside = 0
    release = asyncio.Event()

    async def wait_on_it() -> None:
        nonlocal inside
        async with hub.subscribe(NAME):
            inside += 1
            await release.wait()

    tasks = [asyncio.create_task(wait_on_it()) for _ in range(5)]
    await wait_until(lambda: inside == 5, timeout=2)
    assert source.started == [NAME]

    release.set()
    await asyncio.gather(*tasks)
    assert source.stopped == [NAME]
    assert hub.watched == 0


async def test_a_waiter_cancelled_while_the_source_starts_leaves_it_for_the_others() -> None:
    source = Source(start_delay=0.1)
    hub = WatchHub(source.start)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def first() -> None:
        async with hub.subscribe(NAME):
            await release.wait()

    async def second() -> None:
        async with hub.subscribe(NAME):
            entered.set()
            await release.wait()

    starter = asyncio.create_task(first())
    await wait_until(lambda: source.started == [NAME])
    joiner = asyncio.create_task(second())
    await asyncio.wait_for(entered.wait(), 1)
    starter.cancel()  # e.g. its RPC was cancelled
    await asyncio.gather(starter, return_exceptions=True)

    try:
        await wait_until(lambda: NAME in source.live, timeout=1)
    finally:
        release.set()
        await joiner
    assert source.live == set()


async def test_each_operation_has_its_own_source() -> None:
    source = Source()
    hub = WatchHub(source.start)
    async with hub.subscribe("operations/a"), hub.subscribe("operations/b"):
        assert sorted(source.started) == ["operations/a", "operations/b"]
        assert hub.watched == 2
        assert source.stopped == []
    assert sorted(source.stopped) == ["operations/a", "operations/b"]


async def test_a_waiter_leaving_with_an_error_still_stops_the_source() -> None:
    source = Source()
    hub = WatchHub(source.start)
    try:
        async with hub.subscribe(NAME):
            raise RuntimeError("rpc cancelled")
    except RuntimeError:
        pass
    assert source.stopped == [NAME]
    assert hub.watched == 0
