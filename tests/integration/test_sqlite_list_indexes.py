"""The SQLite list indexes: a database written before they existed gets
them (the label table filled from the stored operations) when a store
starts, and triggers keep the label table in step with every write."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

from longrun_core.filtering import parse_filter
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.store import ADDED_COLUMNS, SqliteOperationStore, to_row
from longrun_core.store import ScanBudget
from tests.contract.records import make_record


def label_rows(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT key, value, op_id FROM operation_labels").fetchall())


async def test_an_old_database_gets_its_label_index_at_start(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = [make_record(labels={"env": "prod", "team": "a"}), make_record(labels={})]
    with sqlite3.connect(path) as conn:  # as an older version left it
        conn.executescript(SCHEMA)  # without the columns `migrate` adds, too
        rows = [{k: v for k, v in to_row(r).items() if k not in ADDED_COLUMNS} for r in old]
        columns = list(rows[0])
        conn.executemany(
            f"INSERT INTO operations ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})",
            rows,
        )
    store = SqliteOperationStore(SqliteBackend(path))
    await store.start()
    try:
        assert label_rows(path) == [("env", "prod", old[0].id), ("team", "a", old[0].id)]
        newer = [make_record(labels={"env": "prod"}) for _ in range(30)]
        for rec in newer:
            await store.create(rec)
        for _ in range(30):
            await store.create(make_record(labels={"env": "dev"}))
        # Through the label index the 31 matches are the only rows read: a
        # budget of 32 finds them all, the old one included, in one page.
        flt = parse_filter('labels.env = "prod"')
        page = await store.list(page_size=40, after=None, flt=flt, budget=ScanBudget(32))
        assert [r.id for r in page.records] == [r.id for r in [*reversed(newer), old[0]]]
        assert page.next_cursor is None
    finally:
        await store.close()


async def test_triggers_follow_creates_deletes_and_label_changes(tmp_path: Path) -> None:
    path = tmp_path / "ops.db"
    store = SqliteOperationStore(SqliteBackend(path))
    await store.start()
    try:
        a = make_record(labels={"env": "prod"})
        b = make_record(labels={"env": "dev", "x": "1"})
        await store.create(a)
        await store.create(b)
        assert label_rows(path) == [("env", "dev", b.id), ("env", "prod", a.id), ("x", "1", b.id)]
        await store.delete(a.name)
        assert label_rows(path) == [("env", "dev", b.id), ("x", "1", b.id)]
        await store.update(b.name, lambda r: replace(r, labels={"env": "qa"}))
        assert label_rows(path) == [("env", "qa", b.id)]
        await store.update(b.name, lambda r: replace(r, progress_percent=5))
        assert label_rows(path) == [("env", "qa", b.id)]
    finally:
        await store.close()


async def test_a_store_starts_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    """Once the indexes exist, starting a store only reads: it does not wait
    for a writer (nor fail on a database it may not write)."""
    path = tmp_path / "ops.db"
    first = SqliteOperationStore(SqliteBackend(path))
    await first.start()
    await first.close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        second = SqliteOperationStore(SqliteBackend(path))
        async with asyncio.timeout(5):
            await second.start()
        await second.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
