"""The embedded store under storage faults, in process: a full disk and a
read-only file become domain errors (and go away with the fault), a failed
COMMIT leaves no open transaction, a deleted or replaced file is refused and
rescued, a deleted database is not silently recreated, and processes opening
a fresh database at the same moment all get it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from longrun_core.errors import StartupError, StorageFull, StoreReplaced, StoreUnavailable
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.db import Database, marker_path, transaction
from longrun_core.sqlite.store import SqliteOperationStore
from tests.contract.records import make_record
from tests.support.disk import fill, immutable, require_immutable_blocks_writes, small_tmpfs
from tests.support.waiting import wait_until


def _insert(blob_size: int) -> Callable[[sqlite3.Connection], None]:
    def insert(conn: sqlite3.Connection) -> None:
        transaction(
            conn,
            lambda c: c.execute("INSERT INTO blobs (data) VALUES (zeroblob(?))", (blob_size,)),
        )

    return insert


async def _database(path: Path) -> Database:
    db = Database(path)
    await db.start()
    await db.call(lambda c: c.execute("CREATE TABLE IF NOT EXISTS blobs (data BLOB)"))
    return db


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        yield disk


async def test_a_full_disk_is_storage_full_and_writes_resume_once_space_is_freed(
    tmpfs: Path,
) -> None:
    db = await _database(tmpfs / "longrun.db")
    try:
        filler = fill(tmpfs)
        with pytest.raises(StorageFull) as caught:
            for _ in range(100):
                await db.call(_insert(64 * 1024))
        assert caught.value.reason == "STORAGE_FULL"
        assert caught.value.metadata["sqlite_error"] == "SQLITE_FULL"
        with pytest.raises(StorageFull):
            await db.probe()
        # The failed COMMIT left no transaction open on the connection.
        assert await db.call(lambda c: c.in_transaction) is False
        filler.unlink()
        await db.call(_insert(1024))
        await db.probe()  # the fault met before this probe was reported by the last one
        await db.probe()
    finally:
        await db.close()


async def test_a_read_only_file_is_unavailable_and_writes_resume_after(tmp_path: Path) -> None:
    require_immutable_blocks_writes(tmp_path)
    path = tmp_path / "longrun.db"
    db = await _database(path)
    other = Database(path)  # opened while the file is read-only: SQLite opens it read-only
    try:
        with immutable(path, path.with_name(path.name + "-wal")):
            with pytest.raises(StoreUnavailable) as caught:
                await db.call(_insert(10))
            assert caught.value.reason in {"STORE_IO_ERROR", "STORE_READ_ONLY"}
            assert caught.value.code.name == "UNAVAILABLE"
            await other.start()
            with pytest.raises(StoreUnavailable) as late:
                await other.call(_insert(10))
            assert late.value.reason == "STORE_READ_ONLY"
            assert await db.read(lambda c: c.execute("SELECT 1").fetchall()) == [(1,)]
        await db.call(_insert(10))

        # The connection opened read-only is replaced by one that writes.
        async def writes() -> bool:
            try:
                await other.call(_insert(10))
            except StoreUnavailable:
                return False
            return True

        await wait_until(writes, timeout=5, interval=0.1)
    finally:
        await other.close()
        await db.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteOperationStore]:
    s = SqliteOperationStore(SqliteBackend(tmp_path / "db" / "longrun.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_lost_file_is_refused_rescued_and_reported(
    store: SqliteOperationStore, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = store.backend.db
    kept = [(await store.create(make_record(id=f"op-{i}"))).record for i in range(5)]
    inode = db.path.stat().st_ino
    if how == "deleted":
        db.path.unlink()
    else:
        sqlite3.connect(db.path.with_name("other.db")).close()
        db.path.with_name("other.db").rename(db.path)
    reason = "STORE_FILE_DELETED" if how == "deleted" else "STORE_FILE_REPLACED"
    with pytest.raises(StoreReplaced) as on_write:
        await store.create(make_record(id="op-late"))
    assert on_write.value.reason == reason
    with pytest.raises(StoreReplaced):  # a read is refused too: never NOT_FOUND
        await store.get(kept[0].name)
    with pytest.raises(StoreReplaced):
        await store.backend.probe()
    # Loud: one ERROR naming the file and the way back.
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(db.path) in errors[0].getMessage()
    assert "rescued" in errors[0].getMessage()
    # Never written to: no new file, or the replacement untouched.
    assert not db.path.exists() if how == "deleted" else db.path.stat().st_size == 0
    # Rescued: every operation it held is in the copy.
    rescued = db.path.with_name(f"{db.path.name}.rescued-{inode}")
    with contextlib.closing(sqlite3.connect(rescued)) as copy:
        ids = {row[0] for row in copy.execute("SELECT id FROM operations")}
    assert ids == {r.id for r in kept}


async def test_a_deleted_database_is_not_recreated_at_start(tmp_path: Path) -> None:
    path = tmp_path / "longrun.db"
    db = await _database(path)
    await db.close()
    assert marker_path(path).exists()
    for leftover in path.parent.glob("longrun.db*"):  # `rm longrun.db*`
        leftover.unlink()
    again = Database(path)
    with pytest.raises(StartupError, match="says one was created there"):
        await again.start()
    await again.close()
    assert not path.exists()
    marker_path(path).unlink()  # deleting the marker too means "start empty"
    fresh = await _database(path)
    await fresh.close()
    assert path.exists()


def test_connections_opening_a_fresh_database_together_all_get_it(tmp_path: Path) -> None:
    """Finding 10: `PRAGMA journal_mode=WAL -> database is locked` at start.
    Eight connections open one new database at the same instant (a barrier;
    each on its own thread, as in separate processes SQLite's locks are file
    locks), 300 times; unguarded, about one round in 70 failed."""
    failures: list[str] = []
    for round_ in range(300):
        path = tmp_path / f"round-{round_}" / "longrun.db"
        barrier = threading.Barrier(8)
        opened: list[sqlite3.Connection] = []
        threads = [
            threading.Thread(target=_open_at, args=(Database(path), barrier, opened, failures))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for conn in opened:
            conn.close()
    assert not failures, failures[:3]


def _open_at(
    db: Database,
    barrier: threading.Barrier,
    opened: list[sqlite3.Connection],
    failures: list[str],
) -> None:
    barrier.wait()
    try:
        opened.append(db._open())
    except Exception as exc:
        failures.append(f"{db.path}: {exc!r}")
