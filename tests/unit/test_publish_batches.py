"""Publishes of one event-loop iteration share one RPC per topic (at most
max_messages each); an RPC's error reaches each of its publishers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from longrun_core.google.publish_batches import LoopBatches


async def test_one_iteration_shares_rpcs_per_topic_and_chunk() -> None:
    sent: list[tuple[str, list[str]]] = []
    lock = threading.Lock()

    def send(topic: str, messages: list[str]) -> None:
        with lock:
            sent.append((topic, messages))

    batches = LoopBatches(send, max_messages=3)
    await asyncio.gather(
        *(batches.publish("t1", f"m{i}") for i in range(5)), batches.publish("t2", "x")
    )
    assert sorted(sent) == [("t1", ["m0", "m1", "m2"]), ("t1", ["m3", "m4"]), ("t2", ["x"])]
    assert batches.rpcs == 3
    await batches.publish("t1", "later")  # a later iteration: an RPC of its own
    assert sent[-1] == ("t1", ["later"]) and batches.rpcs == 4


async def test_an_rpc_error_reaches_every_publisher_of_its_batch() -> None:
    def send(topic: str, messages: list[str]) -> None:
        raise ConnectionError(f"{topic} is down")

    batches = LoopBatches(send)
    results = await asyncio.gather(
        batches.publish("t", "a"), batches.publish("t", "b"), return_exceptions=True
    )
    assert [str(r) for r in results] == ["t is down", "t is down"]
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_publisher_that_stops_waiting_leaves_the_others_alone() -> None:
    release = threading.Event()

    def send(topic: str, messages: list[str]) -> None:
        release.wait(5)

    batches = LoopBatches(send)
    impatient = asyncio.ensure_future(batches.publish("t", "a"))
    patient = asyncio.ensure_future(batches.publish("t", "b"))
    await asyncio.sleep(0)  # both queued, the RPC under way
    impatient.cancel()
    release.set()
    await patient
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await batches.drain()
