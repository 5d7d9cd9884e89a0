"""The OperationStore contract: every adapter must pass all of it."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from google.rpc import code_pb2

from longrun_core import transitions
from longrun_core.backends import Backends
from longrun_core.errors import AlreadyExists, InvalidArgument, NotFound
from longrun_core.model import MAX_ATTEMPT_HISTORY, AttemptEntry, OperationRecord, State
from longrun_core.queue import TaskQueue
from longrun_core.store import Cursor, OperationStore, request_fingerprint
from tests.contract.records import BASE, make_record

RETENTION = timedelta(days=30)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FIRST_ATTEMPT = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
LEASE = timedelta(seconds=10)


async def test_create_then_get_round_trips_every_field(store: OperationStore) -> None:
    rec = make_record(
        labels={"a": "1", "b": "two"},
        request_id="0b6f5bde-6f0e-4c6e-9d7a-0c6f1f7a4a11",
        request_hash="h",
        start_time=BASE + timedelta(microseconds=123456),
        run_after=BASE + timedelta(seconds=5, microseconds=7),
        lease_duration=timedelta(seconds=12, microseconds=345678),
        releases=2,
        trace=TRACEPARENT,
        first_attempt_trace=FIRST_ATTEMPT,
        attempts=(
            AttemptEntry(
                attempt=1,
                start_time=BASE,
                worker="w1",
                end_time=BASE + timedelta(microseconds=7),
                code=14,
                message="flaky",
            ),
            AttemptEntry(attempt=2, start_time=BASE + timedelta(seconds=1), worker="w2"),
        ),
    )
    result = await store.create(rec)
    assert result.created
    got = await store.get(rec.name)
    assert got == replace(rec, version=got.version)
    assert got.version >= 1


def _claim_at(r: OperationRecord, *, now: datetime) -> OperationRecord:
    return transitions.claim(r, worker="w", now=now, lease=LEASE, retention=RETENTION)


def _retry_at(r: OperationRecord, *, now: datetime, attempt: int, span: str) -> OperationRecord:
    return transitions.retry(
        r, worker="w", attempt=attempt, now=now, delay=timedelta(0), error=b"", attempt_trace=span
    )


async def test_the_trace_and_the_first_attempts_span_are_kept_through_retries(
    store: OperationStore,
) -> None:
    """The CreateJob traceparent is stored with the record (JobMetadata.trace_id
    shows its trace id); the first retried attempt's span is kept, and a
    later retry does not replace it."""
    rec = make_record(trace=TRACEPARENT)
    await store.create(rec)
    got = await store.get(rec.name)
    assert got.trace == TRACEPARENT and got.first_attempt_trace is None
    assert got.metadata().trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    second_attempt = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
    for attempt, span in ((1, FIRST_ATTEMPT), (2, second_attempt)):
        now = BASE + timedelta(seconds=attempt)
        await store.update(rec.name, functools.partial(_claim_at, now=now))
        await store.update(
            rec.name, functools.partial(_retry_at, now=now, attempt=attempt, span=span)
        )
    got = await store.get(rec.name)
    assert (got.attempt, got.trace, got.first_attempt_trace) == (2, TRACEPARENT, FIRST_ATTEMPT)


async def test_the_attempts_history_is_stored_and_bounded(store: OperationStore) -> None:
    """Each claim opens a history entry and the write that ends the attempt
    closes it; the store keeps every field of the last MAX_ATTEMPT_HISTORY."""
    rec = make_record(max_attempts=MAX_ATTEMPT_HISTORY + 2)
    await store.create(rec)
    got = await store.get(rec.name)
    assert got.attempts == () and got.metadata().attempts == []
    error = transitions.status_bytes(code_pb2.UNAVAILABLE, "try again")
    for attempt in range(1, MAX_ATTEMPT_HISTORY + 3):
        now = BASE + timedelta(seconds=attempt)
        await store.update(rec.name, functools.partial(_claim_at, now=now))
        running = await store.get(rec.name)
        assert running.attempts[-1] == AttemptEntry(attempt=attempt, start_time=now, worker="w")
        await store.update(
            rec.name,
            functools.partial(
                transitions.retry,
                worker="w",
                attempt=attempt,
                now=now + timedelta(microseconds=250),
                delay=timedelta(0),
                error=error,
            ),
        )
    got = await store.get(rec.name)
    assert [a.attempt for a in got.attempts] == list(range(3, MAX_ATTEMPT_HISTORY + 3))
    last = got.attempts[-1]
    assert last.end_time == BASE + timedelta(seconds=MAX_ATTEMPT_HISTORY + 2, microseconds=250)
    assert (last.code, last.message, last.worker) == (code_pb2.UNAVAILABLE, "try again", "w")
    assert len(got.metadata().attempts) == MAX_ATTEMPT_HISTORY


async def test_ready_by_queue_counts_the_runnable_queued_records_of_each_queue(
    store: OperationStore,
) -> None:
    now = BASE + timedelta(hours=1)
    a_old = make_record(queue="a", create_time=BASE + timedelta(seconds=1))
    a_retried = make_record(queue="a", run_after=now - timedelta(seconds=5))
    b_new = make_record(queue="b", create_time=now - timedelta(seconds=30))
    b_later = make_record(queue="b", run_after=now + timedelta(minutes=5))  # not due yet
    c_future = make_record(queue="c", run_after=now + timedelta(seconds=1))
    running = make_record(queue="a", project="other")
    for rec in (a_old, a_retried, b_new, b_later, c_future, running):
        await store.create(rec)
    await store.update(
        running.name,
        lambda r: transitions.claim(
            r, worker="w", now=now - timedelta(minutes=1), lease=LEASE, retention=RETENTION
        ),
    )
    by_queue = {q.queue: q for q in await store.ready_by_queue(now, 1000)}
    assert set(by_queue) == {"a", "b"}
    assert (by_queue["a"].ready, by_queue["a"].oldest_ready_since) == (2, a_old.create_time)
    assert (by_queue["b"].ready, by_queue["b"].oldest_ready_since) == (1, b_new.create_time)
    # At most `limit` records are read.
    assert sum(q.ready for q in await store.ready_by_queue(now, 2)) <= 2
    assert await store.ready_by_queue(now, 0) == []


async def test_get_unknown_is_not_found_and_malformed_is_invalid(store: OperationStore) -> None:
    with pytest.raises(NotFound):
        await store.get("operations/doesnotexist")
    with pytest.raises(InvalidArgument):
        await store.get("jobs/x")
    with pytest.raises(InvalidArgument):
        await store.get("")


async def test_create_existing_id_is_already_exists(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    with pytest.raises(AlreadyExists):
        await store.create(replace(rec, task="other"))
    assert (await store.get(rec.name)).task == rec.task


def _with_request_id(rec: OperationRecord, request_id: str) -> OperationRecord:
    fp = request_fingerprint(rec.task, rec.params, dict(rec.labels))
    return replace(rec, request_id=request_id, request_hash=fp)


async def test_request_id_repeat_returns_the_first_operation(store: OperationStore) -> None:
    rid = "5d0c3c83-3d8c-4e6b-9a44-4b8b2f6f0e01"
    first = _with_request_id(make_record(), rid)
    second = replace(first, id=make_record().id)
    assert (await store.create(first)).created
    again = await store.create(second)
    assert not again.created
    assert again.record.name == first.name
    with pytest.raises(NotFound):
        await store.get(second.name)


async def test_request_id_with_other_content_is_already_exists(store: OperationStore) -> None:
    rid = "8a6a2b1e-1f0c-4c1a-8d55-6b3ce9a0f7aa"
    await store.create(_with_request_id(make_record(), rid))
    other = _with_request_id(make_record(task="sleep"), rid)
    with pytest.raises(AlreadyExists) as info:
        await store.create(other)
    assert info.value.reason == "REQUEST_ID_REUSED"


async def test_racing_creates_with_one_request_id_store_one(store: OperationStore) -> None:
    rid = "1c9e7a52-8e0b-4b8e-b7f3-2d2a1f3c4b5d"
    base = _with_request_id(make_record(), rid)
    attempts = [replace(base, id=f"race{i:03d}") for i in range(8)]
    results = await asyncio.gather(*(store.create(r) for r in attempts))
    assert sum(r.created for r in results) == 1
    assert len({r.record.name for r in results}) == 1
    winner = results[0].record.name
    for r in attempts:
        if r.name != winner:
            with pytest.raises(NotFound):
                await store.get(r.name)


async def test_update_applies_transition_and_none_changes_nothing(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    claimed = await store.update(
        rec.name,
        lambda r: transitions.claim(
            r, worker="w1", now=BASE + timedelta(hours=1), lease=LEASE, retention=RETENTION
        ),
    )
    assert claimed.state is State.RUNNING and claimed.attempt == 1
    assert await store.get(rec.name) == claimed
    same = await store.update(rec.name, lambda r: None)
    assert same == claimed


async def test_concurrent_updates_are_all_applied(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    n = 12

    def bump(r: OperationRecord) -> OperationRecord:
        return replace(r, progress_percent=r.progress_percent + 1)

    await asyncio.gather(*(store.update(rec.name, bump) for _ in range(n)))
    assert (await store.get(rec.name)).progress_percent == n


async def test_transition_errors_propagate_and_write_nothing(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    before = await store.get(rec.name)
    with pytest.raises(transitions.LeaseLost):
        await store.update(
            rec.name,
            lambda r: transitions.renew(r, worker="w", attempt=1, now=BASE, lease=LEASE),
        )
    assert await store.get(rec.name) == before


async def test_delete_then_get_and_update_are_not_found(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    await store.delete(rec.name)
    with pytest.raises(NotFound):
        await store.get(rec.name)
    with pytest.raises(NotFound):
        await store.update(rec.name, lambda r: replace(r, progress_percent=5))
    with pytest.raises(NotFound):
        await store.get(rec.name)  # the late update did not bring it back
    with pytest.raises(NotFound):
        await store.delete(rec.name)


async def _walk(store: OperationStore, page_size: int) -> list[str]:
    names: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await store.list(page_size=page_size, after=cursor)
        assert len(page.records) <= page_size
        names += [r.name for r in page.records]
        if page.next_cursor is None:
            return names
        cursor = page.next_cursor


async def test_list_pages_newest_first_each_exactly_once(store: OperationStore) -> None:
    recs = [make_record() for _ in range(11)]
    # Two with the same create_time: the id breaks the tie.
    twin = replace(make_record(), create_time=recs[5].create_time)
    for rec in [*recs, twin]:
        await store.create(rec)
    names = await _walk(store, 4)
    expected = sorted([*recs, twin], key=lambda r: (r.create_time, r.id), reverse=True)
    assert names == [r.name for r in expected]


async def test_list_walk_survives_inserts_during_the_walk(store: OperationStore) -> None:
    originals = [make_record() for _ in range(9)]
    for rec in originals:
        await store.create(rec)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await store.list(page_size=3, after=cursor)
        seen += [r.name for r in page.records]
        await store.create(make_record())  # newer than everything: sorts before the cursor
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen))
    assert {r.name for r in originals} <= set(seen)


class _TaskIs:
    def __init__(self, task: str) -> None:
        self.text = f"metadata.task = {task!r}"
        self.task = task

    def matches(self, rec: OperationRecord) -> bool:
        return rec.task == self.task


async def test_list_with_filter_pages_only_matches(store: OperationStore) -> None:
    recs = [make_record(task="sleep" if i % 3 == 0 else "noop") for i in range(14)]
    for rec in recs:
        await store.create(rec)
    flt = _TaskIs("sleep")
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await store.list(page_size=2, after=cursor, flt=flt)
        assert all(r.task == "sleep" for r in page.records)
        seen += [r.name for r in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = [r.name for r in sorted(recs, key=lambda r: r.create_time, reverse=True)]
    assert seen == [n for n in expected if n in {r.name for r in recs if r.task == "sleep"}]


async def test_due_for_dispatch_lists_stale_queued_records_only(store: OperationStore) -> None:
    now = BASE + timedelta(hours=2)
    due = make_record(dispatch_due_time=now - timedelta(seconds=1))
    at_the_instant = make_record(dispatch_due_time=now)
    not_due = make_record(dispatch_due_time=now + timedelta(seconds=30))
    # Leases are never judged by time: not even a long-past lease_expire_time.
    past_lease = make_record(
        state=State.RUNNING,
        attempt=1,
        lease_owner="w",
        lease_expire_time=now - timedelta(days=1),
        lease_duration=LEASE,
        dispatch_due_time=None,
    )
    finished = make_record(
        state=State.SUCCEEDED, response=b"", dispatch_due_time=None, end_time=now
    )
    for rec in (due, at_the_instant, not_due, past_lease, finished):
        await store.create(rec)
    got = {r.name for r in await store.due_for_dispatch(now, 100)}
    assert got == {due.name, at_the_instant.name}


async def test_leased_lists_the_running_records_stalest_lease_first(store: OperationStore) -> None:
    now = BASE + timedelta(hours=3)

    def running(expires_in: float) -> OperationRecord:
        return make_record(
            state=State.RUNNING,
            attempt=1,
            lease_owner="w",
            lease_expire_time=now + timedelta(seconds=expires_in),
            lease_duration=LEASE,
            dispatch_due_time=None,
        )

    late, early, middle = running(30), running(-600), running(5)
    queued = make_record()
    done = make_record(state=State.FAILED, error=b"", dispatch_due_time=None, end_time=now)
    for rec in (late, early, middle, queued, done):
        await store.create(rec)

    assert [r.name for r in await store.leased(10)] == [early.name, middle.name, late.name]
    assert [r.name for r in await store.leased(2)] == [early.name, middle.name]
    assert await store.leased(0) == []
    listed = (await store.leased(1))[0]
    assert listed == await store.get(early.name)  # whole records, at their versions


async def test_every_write_advances_the_version_a_lease_observer_watches(
    store: OperationStore,
) -> None:
    """The lease rule rests on this: a holder's renew is a write, every write
    stores version + 1, and an observer reading the record (by `get` or
    `leased`) sees the new version, whatever the holder's clock says."""
    rec = make_record()
    await store.create(rec)
    stuck = BASE + timedelta(hours=1)  # a holder clock that stands still
    claimed = await store.update(
        rec.name,
        lambda r: transitions.claim(r, worker="w1", now=stuck, lease=LEASE, retention=RETENTION),
    )
    versions = [claimed.version]
    for _ in range(3):
        renewed = await store.update(
            rec.name,
            lambda r: transitions.renew(r, worker="w1", attempt=1, now=stuck, lease=LEASE),
        )
        versions.append(renewed.version)
        assert (await store.get(rec.name)).version == renewed.version
        assert [r.version for r in await store.leased(10)] == [renewed.version]
    assert versions == list(range(versions[0], versions[0] + 4))


