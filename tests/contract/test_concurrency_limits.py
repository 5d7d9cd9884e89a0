"""Concurrency limits held by the store (OperationStore.claim_slot): the
claim and the count of the queue's (and key's) RUNNING attempts are one
guarded step, so claimers in separate processes never start more than the
limit; a finished attempt's slot comes back at once, a crashed holder's when
its lease is found lost. On every operation store adapter (SQLite: a count
in the claim's transaction; Firestore: slot documents in the claim's batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from longrun_core import slots, transitions
from longrun_core.google.firestore_store import FirestoreOperationStore
from longrun_core.model import OperationRecord, State
from longrun_core.queues import ConcurrencyLimits
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore
from longrun_core.transitions import ConcurrencyLimited, SlotRequest
from tests.contract.records import BASE, make_record

NOW = BASE + timedelta(hours=1)
LEASE = timedelta(seconds=10)
RETENTION = timedelta(days=1)
LIMITS = {("default", "q"): ConcurrencyLimits(max_concurrent_dispatches=3)}


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[OperationStore]]:
    """Four stores on one database: four worker processes' connections."""
    made: list[OperationStore] = []
    if request.param == "sqlite":
        for _ in range(4):
            made.append(SqliteOperationStore(SqliteBackend(tmp_path / "ops.db")))
            await made[-1].start()
    else:
        from tests.contract.google_backends import (
            fresh_project,
            make_firestore_store,
            require_emulators,
        )

        require_emulators()
        project = fresh_project()
        made = [await make_firestore_store(project=project) for _ in range(4)]
    try:
        yield made
    finally:
        for s in made:
            await s.close()


def claim_at(now: datetime, worker: str = "w") -> Callable[[OperationRecord], OperationRecord]:
    def claim(rec: OperationRecord) -> OperationRecord:
        return transitions.claim(
            rec, worker=worker, now=now, lease=LEASE, retention=RETENTION, admitted=True
        )

    return claim


Limits = Mapping[tuple[str, str], ConcurrencyLimits]


def request_for(rec: OperationRecord, limits: Limits = LIMITS) -> SlotRequest:
    found = transitions.slot_request(rec, limits)
    assert found is not None
    return found


async def attempt(
    store: OperationStore,
    rec: OperationRecord,
    now: datetime = NOW,
    limits: Limits = LIMITS,
) -> OperationRecord | None:
    try:
        return await store.claim_slot(rec.name, claim_at(now), request_for(rec, limits))
    except ConcurrencyLimited:
        return None


async def test_concurrent_claimers_in_several_processes_never_exceed_the_limit(
    stores: list[OperationStore],
) -> None:
    recs = [make_record(queue="q") for _ in range(40)]
    for rec in recs:
        await stores[0].create(rec)
    results = await asyncio.gather(*(attempt(stores[i % 4], rec) for i, rec in enumerate(recs)))
    claimed = [r for r in results if r is not None]
    assert len(claimed) == 3
    assert all(r.state is State.RUNNING and r.attempt == 1 for r in claimed)
    # What the store holds agrees: nothing refused was written.
    running = [
        r for r in [await stores[1].get(rec.name) for rec in recs] if r.state is State.RUNNING
    ]
    assert sorted(r.id for r in running) == sorted(r.id for r in claimed)


async def test_a_refused_claim_leaves_the_record_queued_and_unchanged(
    stores: list[OperationStore],
) -> None:
    recs = [make_record(queue="q") for _ in range(4)]
    for rec in recs:
        await stores[0].create(rec)
    for rec in recs[:3]:
        assert await attempt(stores[0], rec) is not None
    before = await stores[0].get(recs[3].name)
    with pytest.raises(ConcurrencyLimited) as refused:
        await stores[2].claim_slot(recs[3].name, claim_at(NOW), request_for(recs[3]))
    assert refused.value.full == "queue"
    assert "3 of 3" in str(refused.value)
    assert await stores[0].get(recs[3].name) == before


async def test_a_finished_attempt_frees_its_slot_at_once(
    stores: list[OperationStore],
) -> None:
    recs = [make_record(queue="q") for _ in range(4)]
    for rec in recs:
        await stores[0].create(rec)
    held = [await attempt(stores[0], rec) for rec in recs[:3]]
    assert await attempt(stores[1], recs[3]) is None
    first = held[0]
    assert first is not None
    await stores[0].update(
        first.name,
        lambda r: replace(r, state=State.SUCCEEDED, lease_owner=None, lease_expire_time=None),
    )
    got = await attempt(stores[1], recs[3])
    assert got is not None and got.state is State.RUNNING


