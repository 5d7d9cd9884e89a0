"""Every queue store (SQLite table, Firestore collection) keeps the same
contract (longrun_core.queues.QueueStore): round-trips every field, create
is exclusive, list is per project by id with paging, update is atomic (no
lost update between concurrent ones) and may create, delete says whether
there was one, list_all spans projects. And every operation store finds a
queue's QUEUED operations (`queued_in`) by id, without the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun_core.errors import AlreadyExists
from longrun_core.model import State, WaitReason
from longrun_core.queues import (
    ConcurrencyLimits,
    QueueConfig,
    QueueState,
    QueueStore,
    RetryConfig,
)
from longrun_core.sqlite.db import Database
from longrun_core.sqlite.queues import SqliteQueueStore
from longrun_core.store import OperationStore
from tests.contract.records import make_record

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def queues(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueStore]:
    store: QueueStore
    if request.param == "sqlite":
        store = SqliteQueueStore(Database(tmp_path / "queues.db"), owns=True)
    else:
        from longrun_core.google.firestore_queues import FirestoreQueueStore
        from tests.contract.google_backends import fresh_project, require_emulators

        require_emulators()
        store = FirestoreQueueStore(project=fresh_project())
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def config(project: str = "billing", queue_id: str = "emails", **changes: object) -> QueueConfig:
    base = QueueConfig(project=project, queue_id=queue_id, create_time=T0, update_time=T0)
    return replace(base, **changes)  # type: ignore[arg-type]


FULL = config(
    state=QueueState.PAUSED,
    retry=RetryConfig(
        max_attempts=7,
        max_retry_duration=timedelta(hours=1, microseconds=5),
        min_backoff=timedelta(milliseconds=250),
        max_backoff=timedelta(seconds=90),
        max_doublings=0,
    ),
    update_time=T0 + S,
    purge_time=T0 + 2 * S,
    limits=ConcurrencyLimits(max_concurrent_dispatches=3, max_concurrent_per_key=2),
)


async def test_a_queue_round_trips_every_field(queues: QueueStore) -> None:
    await queues.create(FULL)
    await queues.create(config(queue_id="plain"))
    assert await queues.get("billing", "emails") == FULL
    assert await queues.get("billing", "plain") == config(queue_id="plain")
    assert await queues.get("billing", "nothing") is None
    assert await queues.get("payroll", "emails") is None


async def test_create_is_exclusive_per_project(queues: QueueStore) -> None:
    await queues.create(config())
    with pytest.raises(AlreadyExists):
        await queues.create(config(retry=RetryConfig(max_attempts=2)))
    assert await queues.get("billing", "emails") == config()
    await queues.create(config(project="payroll"))
    assert await queues.get("payroll", "emails") == config(project="payroll")


async def test_list_is_per_project_by_id_with_paging(queues: QueueStore) -> None:
    ids = ["b-2", "a-1", "c-3", "e-5", "d-4"]
    for queue_id in ids:
        await queues.create(config(queue_id=queue_id))
    await queues.create(config(project="payroll", queue_id="a-0"))
    first = await queues.list("billing", limit=3)
    assert [q.queue_id for q in first] == ["a-1", "b-2", "c-3"]
    rest = await queues.list("billing", after="c-3", limit=3)
    assert [q.queue_id for q in rest] == ["d-4", "e-5"]
    assert [q.queue_id for q in await queues.list("payroll")] == ["a-0"]
    assert await queues.list("nobody") == []


async def test_concurrent_updates_lose_nothing(queues: QueueStore) -> None:
    await queues.create(config(retry=RetryConfig(max_attempts=1)))

    def bump(current: QueueConfig | None) -> QueueConfig:
        assert current is not None
        attempts = (current.retry.max_attempts or 0) + 1
        return replace(current, retry=RetryConfig(max_attempts=attempts))

    await asyncio.gather(*(queues.update("billing", "emails", bump) for _ in range(8)))
    stored = await queues.get("billing", "emails")
    assert stored is not None and stored.retry.max_attempts == 9


async def test_update_sees_an_absent_queue_as_none_and_may_create_it(queues: QueueStore) -> None:
    seen: list[QueueConfig | None] = []

    def create(current: QueueConfig | None) -> QueueConfig:
        seen.append(current)
        return config(queue_id="default", state=QueueState.PAUSED)

    made = await queues.update("billing", "default", create)
    assert seen[-1] is None
    assert made == await queues.get("billing", "default")
    assert made.state is QueueState.PAUSED


async def test_an_update_that_raises_writes_nothing(queues: QueueStore) -> None:
    await queues.create(config())

    def refuse(current: QueueConfig | None) -> QueueConfig:
        raise LookupError("no")

    with pytest.raises(LookupError):
        await queues.update("billing", "emails", refuse)
    with pytest.raises(LookupError):
        await queues.update("billing", "absent", refuse)
    assert await queues.get("billing", "emails") == config()
    assert await queues.get("billing", "absent") is None


async def test_delete_says_whether_there_was_one(queues: QueueStore) -> None:
    await queues.create(config())
    assert await queues.delete("billing", "emails") is True
    assert await queues.get("billing", "emails") is None
    assert await queues.delete("billing", "emails") is False
    await queues.create(config())  # the id is free again
    assert await queues.get("billing", "emails") == config()


async def test_list_all_spans_projects_up_to_the_limit(queues: QueueStore) -> None:
    for project, queue_id in [("b", "x"), ("a", "y"), ("a", "x"), ("c", "z")]:
        await queues.create(config(project=project, queue_id=queue_id))
    everything = await queues.list_all(100)
    assert {q.key for q in everything} == {("a", "x"), ("a", "y"), ("b", "x"), ("c", "z")}
    assert len(await queues.list_all(2)) == 2


# ---- the operation store's side: a queue's QUEUED operations ----


async def test_queued_in_finds_a_queues_waiting_operations_by_id(store: OperationStore) -> None:
    mine = [make_record(project="billing", queue="emails") for _ in range(5)]
    others = [
        make_record(project="billing", queue="reports"),
        make_record(project="payroll", queue="emails"),
        make_record(project="billing", queue="emails", state=State.RUNNING, attempt=1),
    ]
    scheduled = make_record(
        project="billing",
        queue="emails",
        run_after=T0 + timedelta(days=1),
        dispatch_due_time=T0 + timedelta(days=1),
        wait_reason=WaitReason.SCHEDULED,
        schedule_time=T0 + timedelta(days=1),
        dispatch_deadline=timedelta(seconds=90, microseconds=7),
        concurrency_key="customer-7",
    )
    for rec in [*mine, *others, scheduled]:
        await store.create(rec)
    expected = sorted(r.id for r in [*mine, scheduled])
    first = await store.queued_in("billing", "emails", limit=4)
    assert [r.id for r in first] == expected[:4]
    rest = await store.queued_in("billing", "emails", after=first[-1].id, limit=4)
    assert [r.id for r in rest] == expected[4:]
    found = {r.id: r for r in [*first, *rest]}
    # The queue fields round-trip (the store sets the version).
    assert found[scheduled.id] == replace(scheduled, version=found[scheduled.id].version)
    assert await store.queued_in("billing", "nothing") == []


async def test_count_in_queue_counts_waiting_and_running_of_one_queue_up_to_a_limit(
    store: OperationStore,
) -> None:
    waiting = [make_record(project="billing", queue="emails") for _ in range(4)]
    running = [
        make_record(project="billing", queue="emails", state=State.RUNNING, attempt=1)
        for _ in range(2)
    ]
    others = [
        make_record(project="billing", queue="reports"),
        make_record(project="payroll", queue="emails"),
        make_record(project="payroll", queue="emails", state=State.RUNNING, attempt=1),
    ]
    for rec in [*waiting, *running, *others]:
        await store.create(rec)
    assert await store.count_in_queue("billing", "emails", State.QUEUED, 100) == 4
    assert await store.count_in_queue("billing", "emails", State.RUNNING, 100) == 2
    assert await store.count_in_queue("billing", "emails", State.QUEUED, 3) == 3  # the cap
    assert await store.count_in_queue("billing", "emails", State.QUEUED, 0) == 0
    assert await store.count_in_queue("billing", "reports", State.QUEUED, 100) == 1
    assert await store.count_in_queue("billing", "nothing", State.QUEUED, 100) == 0
    # A job that finishes leaves the counts.
    await store.update(running[0].name, lambda r: replace(r, state=State.SUCCEEDED))
    assert await store.count_in_queue("billing", "emails", State.RUNNING, 100) == 1
