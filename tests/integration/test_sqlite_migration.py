"""A database file written before leases kept their duration and release
count: the store adds the columns on start and reads the old rows."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from longrun_core import transitions
from longrun_core.model import State
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.store import ADDED_COLUMNS, SqliteOperationStore, migrate, to_row
from tests.contract.records import BASE, make_record


def _old_database(path: Path) -> str:
    """An operations table without the added columns, holding one RUNNING row
    an older worker wrote; returns the row's name."""
    rec = make_record(
        state=State.RUNNING,
        attempt=1,
        lease_owner="old-worker",
        update_time=BASE,
        lease_expire_time=BASE + timedelta(seconds=20),
        dispatch_due_time=None,
        version=3,
    )
    row = {k: v for k, v in to_row(rec).items() if k not in ADDED_COLUMNS}
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(operations)")}
        assert not have & set(ADDED_COLUMNS), "SCHEMA gained the columns: drop the migration"
        columns = ", ".join(row)
        conn.execute(
            f"INSERT INTO operations ({columns}) VALUES ({', '.join(':' + c for c in row)})", row
        )
    return rec.name


async def test_an_old_database_is_migrated_on_start_and_its_rows_read(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    name = _old_database(path)
    store = SqliteOperationStore(SqliteBackend(path))
    await store.start()
    try:
        old = await store.get(name)
        assert (old.lease_duration, old.releases, old.version) == (None, 0, 3)
        # Its lease: what the older holder wrote (expiry minus its last write).
        assert transitions.lease_duration(old) == timedelta(seconds=20)
        renewed = await store.update(
            name,
            lambda r: transitions.renew(
                r, worker="old-worker", attempt=1, now=BASE, lease=timedelta(seconds=7)
            ),
        )
        assert renewed.lease_duration == timedelta(seconds=7)
        assert await store.get(name) == renewed
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        migrate(conn)  # again, as a second process would: nothing to do, no error
        have = {r[1] for r in conn.execute("PRAGMA table_info(operations)")}
    assert set(ADDED_COLUMNS) <= have


async def test_old_rows_get_the_default_project_and_request_ids_become_per_project(
    tmp_path: Path,
) -> None:
    """A database from before projects: its rows are the default project's,
    the request-id index unique across all rows is replaced by one per
    project, and a project list walks its own index (no full scan)."""
    path = tmp_path / "old.db"
    rid = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
    rec = make_record(request_id=rid, request_hash="h")
    row = {k: v for k, v in to_row(rec).items() if k not in ADDED_COLUMNS}
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
        conn.execute(  # the index an older version made
            "CREATE UNIQUE INDEX operations_request_id ON operations(request_id) "
            "WHERE request_id IS NOT NULL"
        )
        conn.execute(
            f"INSERT INTO operations ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})",
            row,
        )
    store = SqliteOperationStore(SqliteBackend(path))
    await store.start()
    try:
        old = await store.get(f"operations/{rec.id}")
        assert (old.project, old.creator) == ("default", None)
        assert old.name == f"projects/default/operations/{rec.id}"
        # The same request id in another project is another operation.
        other = replace(make_record(project="acme"), request_id=rid, request_hash="h2")
        assert (await store.create(other)).created
        # In the default project it still deduplicates.
        again = await store.create(replace(rec, id="again"))
        assert not again.created and again.record.id == rec.id
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        plan = " ".join(
            str(r[3])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT create_us, id FROM operations "
                "INDEXED BY operations_project_order WHERE project = ? "
                "ORDER BY create_us DESC, id DESC LIMIT 10",
                ("acme",),
            )
        )
    assert "operations_request_id" not in indexes
    assert {"operations_project_request_id", "operations_project_order"} <= indexes
    assert "USING COVERING INDEX operations_project_order (project=?)" in plan
    assert "TEMP B-TREE" not in plan  # walked in list order, no sort
