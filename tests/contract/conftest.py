"""One contract suite, every adapter: the `store` and `queue` fixtures are
parametrized over the embedded and the Google backends. The Google ones need
the emulators (`make test` starts them); missing emulators fail in CI and
skip elsewhere, with a message naming what to install."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from longrun_core.clock import to_micros
from longrun_core.queue import TaskMessage, TaskQueue
from longrun_core.signing import KEY_ID_ATTR, SIGNATURE_ATTR, message_fields
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore

#: Queue lease used by the contract tests (Pub/Sub's minimum ack deadline is 10 s).
VISIBILITY = {"sqlite": 1.0, "pubsub": 10.0}


def visibility(queue: TaskQueue) -> float:
    """The lease the `queue` fixture gave this adapter."""
    return VISIBILITY["sqlite"] if isinstance(queue, SqliteTaskQueue) else VISIBILITY["pubsub"]


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OperationStore]:
    s: OperationStore
    if request.param == "sqlite":
        s = SqliteOperationStore(SqliteBackend(tmp_path / "ops.db"))
        await s.start()
    else:
        from tests.contract.google_backends import make_firestore_store, require_emulators

        require_emulators()
        s = await make_firestore_store()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", pytest.param("pubsub", marks=pytest.mark.google)])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskQueue]:
    q: TaskQueue
    if request.param == "sqlite":
        q = SqliteTaskQueue(
            SqliteBackend(tmp_path / "queue.db"),
            visibility_timeout=VISIBILITY["sqlite"],
            max_deliveries=5,
        )
        await q.start()
    else:
        from tests.contract.google_backends import make_pubsub_queue, require_emulators

        require_emulators()
        q = await make_pubsub_queue(visibility_timeout=VISIBILITY["pubsub"], max_deliveries=5)
    try:
        yield q
    finally:
        await q.close()


async def publish_raw(
    queue: TaskQueue, message: TaskMessage, signature: Mapping[str, str] | None = None
) -> None:
    """Put `message` on `queue` the way an outsider could: past `publish`,
    carrying `signature` (the two signature attributes, or none)."""
    sig = dict(signature or {})
    if isinstance(queue, SqliteTaskQueue):
        now = to_micros(queue.clock.now())
        await queue.backend.db.call(
            lambda c: c.execute(
                "INSERT INTO tasks (operation, task, attempt, visible_us, enqueued_us, "
                "signature_key, signature, trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.operation,
                    message.task,
                    message.attempt,
                    now,
                    now,
                    sig.get(KEY_ID_ATTR),
                    sig.get(SIGNATURE_ATTR),
                    message.trace or None,
                ),
            )
        )
        queue.written()
        return
    from google.cloud.pubsub_v1 import PublisherClient

    from longrun_core.google.pubsub_queue import PubSubTaskQueue

    assert isinstance(queue, PubSubTaskQueue)
    data, attributes = message_fields(message)
    publisher = PublisherClient()
    try:
        await asyncio.to_thread(
            lambda: publisher.publish(queue.topic_path, data, **attributes, **sig).result()
        )
    finally:
        publisher.stop()
