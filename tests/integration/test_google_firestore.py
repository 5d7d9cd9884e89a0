"""Firestore-specific behaviour of FirestoreOperationStore on the emulator
(the shared behaviour is in tests/contract)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import firestore

from longrun_core.errors import AlreadyExists, NotFound
from longrun_core.google.firestore_store import (
    FirestoreOperationStore,
    ListenClient,
    request_doc_id,
)
from longrun_core.model import OperationRecord, State
from longrun_core.settings import BackendSettings
from longrun_core.store import Cursor, request_fingerprint
from longrun_core.transitions import status_bytes
from tests.contract.google_backends import (
    eventually,
    fresh_project,
    make_firestore_store,
    require_emulators,
)
from tests.contract.records import BASE, make_record

pytestmark = pytest.mark.google


@pytest.fixture
async def project() -> str:
    require_emulators()
    return fresh_project()


@pytest.fixture
async def store(project: str) -> AsyncIterator[FirestoreOperationStore]:
    s = await make_firestore_store(project=project)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def other(project: str) -> AsyncIterator[FirestoreOperationStore]:
    """A second store on the same project: another process, as far as Firestore knows."""
    s = await make_firestore_store(project=project)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def raw(project: str) -> Any:
    """A plain client on the store's project, to look at the documents directly."""
    return firestore.Client(project=project)


def _with_request_id(rec: OperationRecord, request_id: str) -> OperationRecord:
    fp = request_fingerprint(rec.task, rec.params, dict(rec.labels))
    return replace(rec, request_id=request_id, request_hash=fp)


async def _docs(raw: Any, collection: str) -> dict[str, dict[str, Any]]:
    snaps = await asyncio.to_thread(lambda: list(raw.collection(collection).stream()))
    return {s.id: s.to_dict() for s in snaps}


# ---- layout ----


async def test_document_holds_typed_fields_and_query_fields(
    store: FirestoreOperationStore, raw: Any
) -> None:
    failed = make_record(
        state=State.FAILED,
        error=status_bytes(9, "nope"),
        end_time=BASE + timedelta(seconds=3),
        expire_time=BASE + timedelta(days=30),
        labels={},
        dispatch_due_time=None,
    )
    await store.create(failed)
    doc = (await _docs(raw, "operations"))[failed.id]
    assert doc["done"] is True and doc["error_code"] == 9
    assert doc["state"] == int(State.FAILED)
    assert isinstance(doc["params"], bytes) and doc["params"] == failed.params
    assert doc["expire_time"] == failed.expire_time  # a timestamp, usable by a TTL policy
    assert doc["labels"] == {} and doc["response"] is None
    got = await store.get(failed.name)
    assert got == replace(failed, version=1)
    assert type(got.create_time) is type(failed.create_time)  # plain datetime, not a subclass


async def test_from_settings_uses_project_database_and_collection(project: str, raw: Any) -> None:
    settings = BackendSettings(project=project, firestore_collection="jobs_ops")
    s = FirestoreOperationStore.from_settings(settings)
    await s.start()
    try:
        rec = make_record()
        await s.create(rec)
        assert rec.id in await _docs(raw, "jobs_ops")
        assert (s.project, s.database, s.collection) == (project, "(default)", "jobs_ops")
    finally:
        await s.close()


# ---- compare-and-set ----


async def test_concurrent_updates_from_two_stores_all_apply(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)

    def bump(r: OperationRecord) -> OperationRecord:
        return replace(r, progress_percent=r.progress_percent + 1)

    await asyncio.gather(
        *(s.update(rec.name, bump) for s in (store, other) for _ in range(10)),
    )
    final = await store.get(rec.name)
    assert final.progress_percent == 20
    assert final.version == 21


