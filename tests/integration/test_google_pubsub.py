"""Pub/Sub-specific behaviour of PubSubTaskQueue on the emulator (the shared
behaviour is in tests/contract)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from longrun_core.backends import build_backends
from longrun_core.errors import StartupError, Unavailable
from longrun_core.google import pubsub_queue
from longrun_core.google.pubsub_queue import PubSubTaskQueue
from longrun_core.queue import Delivery, TaskMessage
from longrun_core.settings import BackendSettings
from tests.contract.google_backends import (
    TEST_SIGNING_KEYS,
    eventually,
    fresh_project,
    make_pubsub_queue,
    require_emulators,
)

pytestmark = pytest.mark.google

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(params=["streaming", "unary"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[PubSubTaskQueue]:
    require_emulators()
    q = await make_pubsub_queue(visibility_timeout=10.0, max_deliveries=5, pull=request.param)
    try:
        yield q
    finally:
        await q.close()


async def _receive_one(q: PubSubTaskQueue, timeout: float = 15.0) -> Delivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await q.receive(1, deadline - time.monotonic())
        if got:
            return got[0]
    raise AssertionError(f"no message within {timeout}s")


def _sibling(q: PubSubTaskQueue) -> tuple[str, str]:
    """(project, suffix) of `q`, to build another consumer of its subscription."""
    return q.project, q.subscription_path.rsplit("workers-", 1)[1]


async def test_start_creates_topics_and_subscriptions_with_the_policy() -> None:
    require_emulators()
    project = fresh_project()
    settings = BackendSettings(
        project=project,
        pubsub_topic="jobs",
        pubsub_subscription="jobs-workers",
        pubsub_dead_letter_topic="jobs-dead",
        visibility_timeout=2.5,
        max_deliveries=250,
        message_signing_keys=TEST_SIGNING_KEYS,
    )
    q = PubSubTaskQueue.from_settings(settings)
    await q.start()
    await q.start()  # everything exists now: fine
    try:
        sub = await asyncio.to_thread(
            SubscriberClient().get_subscription,
            subscription=f"projects/{project}/subscriptions/jobs-workers",
        )
        assert sub.topic == f"projects/{project}/topics/jobs"
        assert sub.ack_deadline_seconds == 10  # clamped up from 2.5
        assert sub.dead_letter_policy.dead_letter_topic == f"projects/{project}/topics/jobs-dead"
        assert sub.dead_letter_policy.max_delivery_attempts == 100  # clamped down from 250
        inspect = await asyncio.to_thread(
            SubscriberClient().get_subscription,
            subscription=f"projects/{project}/subscriptions/jobs-dead-inspect",
        )
        assert inspect.topic == f"projects/{project}/topics/jobs-dead"
    finally:
        await q.close()


def test_policy_bounds() -> None:
    assert pubsub_queue.ack_deadline_for(0.5) == 10
    assert pubsub_queue.ack_deadline_for(42.2) == 43
    assert pubsub_queue.ack_deadline_for(3600) == 600
    assert pubsub_queue.delivery_attempts_for(1) == 5
    assert pubsub_queue.delivery_attempts_for(12) == 12
    assert pubsub_queue.delivery_attempts_for(1000) == 100


async def test_message_layout(queue: PubSubTaskQueue) -> None:
    await queue.publish(TaskMessage("operations/layout", "resize", 3))
    d = await _receive_one(queue)
    raw = d._raw if queue.pull == "streaming" else d._received.message  # type: ignore[attr-defined]
    assert raw.data == b"operations/layout"
    attributes = dict(raw.attributes)
    signature = attributes.pop("signature")
    assert attributes == {
        "operation": "operations/layout",
        "task": "resize",
        "attempt": "3",
        "signature_key": "test-k1",
    }
    assert re.fullmatch(r"[0-9a-f]{64}", signature)
    TEST_SIGNING_KEYS.verify(raw.data, dict(raw.attributes))
    assert d.delivery_attempt == 1
    await d.ack()


async def test_nack_with_delay_comes_back_after_the_delay(queue: PubSubTaskQueue) -> None:
    await queue.publish(TaskMessage("operations/later", "noop"))
    first = await _receive_one(queue)
    await first.nack(2.0)
    nacked = time.monotonic()
    second = await _receive_one(queue)
    waited = time.monotonic() - nacked
    assert second.message == first.message
    assert second.delivery_attempt == 2
    assert 1.5 <= waited < 9.0  # the delay, not the 10 s ack deadline
    await second.ack()


@pytest.mark.slow
async def test_extend_keeps_the_message_past_its_ack_deadline(queue: PubSubTaskQueue) -> None:
    await queue.publish(TaskMessage("operations/long", "noop"))
    d = await _receive_one(queue)
    await d.extend(30)
    assert await queue.receive(1, queue.ack_deadline + 3.0) == []
    await d.ack()


@pytest.mark.slow
async def test_close_returns_buffered_messages_at_once_and_held_ones_after_their_lease() -> None:
    require_emulators()
    a = await make_pubsub_queue(visibility_timeout=10.0, concurrency=1)
    project, suffix = _sibling(a)
    names = {f"operations/c{i}" for i in range(3)}
    for name in names:
        await a.publish(TaskMessage(name, "noop"))
    held = await _receive_one(a)
    # The next message arrives in a's buffer (flow control allows one more).
    await eventually(lambda: a._buffer is not None and a._buffer.qsize() >= 1, what="buffered")
    await a.close()
    closed = time.monotonic()
    b = await make_pubsub_queue(visibility_timeout=10.0, project=project, suffix=suffix)
    try:
        seen: dict[str, float] = {}
        while set(seen) != names and time.monotonic() - closed < 30:
            for d in await b.receive(3, 1.0):
                seen.setdefault(d.message.operation, time.monotonic() - closed)
                await d.ack()
        assert set(seen) == names
        assert seen[held.message.operation] >= 5.0  # only once its lease ran out
        assert all(t < 5.0 for n, t in seen.items() if n != held.message.operation)
    finally:
        await b.close()


async def test_flow_control_bounds_what_one_receive_takes() -> None:
    require_emulators()
    q = await make_pubsub_queue(concurrency=2)
    try:
        for i in range(8):
            await q.publish(TaskMessage(f"operations/f{i}", "noop"))
        got = await q.receive(8, 10.0)
        assert 1 <= len(got) <= 2
        for d in got:
            await d.ack()
    finally:
        await q.close()


async def test_concurrency_defaults_to_the_first_receive(queue: PubSubTaskQueue) -> None:
    if queue.pull == "unary":
        pytest.skip("unary pulls ask for max_messages each time")
    assert queue.concurrency is None
    assert await queue.receive(3, 0.05) == []
    assert queue.concurrency == 3


@pytest.mark.slow
async def test_dead_letter_policy_after_max_deliveries(queue: PubSubTaskQueue) -> None:
    await queue.publish(TaskMessage("operations/poison", "noop", 1))
    attempts = []
    for _ in range(5):
        d = await _receive_one(queue)
        attempts.append(d.delivery_attempt)
        await d.nack(0)
    assert attempts == [1, 2, 3, 4, 5]
    dead: list[tuple[TaskMessage, str]] = []

    async def dead_seen() -> bool:
        nonlocal dead
        if queue.pull == "unary":
            # The emulator forwards a message only when it would deliver it
            # again, i.e. during a pull (the service does it on its own).
            assert await queue.receive(1, 0.2) == []
        dead = await queue.dead_letters()
        return bool(dead)

    await eventually(dead_seen, timeout=15, interval=0.2, what="dead letter")
    poison = TaskMessage("operations/poison", "noop", 1)
    assert dead == [(poison, "delivered 5 times without an ack")]
    assert await queue.receive(1, 2.0) == []


async def test_dead_letters_keep_reasons_order_and_can_be_read_again(
    queue: PubSubTaskQueue,
) -> None:
    for i in range(3):
        await queue.publish(TaskMessage(f"operations/d{i}", "noop", i))
        d = await _receive_one(queue)
        await d.dead_letter(f"reason {i}")
    expected = [(TaskMessage(f"operations/d{i}", "noop", i), f"reason {i}") for i in range(3)]

    async def all_dead() -> bool:
        return await queue.dead_letters() == expected

    await eventually(all_dead, timeout=15, interval=0.2, what="three dead letters")
    assert await queue.dead_letters() == expected  # reading does not consume them
    assert await queue.dead_letters(limit=2) == expected[:2]


async def test_foreign_message_goes_to_the_dead_letter_topic(queue: PubSubTaskQueue) -> None:
    """Signed (so it passes verification) but no task message: forwarded."""
    publisher = PublisherClient()
    attributes = TEST_SIGNING_KEYS.signed(b"hello", {"origin": "elsewhere"})
    await asyncio.to_thread(
        lambda: publisher.publish(queue.topic_path, b"hello", **attributes).result()
    )
    assert await queue.receive(1, 2.0) == []
    subscriber = SubscriberClient()
    reasons: list[str] = []

    def pull() -> bool:
        resp = subscriber.pull(
            request={"subscription": queue.dead_letter_subscription_path, "max_messages": 5},
            timeout=5.0,
        )
        reasons.extend(r.message.attributes.get("reason", "") for r in resp.received_messages)
        return bool(reasons)

    await eventually(lambda: asyncio.to_thread(pull), timeout=15, what="forwarded")
    assert reasons[0].startswith("not a task message")
    assert await queue.dead_letters() == []  # not a TaskMessage: not listed
    publisher.stop()
    subscriber.close()


async def test_publish_to_an_unreachable_service_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_emulators()
    monkeypatch.setattr(pubsub_queue, "PUBLISH_TIMEOUT", 1.0)
    monkeypatch.setattr(pubsub_queue, "RPC_TIMEOUT", 0.5)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # discard port: nothing listens
    q = PubSubTaskQueue(
        project=fresh_project(),
        topic="tasks",
        subscription="subs",
        dead_letter_topic="dead",
        signing_keys=TEST_SIGNING_KEYS,
    )
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await q.publish(TaskMessage("operations/x", "noop"))
    assert time.monotonic() - started < 10
    with pytest.raises(Unavailable):
        await q.start()
    await q.close()


async def test_receive_after_close_is_unavailable(queue: PubSubTaskQueue) -> None:
    waiting = asyncio.create_task(queue.receive(1, 30.0))
    if queue.pull == "streaming":
        await eventually(lambda: queue._stream is not None, what="stream open")
    else:
        await asyncio.sleep(0.2)  # let the pull start (nothing to await on)
    await queue.close()
    assert await asyncio.wait_for(waiting, 5.0) == []
    with pytest.raises(Unavailable):
        await queue.receive(1, 0.1)


async def test_many_concurrent_publishes_each_received_once(queue: PubSubTaskQueue) -> None:
    names = [f"operations/p{i}" for i in range(200)]
    await asyncio.gather(*(queue.publish(TaskMessage(n, "noop")) for n in names))
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(counts) < len(names) and time.monotonic() < deadline:
        for d in await queue.receive(50, 1.0):
            counts[d.message.operation] = counts.get(d.message.operation, 0) + 1
            await d.ack()
    assert set(counts) == set(names)
    assert all(c == 1 for c in counts.values())


async def test_a_cancelled_receive_loses_nothing(queue: PubSubTaskQueue) -> None:
    waiting = asyncio.create_task(queue.receive(1, 30.0))
    await asyncio.sleep(0.3)  # let it wait (there is no event to await)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await queue.publish(TaskMessage("operations/kept", "noop"))
    started = time.monotonic()
    d = await _receive_one(queue)
    assert d.message.operation == "operations/kept"
    assert time.monotonic() - started < 5.0  # given back, not held until its deadline
    await d.ack()


_CHILD = """
import asyncio, sys
from tests.contract.google_backends import make_pubsub_queue

