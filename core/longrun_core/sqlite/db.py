"""One SQLite connection per process, used from a single dedicated thread so
the event loop never blocks on disk."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from longrun_core.errors import StartupError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    params BLOB NOT NULL,
    state INTEGER NOT NULL,
    done INTEGER NOT NULL,
    create_us INTEGER NOT NULL,
    update_us INTEGER NOT NULL,
    labels TEXT NOT NULL,
    start_us INTEGER,
    end_us INTEGER,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    progress_percent INTEGER NOT NULL,
    progress_message TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    request_id TEXT,
    request_hash TEXT,
    response BLOB,
    error BLOB,
    error_code INTEGER,
    lease_owner TEXT,
    lease_expire_us INTEGER,
    dispatch_due_us INTEGER,
    run_after_us INTEGER,
    expire_us INTEGER,
    version INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS operations_request_id
    ON operations(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_order ON operations(create_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS operations_dispatch_due
    ON operations(dispatch_due_us) WHERE dispatch_due_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_lease_expire
    ON operations(lease_expire_us) WHERE lease_expire_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_expire ON operations(expire_us) WHERE expire_us IS NOT NULL;

CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    visible_us INTEGER NOT NULL,
    lease_token TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    enqueued_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_visible ON tasks(visible_us, seq);

CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    operation TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_us INTEGER NOT NULL
);
"""


class Database:
    """A connection to the database file, run on one thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(
                f"cannot open the SQLite database {self.path}: {exc}. Its folder must exist "
                f"or be creatable, and be writable by this user (uid {os.getuid()})"
            ) from exc
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(SCHEMA)
        return conn

    async def start(self) -> None:
        if self._conn is None:
            self._conn = await self.run(lambda: self._open())

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database not started")
        return self._conn

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the database thread."""
        return await self.run(lambda: fn(self._connection()))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read on the loop thread, on a read-only connection of its
        own (cheaper than the hop to the database thread); if the file is busy,
        fall back to the database thread. `fn` must consume its cursor (an
        unconsumed one pins an old snapshot on that connection)."""
        if self._conn is None:
            raise RuntimeError("database not started")
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, isolation_level=None, timeout=0.05)
            self._reader.execute("PRAGMA query_only=1")
        try:
            return fn(self._reader)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return await self.call(fn)

    async def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; no table read)."""
        row = await self.call(lambda c: c.execute("PRAGMA data_version").fetchone())
        return int(row[0])

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.run(conn.close)
        self._executor.shutdown(wait=False)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run `fn` in BEGIN IMMEDIATE ... COMMIT (rolled back on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