async def test_replace_with_a_stale_version_writes_nothing(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    v1 = await store.get(rec.name)  # store now remembers version 1
    await other.update(rec.name, lambda r: replace(r, progress_percent=50))
    stale = replace(v1, progress_percent=99, version=2)
    assert not await store._replace_if_version(stale, expected_version=1)
    assert (await store.get(rec.name)).progress_percent == 50
    # And with a version it has never read, it checks the stored one first.
    assert not await other._replace_if_version(replace(stale, version=8), expected_version=7)


async def test_update_after_delete_by_another_store_is_not_found(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    await store.get(rec.name)
    await other.delete(rec.name)
    assert not await store._replace_if_version(replace(rec, version=2), expected_version=1)


# ---- request ids ----


async def test_twenty_racing_creates_with_one_request_id_store_one(
    store: FirestoreOperationStore, other: FirestoreOperationStore, raw: Any
) -> None:
    rid = "6f1d9a2e-3b4c-4d5e-8f60-718293a4b5c6"
    base = _with_request_id(make_record(), rid)
    attempts = [replace(base, id=f"race{i:03d}") for i in range(20)]
    results = await asyncio.gather(
        *((store if i % 2 else other).create(r) for i, r in enumerate(attempts))
    )
    assert sum(r.created for r in results) == 1
    winner = next(r.record for r in results if r.created)
    assert {r.record.name for r in results} == {winner.name}
    assert all(r.record == winner for r in results)
    ops = await _docs(raw, "operations")
    assert list(ops) == [winner.id]
    reservations = await _docs(raw, "operations_request_ids")
    assert reservations == {
        request_doc_id(base.project, rid): {
            "request_id": rid,
            "project": base.project,
            "operation_id": winner.id,
            "request_hash": base.request_hash,
            "create_time": base.create_time,
        }
    }


async def test_delete_releases_the_request_id(store: FirestoreOperationStore, raw: Any) -> None:
    rid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    first = _with_request_id(make_record(), rid)
    await store.create(first)
    await store.delete(first.name)
    assert await _docs(raw, "operations_request_ids") == {}
    again = replace(first, id="second")
    result = await store.create(again)
    assert result.created and result.record.id == "second"


async def test_stale_reservation_is_taken_over(store: FirestoreOperationStore, raw: Any) -> None:
    """An operation removed behind the store's back (a TTL policy) leaves its
    reservation; the next create with that request id takes it over."""
    rid = "11111111-2222-4333-8444-555555555555"
    first = _with_request_id(make_record(), rid)
    await store.create(first)
    await asyncio.to_thread(raw.collection("operations").document(first.id).delete)
    racers = [replace(first, id=f"new{i}") for i in range(5)]
    results = await asyncio.gather(*(store.create(r) for r in racers))
    assert sum(r.created for r in results) == 1
    winner = next(r.record for r in results if r.created)
    reservation = (await _docs(raw, "operations_request_ids"))[request_doc_id(first.project, rid)]
    assert reservation["operation_id"] == winner.id
    assert list(await _docs(raw, "operations")) == [winner.id]


async def test_request_id_taken_with_other_content_is_rejected(
    store: FirestoreOperationStore,
) -> None:
    rid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    await store.create(_with_request_id(make_record(), rid))
    with pytest.raises(AlreadyExists) as info:
        await store.create(_with_request_id(make_record(task="sleep"), rid))
    assert info.value.reason == "REQUEST_ID_REUSED"


async def test_existing_id_with_a_new_request_id_is_already_exists(
    store: FirestoreOperationStore, raw: Any
) -> None:
    rec = make_record()
    await store.create(rec)
    dup = _with_request_id(replace(rec, task="other"), "12345678-1234-4234-8234-123456789abc")
    with pytest.raises(AlreadyExists):
        await store.create(dup)
    assert await _docs(raw, "operations_request_ids") == {}  # the batch left nothing behind


# ---- queries ----


async def test_list_pages_with_ties_and_a_cursor_at_every_boundary(
    store: FirestoreOperationStore,
) -> None:
    recs = [make_record() for _ in range(13)]
    tied = [replace(make_record(), create_time=recs[4].create_time) for _ in range(3)]
    await asyncio.gather(*(store.create(r) for r in [*recs, *tied]))
    expected = [
        r.name for r in sorted([*recs, *tied], key=lambda r: (r.create_time, r.id), reverse=True)
    ]
    for size in (1, 4, 16, 17):
        names: list[str] = []
        cursor: Cursor | None = None
        while True:
            page = await store.list(page_size=size, after=cursor)
            assert len(page.records) <= size
            names += [r.name for r in page.records]
            if page.next_cursor is None:
                break
            assert page.next_cursor == Cursor.after(page.records[-1])
            cursor = page.next_cursor
        assert names == expected, size


class _TaskIs:
    def __init__(self, task: str) -> None:
        self.task = task

    def matches(self, rec: OperationRecord) -> bool:
        return rec.task == self.task


class _PushedTaskIs(_TaskIs):
    """A filter offering the `to_firestore` seam."""

    exact = True

    def __init__(self, task: str) -> None:
        super().__init__(task)
        self.calls = 0

    def to_firestore(self) -> _PushedTaskIs:
        return self

    def apply(self, query: Any) -> Any:
        from google.cloud.firestore_v1.base_query import FieldFilter

        return query.where(filter=FieldFilter("task", "==", self.task))

    def matches(self, rec: OperationRecord) -> bool:
        self.calls += 1
        return super().matches(rec)


async def test_filtered_list_scans_past_batches_with_a_correct_cursor(
    store: FirestoreOperationStore,
) -> None:
    # 230 records, 1 in 50 matching: the in-memory filter crosses scan batches.
    recs = [make_record(task="rare" if i % 50 == 7 else "noop") for i in range(230)]
    await asyncio.gather(*(store.create(r) for r in recs))
    wanted = [r.name for r in sorted(recs, key=lambda r: r.create_time, reverse=True)]
    wanted = [n for n in wanted if n in {r.name for r in recs if r.task == "rare"}]
    pushed = _PushedTaskIs("rare")
    for flt in (_TaskIs("rare"), pushed):
        seen: list[str] = []
        cursor: Cursor | None = None
        pages = 0
        while True:
            page = await store.list(page_size=2, after=cursor, flt=flt)
            pages += 1
            seen += [r.name for r in page.records]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == wanted
        assert pages == 3
    assert pushed.calls == 0  # exact pushdown: no in-memory re-check


async def test_due_for_dispatch_and_leased_are_oldest_first_and_limited(
    store: FirestoreOperationStore,
) -> None:
    now = BASE + timedelta(hours=3)
    queued = [make_record(dispatch_due_time=now - timedelta(seconds=s)) for s in (5, 50, 20)]
    running = [
        make_record(
            state=State.RUNNING,
            attempt=1,
            lease_owner="w",
            lease_expire_time=now - timedelta(seconds=s),
            lease_duration=timedelta(seconds=10),
            dispatch_due_time=None,
        )
        for s in (30, 1)
    ]
    await asyncio.gather(*(store.create(r) for r in [*queued, *running]))
    got = await store.due_for_dispatch(now, 2)
    assert [r.id for r in got] == [queued[1].id, queued[2].id]
    assert {r.id for r in await store.due_for_dispatch(now, 100)} == {r.id for r in queued}
    assert [r.id for r in await store.leased(100)] == [running[0].id, running[1].id]
    assert [r.id for r in await store.leased(1)] == [running[0].id]


async def test_delete_expired_respects_the_limit_and_removes_reservations(
    store: FirestoreOperationStore, raw: Any
) -> None:
    now = BASE + timedelta(days=40)
    old = [
        _with_request_id(
            make_record(state=State.SUCCEEDED, response=b"", expire_time=now - timedelta(hours=h)),
            f"00000000-0000-4000-8000-{h:012d}",
        )
        for h in range(1, 6)
    ]
    keep = make_record(state=State.SUCCEEDED, response=b"", expire_time=now + timedelta(hours=1))
    await asyncio.gather(*(store.create(r) for r in [*old, keep]))
    assert await store.delete_expired(now, 3) == 3
    assert await store.delete_expired(now, 3) == 2
    assert await store.delete_expired(now, 3) == 0
    assert list(await _docs(raw, "operations")) == [keep.id]
    assert await _docs(raw, "operations_request_ids") == {}


async def test_delete_of_a_changed_snapshot_is_refused(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    snap = await store._snapshot(rec.id)
    await other.update(rec.name, lambda r: replace(r, progress_percent=3))
    assert not await store._delete_snapshot(snap)
    assert (await store.get(rec.name)).progress_percent == 3


# ---- watch ----


async def test_waiters_share_one_listener_released_after_the_last(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    inside = 0
    all_in = asyncio.Event()
    woke = 0

    async def waiter() -> None:
        nonlocal inside, woke
        async with store.watch(rec.name) as watch:
            inside += 1
            if inside == 10:
                all_in.set()
            if await watch.changed(10.0):
                woke += 1

    tasks = [asyncio.create_task(waiter()) for _ in range(10)]
    await all_in.wait()
    assert store.listeners_started == 1
    assert store.active_listeners == 1
    assert store.hub.watched == 1
    await other.update(rec.name, lambda r: replace(r, progress_percent=7))
    await asyncio.gather(*tasks)
    assert woke == 10
    assert store.active_listeners == 0 and store.hub.watched == 0
    await _settled(store)
    async with store.watch(rec.name):
        assert store.listeners_started == 2 and store.active_listeners == 1
    assert store.active_listeners == 0


async def _settled(store: FirestoreOperationStore) -> None:
    await eventually(
        lambda: store.listen_targets == store.active_listeners,
        timeout=10,
        what="listen targets removed",
    )


async def test_listener_per_operation(store: FirestoreOperationStore) -> None:
    recs = [make_record() for _ in range(3)]
    await asyncio.gather(*(store.create(r) for r in recs))
    async with store.watch(recs[0].name), store.watch(recs[1].name), store.watch(recs[2].name):
        assert store.active_listeners == 3
    assert store.active_listeners == 0


async def test_change_by_another_store_wakes_a_waiter(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    async with store.watch(rec.name) as watch:
        assert not await watch.changed(0.2)  # the initial snapshot does not count
        started = time.monotonic()
        await other.update(rec.name, lambda r: replace(r, progress_percent=9))
        assert await watch.changed(5.0)
        assert time.monotonic() - started < 5.0
        assert (await store.get(rec.name)).progress_percent == 9


async def test_own_write_wakes_once_and_its_echo_is_suppressed(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    async with store.watch(rec.name) as watch:
        await store.update(rec.name, lambda r: replace(r, progress_percent=1))
        assert await watch.changed(0.01)  # woken locally, without the listener
        assert not await watch.changed(1.0)  # the listener's echo of our own write
        await other.update(rec.name, lambda r: replace(r, progress_percent=2))
        assert await watch.changed(5.0)


async def test_delete_by_another_store_wakes_a_waiter(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    async with store.watch(rec.name) as watch:
        await other.delete(rec.name)
        assert await watch.changed(5.0)


async def test_cancelled_waiter_does_not_leak_a_listener(store: FirestoreOperationStore) -> None:
    rec = make_record()
    await store.create(rec)

    async def wait_forever() -> None:
        async with store.watch(rec.name) as watch:
            await watch.changed(60.0)

    task = asyncio.create_task(wait_forever())
    await eventually(lambda: store.active_listeners == 1, what="listener open")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.hub.watched == 0
    # A start already under way finishes (other waiters may share it), then stops.
    await eventually(lambda: store.active_listeners == 0, what="listener released")
    await _settled(store)


async def test_close_stops_listeners_of_remaining_waiters(project: str) -> None:
    s = await make_firestore_store(project=project)
    rec = make_record()
    await s.create(rec)
    entered = asyncio.Event()

    async def waiter() -> bool:
        async with s.watch(rec.name) as watch:
            entered.set()
            return await watch.changed(0.5)

    task = asyncio.create_task(waiter())
    await entered.wait()
    await s.close()
    assert s.active_listeners == 0
    assert await task is False


async def test_listeners_are_spread_over_listen_clients(project: str) -> None:
    """Firestore allows 100 streams per connection (the emulator does not
    enforce it): listeners go to dedicated clients, a few per connection."""
    s = await make_firestore_store(project=project)
    writer = await make_firestore_store(project=project)
    s.listeners_per_client = 2
    recs = [make_record() for _ in range(5)]
    await asyncio.gather(*(writer.create(r) for r in recs))
    try:
        async with contextlib.AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(s.watch(r.name)) for r in recs]
            assert s.active_listeners == 5 and s.listen_clients == 3
            clients = [c.client for c in s._listen_channels]
            assert all(isinstance(c, ListenClient) for c in clients)
            assert s._client not in clients
            transports = {id(c._firestore_api._transport) for c in clients}
            assert len(transports) == 3
            await writer.update(recs[4].name, lambda r: replace(r, progress_percent=4))
            assert await watches[4].changed(5.0)
            assert not await watches[0].changed(0.1)
        assert s.active_listeners == 0
        assert [c.listeners for c in s._listen_channels] == [0, 0, 0]
        async with s.watch(recs[0].name):
            assert s.listen_clients == 3  # reused, not a new one
    finally:
        await s.close()
        await writer.close()


# ---- projects ----


async def test_a_document_without_a_project_is_of_the_default_project(
    store: FirestoreOperationStore, raw: Any
) -> None:
    """Written before operations had a project: read as the default one, by
    its legacy name and its full default-project name; a rewrite stores it."""
    old = make_record(request_id="0c8d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f", request_hash="h")
    await store.create(old)
    ref = raw.collection("operations").document(old.id)
    await asyncio.to_thread(lambda: ref.update({"project": firestore.DELETE_FIELD}))
    assert "project" not in (await _docs(raw, "operations"))[old.id]
    got = await store.get(f"operations/{old.id}")
    assert got.project == "default"
    assert got.name == f"projects/default/operations/{old.id}"
    assert (await store.get(got.name)).id == old.id
    with pytest.raises(NotFound):
        await store.get(f"projects/other/operations/{old.id}")
    with pytest.raises(NotFound):
        await store.delete(f"projects/other/operations/{old.id}")
    await store.update(got.name, lambda r: replace(r, progress_percent=3))
    assert (await _docs(raw, "operations"))[old.id]["project"] == "default"
    # Its request id still deduplicates in the default project (same reservation key).
    again = await store.create(replace(old, id="again"))
    assert not again.created and again.record.id == old.id


async def test_reservations_are_keyed_by_project_and_request_id(
    store: FirestoreOperationStore, raw: Any
) -> None:
    rid = "9e8d7c6b-5a49-4382-a716-05f4e3d2c1b0"
    a = _with_request_id(make_record(project="alpha"), rid)
    d = _with_request_id(make_record(), rid)
    await store.create(a)
    await store.create(d)
    reservations = await _docs(raw, "operations_request_ids")
    assert set(reservations) == {request_doc_id("alpha", rid), request_doc_id("default", rid)}
    assert reservations[request_doc_id("alpha", rid)]["operation_id"] == a.id
    assert reservations[request_doc_id("default", rid)]["operation_id"] == d.id
    await store.delete(a.name)
    assert set(await _docs(raw, "operations_request_ids")) == {request_doc_id("default", rid)}


async def test_one_listen_stream_carries_every_listener(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    import threading

    recs = [make_record() for _ in range(20)]
    await asyncio.gather(*(store.create(r) for r in recs))
    async with store.watch(recs[0].name):  # the stream and its reader thread exist now
        threads = threading.active_count()
        async with contextlib.AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(store.watch(r.name)) for r in recs[1:]]
            assert store.active_listeners == 20 and store.listen_targets == 20
            assert store.listen_clients == 1
            assert threading.active_count() == threads  # no thread per listener
            for rec in recs[1:]:
                await other.update(rec.name, lambda r: replace(r, progress_percent=3))
            woken = await asyncio.gather(*(w.changed(10.0) for w in watches))
            assert all(woken)
    await _settled(store)
    assert store.listen_targets == 0


async def test_a_broken_listen_stream_is_opened_again_and_wakes_its_waiters(
    store: FirestoreOperationStore, other: FirestoreOperationStore
) -> None:
    rec = make_record()
    await store.create(rec)
    async with store.watch(rec.name) as watch:
        stream = store._listen_channels[0].stream
        broken = stream._call
        assert broken is not None
        broken.cancel()  # as if the connection dropped
        assert await watch.changed(10.0)  # woken to read again: a change may be lost
        await eventually(
            lambda: stream._call is not None and stream._call is not broken,
            timeout=10,
            what="a new listen stream",
        )
        while await watch.changed(0.3):
            pass  # the re-added target's first events
        await other.update(rec.name, lambda r: replace(r, progress_percent=4))
        assert await watch.changed(10.0)