async def main() -> None:
    q = await make_pubsub_queue(project=sys.argv[1], suffix=sys.argv[2], pull=sys.argv[3])
    got = await q.receive(1, 20.0)
    print(got[0].message.operation, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_unary_pull_survives_a_killed_consumer_on_the_emulator() -> None:
    """A killed consumer leaves nothing behind that takes later messages (the
    emulator keeps a killed streaming pull alive and feeds it: see the module
    docstring of longrun_core.google.pubsub_queue)."""
    require_emulators()
    q = await make_pubsub_queue(pull="unary")
    project, suffix = _sibling(q)
    try:
        await q.publish(TaskMessage("operations/first", "noop"))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            project,
            suffix,
            "unary",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.decode().strip() == "operations/first"
        child.kill()
        await child.wait()
        names = {f"operations/after{i}" for i in range(5)}
        for name in names:
            await q.publish(TaskMessage(name, "noop"))
        started = time.monotonic()
        seen: set[str] = set()
        while not names <= seen and time.monotonic() - started < 8:
            for d in await q.receive(5, 1.0):
                seen.add(d.message.operation)
                await d.ack()
        assert names <= seen
    finally:
        await q.close()


def test_a_pubsub_queue_without_signing_keys_refuses_to_start(tmp_path: Path) -> None:
    settings = BackendSettings(
        store="sqlite", queue="pubsub", sqlite_path=tmp_path / "x.db", project=fresh_project()
    )
    with pytest.raises(StartupError, match="LONGRUN_MESSAGE_SIGNING_KEYS"):
        build_backends(settings)
    with pytest.raises(StartupError, match="message signing keys"):
        PubSubTaskQueue(project=fresh_project(), topic="t", subscription="s", dead_letter_topic="d")
