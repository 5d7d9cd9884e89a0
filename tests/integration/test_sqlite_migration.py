"""A database file written before leases kept their duration and release
count: the store adds the columns on start and reads the old rows."""

from __future__ import annotations

import sqlite3
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