async def test_a_crashed_holders_slot_comes_back_when_its_lease_is_found_lost(
    stores: list[OperationStore],
) -> None:
    recs = [make_record(queue="q") for _ in range(4)]
    for rec in recs:
        await stores[0].create(rec)
    held = [await attempt(stores[0], rec) for rec in recs[:3]]
    # Long past the holders' lease_expire_time by a claimer's clock: a
    # RUNNING record still holds its slot (clocks may be skewed; a lease is
    # lost only when an observer has seen it silent for the whole lease).
    assert await attempt(stores[1], recs[3], now=NOW + 100 * LEASE) is None
    crashed = held[0]
    assert crashed is not None
    # The dispatcher's lease check saw it silent for a whole lease: taken back.
    silent = transitions.LeaseSighting(version=crashed.version, silent_for=LEASE)
    back = await stores[2].update(
        crashed.name,
        lambda r: transitions.expire_lease(r, NOW + LEASE, RETENTION, sighting=silent),
    )
    assert back.state is State.QUEUED
    got = await attempt(stores[1], recs[3], now=NOW + LEASE)
    assert got is not None and got.state is State.RUNNING


async def test_a_takeover_of_a_lost_lease_does_not_count_itself(
    stores: list[OperationStore],
) -> None:
    one = {("default", "q"): ConcurrencyLimits(max_concurrent_dispatches=1)}
    rec = make_record(queue="q")
    await stores[0].create(rec)
    held = await attempt(stores[0], rec, limits=one)
    assert held is not None
    silent = transitions.LeaseSighting(version=held.version, silent_for=LEASE)

    def take_over(r: OperationRecord) -> OperationRecord:
        return transitions.claim(
            r,
            worker="w2",
            now=NOW + LEASE,
            lease=LEASE,
            retention=RETENTION,
            sighting=silent,
            admitted=True,
        )

    got = await stores[1].claim_slot(rec.name, take_over, request_for(rec, one))
    assert (got.state, got.attempt, got.lease_owner) == (State.RUNNING, 2, "w2")


async def test_per_key_limit_counts_each_key_apart(stores: list[OperationStore]) -> None:
    per_key = {("default", "q"): ConcurrencyLimits(max_concurrent_per_key=2)}
    keys = ["a"] * 5 + ["b"] * 5 + ["c"]
    recs = [make_record(queue="q", concurrency_key=k) for k in keys]
    for rec in recs:
        await stores[0].create(rec)
    results = await asyncio.gather(
        *(attempt(stores[i % 4], rec, limits=per_key) for i, rec in enumerate(recs))
    )
    running: dict[str, int] = {}
    for r in results:
        if r is not None:
            running[r.concurrency_key or ""] = running.get(r.concurrency_key or "", 0) + 1
    assert running == {"a": 2, "b": 2, "c": 1}


async def test_queue_and_key_limits_hold_together(stores: list[OperationStore]) -> None:
    both = {
        ("default", "q"): ConcurrencyLimits(max_concurrent_dispatches=3, max_concurrent_per_key=2)
    }
    recs = [make_record(queue="q", concurrency_key=k) for k in ["a", "a", "a", "b", "b", "c"]]
    for rec in recs:
        await stores[0].create(rec)
    results = [await attempt(stores[0], rec, limits=both) for rec in recs]
    assert [r is not None for r in results] == [True, True, False, True, False, False]


async def test_other_queues_do_not_count(stores: list[OperationStore]) -> None:
    others = [make_record(queue="other") for _ in range(3)]
    for rec in others:
        await stores[0].create(rec)
        await stores[0].update(rec.name, claim_at(NOW))
    mine = make_record(queue="q")
    await stores[0].create(mine)
    one = {("default", "q"): ConcurrencyLimits(max_concurrent_dispatches=1)}
    assert await attempt(stores[0], mine, limits=one) is not None


async def test_release_frees_a_finished_attempts_slot_and_never_a_running_one(
    stores: list[OperationStore],
) -> None:
    recs = [make_record(queue="q") for _ in range(4)]
    for rec in recs:
        await stores[0].create(rec)
    held = [await attempt(stores[0], rec) for rec in recs[:3]]
    first = held[0]
    assert first is not None
    # Still RUNNING that attempt: a release gives nothing back.
    await stores[1].release_slot(first, request_for(first))
    assert await attempt(stores[2], recs[3]) is None
    await stores[0].update(
        first.name,
        lambda r: replace(r, state=State.SUCCEEDED, lease_owner=None, lease_expire_time=None),
    )
    await stores[1].release_slot(first, request_for(first))
    if isinstance(stores[1], FirestoreOperationStore):
        slot = slots.queue_slot_id("default", "q")
        assert set(await stores[1].slot_holders(slot)) == {r.id for r in held[1:] if r}
    got = await attempt(stores[2], recs[3])
    assert got is not None and got.state is State.RUNNING