async def test_store_time_tells_the_stores_clock(store: OperationStore) -> None:
    """For skew warnings: the store's own clock (the emulator and the SQLite
    engine run on this machine, so it is ours, within a second)."""
    told = await store.store_time()
    assert told is not None
    assert abs((told - datetime.now(UTC)).total_seconds()) < 1.0
    assert (await store.store_time() or told) >= told


async def test_delete_expired_removes_only_expired(store: OperationStore) -> None:
    now = BASE + timedelta(days=40)
    old = make_record(state=State.SUCCEEDED, response=b"", expire_time=now - timedelta(days=1))
    fresh = make_record(state=State.SUCCEEDED, response=b"", expire_time=now + timedelta(days=1))
    running = make_record(state=State.RUNNING, attempt=1)
    for rec in (old, fresh, running):
        await store.create(rec)
    assert await store.delete_expired(now, 10) == 1
    with pytest.raises(NotFound):
        await store.get(old.name)
    assert (await store.get(fresh.name)).name == fresh.name
    assert (await store.get(running.name)).name == running.name


async def test_watch_wakes_on_change_and_times_out_without(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    async with store.watch(rec.name) as watch:
        started = time.monotonic()
        assert not await watch.changed(0.2)
        assert time.monotonic() - started >= 0.19

        async def change() -> None:
            await store.update(rec.name, lambda r: replace(r, progress_percent=42))

        writer = asyncio.create_task(change())
        assert await watch.changed(10.0)
        await writer
    assert (await store.get(rec.name)).progress_percent == 42


async def test_watch_record_reads_the_record_and_signals_every_later_change(
    store: OperationStore,
) -> None:
    rec = make_record()
    await store.create(rec)
    await store.update(rec.name, lambda r: replace(r, progress_percent=7))
    for n, name in enumerate((rec.name, f"operations/{rec.id}")):
        async with store.watch_record(name) as (watch, got):
            assert (got.name, got.version, got.progress_percent) == (rec.name, 2 + n, 7 + n)
            assert not await watch.changed(0.05)
            writer = asyncio.create_task(
                store.update(
                    rec.name, lambda r: replace(r, progress_percent=r.progress_percent + 1)
                )
            )
            assert await watch.changed(10.0)
            await writer
    assert (await store.get(rec.name)).progress_percent == 9


async def test_many_waiters_on_one_operation_all_wake(store: OperationStore) -> None:
    rec = make_record()
    await store.create(rec)
    woke = 0

    async def waiter(ready: asyncio.Event) -> None:
        nonlocal woke
        async with store.watch(rec.name) as watch:
            ready.set()
            if await watch.changed(10.0):
                woke += 1

    readies = [asyncio.Event() for _ in range(20)]
    tasks = [asyncio.create_task(waiter(r)) for r in readies]
    for r in readies:
        await r.wait()
    await store.update(rec.name, lambda r: replace(r, progress_percent=1))
    await asyncio.gather(*tasks)
    assert woke == 20


async def test_a_healthy_store_passes_the_health_probe(store: OperationStore) -> None:
    """`Backends.probe` (grpc.health's source) succeeds on a store that can
    take writes, and changes no operation. (It never touches the queue.)"""
    rec = (await store.create(make_record())).record
    backends = Backends(store, cast(TaskQueue, None))
    await backends.probe()
    await backends.probe()
    assert await store.get(rec.name) == rec
    page = await store.list(page_size=10, after=None)
    assert [r.name for r in page.records] == [rec.name]
