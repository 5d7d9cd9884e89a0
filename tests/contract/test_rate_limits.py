"""Rate limits held by the store (OperationStore.claim_slot with a rate):
the claim and the queue's token bucket are one guarded step, so claimers in
separate processes share one bucket; a claim without a free token reserves
the next one and the record shows it (RATE_LIMITED, run_after = the token's
time) in the same write; a claim refused for concurrency takes no token; a
reserved token is used once. On every operation store adapter (SQLite: the
rate_buckets row in the claim's transaction; Firestore: the bucket document
in the claim's batch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.google.firestore_store import FirestoreOperationStore
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.queues import ConcurrencyLimits
from longrun_core.rate_bucket import TOKEN_GRACE
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore
from longrun_core.transitions import ConcurrencyLimited, RateLimited, SlotRequest
from tests.contract.records import BASE, make_record

NOW = BASE + timedelta(hours=1)
LEASE = timedelta(seconds=10)
RETENTION = timedelta(days=1)
#: 10/s: a token every 100 ms; a bucket of 3.
RATE = {("default", "q"): ConcurrencyLimits(max_dispatches_per_second=10, max_burst_size=3)}
STEP = timedelta(milliseconds=100)

Limits = Mapping[tuple[str, str], ConcurrencyLimits]


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


def claim_at(now: datetime) -> Callable[[OperationRecord], OperationRecord]:
    def claim(rec: OperationRecord) -> OperationRecord:
        return transitions.claim(
            rec, worker="w", now=now, lease=LEASE, retention=RETENTION, admitted=True
        )

    return claim


def request_for(
    rec: OperationRecord, limits: Limits = RATE, horizon: timedelta = timedelta(seconds=60)
) -> SlotRequest:
    found = transitions.slot_request(rec, limits, horizon=horizon)
    assert found is not None
    return found


async def attempt(
    store: OperationStore, rec: OperationRecord, now: datetime = NOW, limits: Limits = RATE
) -> OperationRecord | RateLimited:
    try:
        return await store.claim_slot(rec.name, claim_at(now), request_for(rec, limits))
    except RateLimited as limited:
        return limited


async def make(store: OperationStore, n: int) -> list[OperationRecord]:
    recs = [make_record(queue="q") for _ in range(n)]
    for rec in recs:
        await store.create(rec)
    return recs


async def test_claimers_in_several_processes_share_one_bucket(
    stores: list[OperationStore],
) -> None:
    """Ten claims at one instant from four processes: the burst (3) starts,
    the other seven each reserve a distinct later token, one interval apart."""
    recs = await make(stores[0], 10)
    results = await asyncio.gather(*(attempt(stores[i % 4], r) for i, r in enumerate(recs)))
    started = [r for r in results if isinstance(r, OperationRecord)]
    waiting = [r for r in results if isinstance(r, RateLimited)]
    assert len(started) == 3 and all(r.state is State.RUNNING for r in started)
    assert all(w.reserved for w in waiting)
    assert sorted(w.until for w in waiting) == [NOW + STEP * k for k in range(1, 8)]
    # What the store holds agrees.
    stored = [await stores[1].get(r.name) for r in recs]
    assert sum(r.state is State.RUNNING for r in stored) == 3
    reserved = sorted(r.rate_token_time for r in stored if r.rate_token_time is not None)
    assert reserved == [NOW + STEP * k for k in range(1, 8)]
    assert all(r.state is State.QUEUED for r in stored if r.rate_token_time is not None)


async def test_a_reservation_shows_rate_limited_and_starts_on_its_token_without_another(
    stores: list[OperationStore],
) -> None:
    recs = await make(stores[0], 5)
    for rec in recs[:3]:
        assert isinstance(await attempt(stores[0], rec), OperationRecord)
    limited = await attempt(stores[1], recs[3])
    assert isinstance(limited, RateLimited) and limited.until == NOW + STEP
    waiting = await stores[2].get(recs[3].name)
    assert waiting.state is State.QUEUED
    assert waiting.wait_reason is WaitReason.RATE_LIMITED
    assert waiting.metadata().wait_reason == jobs_pb2.JobMetadata.RATE_LIMITED
    assert waiting.run_after == NOW + STEP and waiting.rate_token_time == NOW + STEP
    # Before its token: not due (the claim's own run_after check).
    with pytest.raises(transitions.NotDue):
        await stores[2].claim_slot(recs[3].name, claim_at(NOW), request_for(recs[3]))
    # The fifth job reserved the token after it: the bucket moved on once each.
    fifth = await attempt(stores[3], recs[4])
    assert isinstance(fifth, RateLimited) and fifth.until == NOW + 2 * STEP
    # On its token, the fourth starts without taking one: the next claim still
    # gets the token after the fifth's.
    started = await attempt(stores[2], recs[3], now=NOW + STEP)
    assert isinstance(started, OperationRecord) and started.state is State.RUNNING
    assert started.rate_token_time is None and started.wait_reason is WaitReason.NONE
    sixth = (await make(stores[0], 1))[0]
    later = await attempt(stores[0], sixth, now=NOW + STEP)
    assert isinstance(later, RateLimited) and later.until == NOW + 3 * STEP


async def test_the_bucket_refills_from_elapsed_time_up_to_the_burst(
    stores: list[OperationStore],
) -> None:
    recs = await make(stores[0], 9)
    for rec in recs[:3]:
        assert isinstance(await attempt(stores[0], rec), OperationRecord)
    # 250 ms later: two tokens back (not three, not more).
    later = NOW + timedelta(milliseconds=250)
    assert isinstance(await attempt(stores[1], recs[3], later), OperationRecord)
    assert isinstance(await attempt(stores[2], recs[4], later), OperationRecord)
    third = await attempt(stores[3], recs[5], later)
    assert isinstance(third, RateLimited) and third.until == NOW + 3 * STEP
    # An hour idle: full again, but only to the burst.
    idle = NOW + timedelta(hours=1)
    got = [await attempt(stores[0], rec, idle) for rec in recs[6:]]
    assert [isinstance(g, OperationRecord) for g in got] == [True, True, True]
    extra = (await make(stores[0], 1))[0]
    assert isinstance(await attempt(stores[0], extra, idle), RateLimited)


async def test_a_claim_refused_for_concurrency_takes_no_token(
    stores: list[OperationStore],
) -> None:
    both = {
        ("default", "q"): ConcurrencyLimits(
            max_concurrent_dispatches=1, max_dispatches_per_second=10, max_burst_size=3
        )
    }
    recs = await make(stores[0], 3)
    assert isinstance(await attempt(stores[0], recs[0], limits=both), OperationRecord)
    for _ in range(5):
        with pytest.raises(ConcurrencyLimited):
            await attempt(stores[1], recs[1], limits=both)
    # The bucket still holds two of its three tokens: a rate-only claim gets
    # one at once, then one more, then waits.
    assert isinstance(await attempt(stores[2], recs[1]), OperationRecord)
    assert isinstance(await attempt(stores[2], recs[2]), OperationRecord)
    extra = (await make(stores[0], 1))[0]
    assert isinstance(await attempt(stores[2], extra), RateLimited)


async def test_past_the_horizon_nothing_is_taken_and_the_claim_learns_when_to_come_back(
    stores: list[OperationStore],
) -> None:
    recs = await make(stores[0], 6)
    before = await stores[0].get(recs[5].name)
    horizon = timedelta(milliseconds=200)
    outcomes = []
    for rec in recs:
        try:
            got: object = await stores[0].claim_slot(
                rec.name, claim_at(NOW), request_for(rec, horizon=horizon)
            )
        except RateLimited as limited:
            got = limited
        outcomes.append(got)
    # Burst of 3, two reservations within 200 ms, then a refusal.
    assert [isinstance(o, OperationRecord) for o in outcomes[:3]] == [True] * 3
    reserved = outcomes[3:5]
    assert all(isinstance(o, RateLimited) and o.reserved for o in reserved)
    refused = outcomes[5]
    assert isinstance(refused, RateLimited) and not refused.reserved
    assert refused.until == NOW + 3 * STEP - horizon
    assert await stores[1].get(recs[5].name) == before
    # The refusal took nothing: the next reservation is the one after the last.
    again = await attempt(stores[1], recs[5], now=NOW + STEP)
    assert isinstance(again, RateLimited) and again.until == NOW + 3 * STEP


async def test_a_reservation_used_too_late_is_void_and_takes_a_fresh_token(
    stores: list[OperationStore],
) -> None:
    """The worker that reserved died; the sweeper's backstop publishes the
    job long after its token: it queues for a fresh one, so late
    reservations never add to what the bucket gives out meanwhile."""
    recs = await make(stores[0], 5)
    for rec in recs[:3]:
        assert isinstance(await attempt(stores[0], rec), OperationRecord)
    assert isinstance(await attempt(stores[0], recs[3]), RateLimited)
    late = NOW + STEP + TOKEN_GRACE + timedelta(milliseconds=1)
    # Meanwhile the bucket refilled and three others take the burst.
    others = await make(stores[0], 3)
    for rec in others:
        assert isinstance(await attempt(stores[1], rec, late), OperationRecord)
    void = await attempt(stores[2], recs[3], late)
    assert isinstance(void, RateLimited) and void.reserved
    assert void.until == late + STEP


async def test_firestore_keeps_the_bucket_in_one_document(
    stores: list[OperationStore],
) -> None:
    store = stores[0]
    if not isinstance(store, FirestoreOperationStore):
        pytest.skip("Firestore's bucket document")
    recs = await make(store, 4)
    assert await store.rate_bucket_tat("default", "q") is None
    for rec in recs:
        await attempt(stores[1], rec)
    assert await store.rate_bucket_tat("default", "q") == NOW + 4 * STEP


async def test_late_reservations_do_not_bunch_past_the_burst(
    stores: list[OperationStore],
) -> None:
    """Reserved jobs whose messages all come late, at one instant (within the
    grace): the start gate lets the burst start and has the rest wait for its
    next opening (taking nothing meanwhile), keeping their tokens."""
    recs = await make(stores[0], 8)
    for rec in recs[:3]:
        assert isinstance(await attempt(stores[0], rec), OperationRecord)
    for rec in recs[3:]:
        assert isinstance(await attempt(stores[1], rec), RateLimited)
    late = NOW + 5 * STEP + timedelta(milliseconds=500)
    results = [await attempt(stores[i % 4], rec, late) for i, rec in enumerate(recs[3:])]
    started = [r for r in results if isinstance(r, OperationRecord)]
    waiting = [r for r in results if isinstance(r, RateLimited)]
    assert len(started) == 3
    assert [w.until for w in waiting] == [late + STEP, late + STEP]
    held = [r for r in recs[3:] if (await stores[0].get(r.name)).state is State.QUEUED]
    assert len(held) == 2
    # They keep their tokens: at the gate's opening one starts without a new
    # token, the other waits one interval more.
    first = await attempt(stores[2], held[0], late + STEP)
    assert isinstance(first, OperationRecord) and first.state is State.RUNNING
    second = await attempt(stores[3], held[1], late + STEP)
    assert isinstance(second, RateLimited) and second.until == late + 2 * STEP
    third = await attempt(stores[3], held[1], late + 2 * STEP)
    assert isinstance(third, OperationRecord)
