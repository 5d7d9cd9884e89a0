"""The TaskQueue contract: every adapter must pass all of it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from longrun_core.queue import DeadLetter, Delivery, TaskMessage, TaskQueue
from longrun_core.signing import (
    BAD_SIGNATURE,
    UNKNOWN_KEY,
    UNSIGNED,
    SigningKeys,
    message_fields,
)
from tests.contract.conftest import publish_raw, visibility

S5 = timedelta(seconds=5)


async def _receive_one(queue: TaskQueue, timeout: float = 15.0) -> Delivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await queue.receive(1, deadline - time.monotonic())
        if got:
            assert len(got) == 1
            return got[0]
    raise AssertionError(f"no message within {timeout}s")


async def test_publish_then_receive_carries_the_message(queue: TaskQueue) -> None:
    msg = TaskMessage("operations/abc", "noop", 2)
    await queue.publish(msg)
    delivery = await _receive_one(queue)
    assert delivery.message == msg
    assert delivery.delivery_attempt >= 1
    await delivery.ack()


async def test_acked_message_is_not_delivered_again(queue: TaskQueue) -> None:
    await queue.publish(TaskMessage("operations/acked", "noop"))
    delivery = await _receive_one(queue)
    await delivery.ack()
    lease = visibility(queue)
    assert await queue.receive(1, lease + 1.0) == []


async def test_idle_receive_returns_empty_after_timeout(queue: TaskQueue) -> None:
    started = time.monotonic()
    assert await queue.receive(5, 0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_publish_wakes_a_waiting_receive_promptly(queue: TaskQueue) -> None:
    receiving = asyncio.create_task(queue.receive(1, 20.0))
    await asyncio.sleep(0.2)  # let the receive start waiting (it is what we measure against)
    published = time.monotonic()
    await queue.publish(TaskMessage("operations/wake", "noop"))
    got = await receiving
    assert got and got[0].message.operation == "operations/wake"
    assert time.monotonic() - published < 2.0
    await got[0].ack()


async def test_nacked_message_is_redelivered(queue: TaskQueue) -> None:
    await queue.publish(TaskMessage("operations/nack", "noop"))
    first = await _receive_one(queue)
    await first.nack(0)
    second = await _receive_one(queue)
    assert second.message == first.message
    assert second.delivery_attempt >= first.delivery_attempt
    await second.ack()


async def test_unacked_message_is_redelivered_after_its_lease(queue: TaskQueue) -> None:
    lease = visibility(queue)
    await queue.publish(TaskMessage("operations/lost", "noop"))
    first = await _receive_one(queue)
    taken = time.monotonic()
    second = await _receive_one(queue, timeout=lease * 3 + 10)
    assert second.message == first.message
    assert time.monotonic() - taken >= lease * 0.5
    await second.ack()


async def test_dead_lettered_message_is_kept_and_not_redelivered(queue: TaskQueue) -> None:
    await queue.publish(TaskMessage("operations/dead", "noop", 3))
    delivery = await _receive_one(queue)
    await delivery.dead_letter("failed after 3 attempts")
    deadline = time.monotonic() + 15
    dead: list[tuple[TaskMessage, str]] = []
    while time.monotonic() < deadline and not dead:
        dead = [d for d in await queue.dead_letters() if d[0].operation == "operations/dead"]
    assert dead and dead[0][0] == TaskMessage("operations/dead", "noop", 3)
    lease = visibility(queue)
    assert await queue.receive(1, lease + 1.0) == []


async def test_read_dead_letters_pages_newest_first_with_reason_time_and_deliveries(
    queue: TaskQueue,
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    for i in range(3):
        await queue.publish(TaskMessage(f"projects/p/operations/dl{i}", "noop", i + 1))
        delivery = await _receive_one(queue)
        assert delivery.message.operation == f"projects/p/operations/dl{i}"
        await delivery.dead_letter(f"poison {i}")
    deadline = time.monotonic() + 15
    letters: list[DeadLetter] = []
    while time.monotonic() < deadline and len(letters) < 3:
        letters = await queue.read_dead_letters(10)
    assert [d.message.operation for d in letters] == [
        f"projects/p/operations/dl{i}" for i in (2, 1, 0)
    ]  # newest first
    assert [d.reason for d in letters] == ["poison 2", "poison 1", "poison 0"]
    assert [d.message.attempt for d in letters] == [3, 2, 1]
    assert len({d.id for d in letters}) == 3
    for d in letters:
        assert d.dead_time is not None and before <= d.dead_time <= datetime.now(UTC) + S5
        assert d.deliveries == 1
    first = await queue.read_dead_letters(2)
    assert [d.id for d in first] == [d.id for d in letters[:2]]
    rest = await queue.read_dead_letters(2, before=first[-1].order)
    assert [d.id for d in rest] == [letters[2].id]
    assert await queue.read_dead_letters(0) == []


async def test_many_messages_each_delivered(queue: TaskQueue) -> None:
    sent = {f"operations/m{i}" for i in range(30)}
    await asyncio.gather(*(queue.publish(TaskMessage(n, "noop")) for n in sent))
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while seen != sent and time.monotonic() < deadline:
        for d in await queue.receive(10, 1.0):
            seen.add(d.message.operation)
            await d.ack()
    assert seen == sent


# ---- signed messages ----


def _signature(keys: SigningKeys, message: TaskMessage) -> dict[str, str]:
    return keys.sign(*message_fields(message))


async def _dead_reason(queue: TaskQueue, operation: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for message, reason in await queue.dead_letters():
            if message.operation == operation:
                return reason
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter for {operation}")


TRACE_A = "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01"
TRACE_B = "00-" + "c3" * 16 + "-" + "d4" * 8 + "-01"


async def test_the_trace_context_travels_with_the_message(queue: TaskQueue) -> None:
    msg = TaskMessage("operations/traced", "noop", 1, TRACE_A)
    await queue.publish(msg)
    delivery = await _receive_one(queue)
    assert delivery.message == msg
    assert delivery.message.trace == TRACE_A
    await delivery.ack()


@pytest.mark.parametrize(
    "case",
    ["unsigned", "tampered", "unknown-key", "other-secret", "trace-replaced", "trace-added"],
)
async def test_a_message_not_signed_by_the_queue_is_never_delivered(
    queue: TaskQueue, case: str
) -> None:
    """Published straight to the queue past `publish`: dead-lettered with the
    reason, counted, never handed out; the queue goes on delivering."""
    keys = queue.signing_keys
    assert keys is not None
    operation = f"operations/forged-{case}"
    genuine = TaskMessage(operation, "sleep", 0)
    sent, signature, kind = {
        "unsigned": (genuine, {}, UNSIGNED),
        # signed for task "sleep", delivered naming "noop"
        "tampered": (
            TaskMessage(operation, "noop", 0),
            _signature(keys, genuine),
            BAD_SIGNATURE,
        ),
        "unknown-key": (
            genuine,
            _signature(SigningKeys.parse("k9:" + "9" * 32), genuine),
            UNKNOWN_KEY,
        ),
        "other-secret": (
            genuine,
            _signature(SigningKeys.parse(f"{keys.kids[0]}:" + "x" * 32), genuine),
            BAD_SIGNATURE,
        ),
        # the trace context is signed too: re-parenting a message breaks it
        "trace-replaced": (
            TaskMessage(operation, "sleep", 0, TRACE_B),
            _signature(keys, TaskMessage(operation, "sleep", 0, TRACE_A)),
            BAD_SIGNATURE,
        ),
        "trace-added": (
            TaskMessage(operation, "sleep", 0, TRACE_B),
            _signature(keys, genuine),
            BAD_SIGNATURE,
        ),
    }[case]
    await publish_raw(queue, sent, signature)
    assert await queue.receive(1, 2.0) == []
    reason = await _dead_reason(queue, operation)
    assert reason.startswith(f"rejected ({kind}): "), reason
    assert queue.rejections.count(kind) == 1
    assert queue.rejections.count() == 1
    await queue.publish(TaskMessage("operations/genuine", "noop"))
    delivery = await _receive_one(queue)
    assert delivery.message == TaskMessage("operations/genuine", "noop")
    await delivery.ack()
