"""The embedded store and queue paired on one file: create + enqueue, take +
claim, and outcome + ack are each one transaction, all or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun_core import transitions
from longrun_core.errors import NotFound
from longrun_core.model import OperationRecord, State, evolve
from longrun_core.queue import Delivery, TaskMessage, Transition
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import COLUMNS, SqliteOperationStore
from tests.contract.records import make_record

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
RETENTION = timedelta(days=30)


def claim_by(worker: str) -> Transition:
    return lambda r: transitions.claim(r, worker=worker, now=NOW, lease=LEASE, retention=RETENTION)


def finish(worker: str, attempt: int = 1) -> Transition:
    return lambda r: transitions.finish(
        r,
        worker=worker,
        attempt=attempt,
        now=NOW,
        retention=RETENTION,
        response=transitions.status_bytes(0, "ok"),
    )


def never_dead(rec: OperationRecord) -> str | None:
    return None


@dataclass
class Pair:
    store: SqliteOperationStore
    queue: SqliteTaskQueue
    path: Path

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path) as conn:
            return list(conn.execute(sql))

    def fail_on(self, when: str) -> None:
        """Make the next statement of kind `when` ("INSERT ON tasks", ...) fail
        inside its transaction."""
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                f"CREATE TRIGGER fail_once BEFORE {when} "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )

    def heal(self) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("DROP TRIGGER fail_once")

    async def take(self, claim: Transition | None) -> Delivery:
        (delivery,) = await self.queue.receive(1, 5.0, claim=claim)
        return delivery


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    backend = SqliteBackend(tmp_path / "lro.db")
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(backend, visibility_timeout=30.0)
    queue.attach(store)
    await store.start()
    await queue.start()
    try:
        yield Pair(store, queue, tmp_path / "lro.db")
    finally:
        await queue.close()
        await store.close()


def test_only_a_store_and_queue_of_one_backend_pair(tmp_path: Path) -> None:
    backends = [SqliteBackend(tmp_path / "a.db"), SqliteBackend(tmp_path / "a.db")]
    store = SqliteOperationStore(backends[0])
    queue = SqliteTaskQueue(backends[1])
    try:
        with pytest.raises(ValueError, match="share one SqliteBackend"):
            queue.attach(store)
    finally:
        for backend in backends:
            backend.notifier.close()


# ---- create + enqueue ----


async def test_create_enqueues_the_message_in_the_same_write(pair: Pair) -> None:
    rec = make_record()
    result = await pair.store.create(rec)
    assert (result.created, result.enqueued) == (True, True)
    assert pair.rows("SELECT operation, task, attempt FROM tasks") == [(rec.name, "noop", 0)]
    delivery = await pair.take(None)
    assert delivery.message.operation == rec.name


async def test_a_create_that_cannot_enqueue_stores_nothing(pair: Pair) -> None:
    pair.fail_on("INSERT ON tasks")
    rec = make_record()
    with pytest.raises(sqlite3.Error):
        await pair.store.create(rec)
    assert pair.rows("SELECT id FROM operations") == []
    pair.heal()
    assert (await pair.store.create(rec)).enqueued
    assert len(pair.rows("SELECT seq FROM tasks")) == 1


async def test_a_repeated_request_id_enqueues_nothing_more(pair: Pair) -> None:
    first = make_record(request_id="r-1", request_hash="h")
    await pair.store.create(first)
    again = await pair.store.create(make_record(request_id="r-1", request_hash="h"))
    assert (again.created, again.enqueued, again.record.id) == (False, False, first.id)
    assert len(pair.rows("SELECT seq FROM tasks")) == 1


# ---- take + claim ----


async def test_the_take_claims_the_operation_in_its_transaction(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    delivery = await pair.take(claim_by("w1"))
    claimed = delivery.claimed
    assert isinstance(claimed, OperationRecord)
    assert (claimed.state, claimed.attempt, claimed.lease_owner) == (State.RUNNING, 1, "w1")
    assert await pair.store.get(rec.name) == claimed


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        ("delete", NotFound),
        ("finish", transitions.AlreadyDone),
        ("claim", transitions.LeaseHeld),
    ],
)
async def test_a_claim_that_cannot_happen_hands_back_its_reason(
    pair: Pair, prepare: str, expected: type[Exception]
) -> None:
    rec = make_record()
    await pair.store.create(rec)
    if prepare == "delete":
        await pair.store.delete(rec.name)
    else:
        await pair.store.update(rec.name, claim_by("other"))
        if prepare == "finish":
            await pair.store.update(rec.name, finish("other"))
    before = pair.rows("SELECT * FROM operations")
    delivery = await pair.take(claim_by("w1"))
    assert isinstance(delivery.claimed, expected)
    assert pair.rows("SELECT * FROM operations") == before  # nothing written


async def test_an_unexpected_claim_error_is_handed_back_and_the_take_stands(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)

    def broken(r: OperationRecord) -> OperationRecord:
        raise ZeroDivisionError("bug")

    delivery = await pair.take(broken)
    assert isinstance(delivery.claimed, ZeroDivisionError)
    assert pair.rows("SELECT deliveries, lease_token IS NOT NULL FROM tasks") == [(1, 1)]
    assert (await pair.store.get(rec.name)).state is State.QUEUED


async def test_a_database_error_in_the_claim_undoes_the_take(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    pair.fail_on("UPDATE ON operations")
    with pytest.raises(sqlite3.Error):
        await pair.queue.receive(1, 1.0, claim=claim_by("w1"))
    assert pair.rows("SELECT deliveries, lease_token FROM tasks") == [(0, None)]
    pair.heal()
    delivery = await pair.take(claim_by("w1"))
    assert isinstance(delivery.claimed, OperationRecord)


async def test_an_unpaired_queue_leaves_the_claim_to_the_caller(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "lro.db")
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(backend)
    await store.start()
    await queue.start()
    try:
        rec = make_record()
        result = await store.create(rec)
        assert not result.enqueued
        await queue.publish(TaskMessage(rec.name, rec.task, rec.attempt))
        (delivery,) = await queue.receive(1, 5.0, claim=claim_by("w1"))
        assert delivery.claimed is None
        assert (await store.get(rec.name)).state is State.QUEUED
    finally:
        await queue.close()
        await store.close()


# ---- outcome + ack ----


async def test_settle_writes_the_outcome_and_acks_in_one_transaction(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    delivery = await pair.take(claim_by("w1"))
    between: list[str] = []
    final = await delivery.settle(
        pair.store,
        rec.name,
        finish("w1"),
        dead_letter_if=never_dead,
        between=lambda: between.append("called"),
    )
    assert final.state is State.SUCCEEDED
    assert await pair.store.get(rec.name) == final
    assert pair.rows("SELECT seq FROM tasks") == []
    assert between == []  # no gap between the write and the ack to crash in


async def test_a_fenced_outcome_neither_writes_nor_acks(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    delivery = await pair.take(claim_by("w1"))
    with pytest.raises(transitions.LeaseLost):
        await delivery.settle(pair.store, rec.name, finish("w2"), dead_letter_if=never_dead)
    assert (await pair.store.get(rec.name)).state is State.RUNNING
    assert len(pair.rows("SELECT seq FROM tasks")) == 1


async def test_an_ack_that_fails_undoes_the_outcome(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    delivery = await pair.take(claim_by("w1"))
    pair.fail_on("DELETE ON tasks")
    with pytest.raises(sqlite3.Error):
        await delivery.settle(pair.store, rec.name, finish("w1"), dead_letter_if=never_dead)
    assert (await pair.store.get(rec.name)).state is State.RUNNING
    pair.heal()


async def test_settle_can_dead_letter_instead_of_acking(pair: Pair) -> None:
    rec = make_record()
    await pair.store.create(rec)
    delivery = await pair.take(claim_by("w1"))
    await delivery.settle(
        pair.store, rec.name, finish("w1"), dead_letter_if=lambda r: f"{r.state.name} (test)"
    )
    assert pair.rows("SELECT seq FROM tasks") == []
    ((message, reason),) = await pair.queue.dead_letters()
    assert (message.operation, reason) == (rec.name, "SUCCEEDED (test)")


async def test_settle_with_another_store_takes_two_steps(pair: Pair, tmp_path: Path) -> None:
    other = SqliteOperationStore(SqliteBackend(tmp_path / "other.db"))
    await other.start()
    try:
        rec = make_record()
        await pair.store.create(rec)
        await other.create(rec)
        await other.update(rec.name, claim_by("w1"))
        delivery = await pair.take(None)
        between: list[str] = []
        await delivery.settle(
            other,
            rec.name,
            finish("w1"),
            dead_letter_if=never_dead,
            between=lambda: between.append("called"),
        )
        assert between == ["called"]
        assert (await other.get(rec.name)).state is State.SUCCEEDED
        assert pair.rows("SELECT seq FROM tasks") == []
    finally:
        await other.close()


# ---- writes name only the columns that change ----


CHANGES: list[tuple[str, Transition]] = [
    ("claim", claim_by("w1")),
    (
        "progress",
        lambda r: transitions.renew(
            r, worker="w1", attempt=1, now=NOW, lease=LEASE, progress=(40, "almost")
        ),
    ),
    ("cancel", lambda r: transitions.request_cancel(r, now=NOW, retention=RETENTION)),
    (
        "retry",
        lambda r: transitions.retry(
            r,
            worker="w1",
            attempt=1,
            now=NOW,
            delay=timedelta(seconds=5),
            error=transitions.status_bytes(14, "later"),
        ),
    ),
    ("finish", finish("w1")),
    (
        "fail",
        lambda r: transitions.finish(
            r,
            worker="w1",
            attempt=1,
            now=NOW,
            retention=RETENTION,
            error=transitions.status_bytes(13, "boom"),
        ),
    ),
]


@pytest.mark.parametrize(("label", "change"), CHANGES, ids=[c[0] for c in CHANGES])
async def test_a_partial_write_stores_what_a_full_write_would(
    tmp_path: Path,
    label: str,
    change: Transition,
) -> None:
    """Every column of the stored row, after the same change written the
    partial way (`previous` given) and the full way."""
    rows = []
    rec = make_record(id=f"op-{label}")
    for mode in ("partial", "full"):
        store = SqliteOperationStore(SqliteBackend(tmp_path / f"{label}-{mode}.db"))
        await store.start()
        try:
            await store.create(rec)
            if label in ("claim", "cancel"):
                current = await store.get(rec.name)
            else:
                current = await store.update(rec.name, claim_by("w1"))
            changed = change(current)
            assert changed is not None and changed != current
            new = evolve(changed, version=current.version + 1)
            previous = current if mode == "partial" else None
            assert await store._replace_if_version(new, current.version, previous=previous)
            with sqlite3.connect(tmp_path / f"{label}-{mode}.db") as conn:
                rows.append(conn.execute(f"SELECT {', '.join(COLUMNS)} FROM operations").fetchall())
        finally:
            await store.close()
    assert rows[0] == rows[1]


# ---- reads through the record cache ----


async def test_a_store_sees_another_processs_writes_through_its_cache(tmp_path: Path) -> None:
    """Two stores on one file stand for two processes: the reader's cached
    record never hides a newer version or a delete."""
    writer = SqliteOperationStore(SqliteBackend(tmp_path / "shared.db"))
    reader = SqliteOperationStore(SqliteBackend(tmp_path / "shared.db"))
    await writer.start()
    await reader.start()
    try:
        rec = make_record()
        await writer.create(rec)
        first = await reader.get(rec.name)
        assert await reader.get(rec.name) is first  # unchanged: the cached record
        claimed = await writer.update(rec.name, claim_by("w1"))
        assert await reader.get(rec.name) == claimed
        await writer.delete(rec.name)
        with pytest.raises(NotFound):
            await reader.get(rec.name)
        # Stored again under its id, later: version 1 again, other content.
        again = evolve(rec, update_time=rec.update_time + timedelta(seconds=1), labels={"n": "2"})
        await writer.create(again)
        assert (await reader.get(rec.name)).labels == {"n": "2"}
    finally:
        await reader.close()
        await writer.close()
