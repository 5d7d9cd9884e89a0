"""Queue configuration in the embedded database: the `queues` table beside
the operations (created by `migrate` on start; older files get it then)."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import AlreadyExists
from longrun_core.queues import (
    LIMIT_FIELDS,
    ConcurrencyLimits,
    QueueConfig,
    QueueState,
    RetryConfig,
)
from longrun_core.sqlite.db import Database, transaction

TABLE = """
CREATE TABLE IF NOT EXISTS queues (
    project TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    retry TEXT NOT NULL,
    create_us INTEGER NOT NULL,
    update_us INTEGER NOT NULL,
    purge_us INTEGER,
    limits TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (project, queue_id)
);
CREATE TABLE IF NOT EXISTS rate_buckets (
    project TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    tat_us INTEGER NOT NULL,
    start_us INTEGER,
    PRIMARY KEY (project, queue_id)
);
"""

_COLUMNS = "project, queue_id, state, retry, create_us, update_us, purge_us, limits"
_DURATIONS = ("max_retry_duration", "min_backoff", "max_backoff")


def migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(TABLE)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(queues)")}
    if "limits" not in columns:  # a table made before the concurrency limits
        conn.execute("ALTER TABLE queues ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'")


def limits_to_json(limits: ConcurrencyLimits) -> str:
    data = {name: value for name in LIMIT_FIELDS if (value := getattr(limits, name)) is not None}
    return json.dumps(data, sort_keys=True)


def limits_from_json(text: str) -> ConcurrencyLimits:
    data = json.loads(text)
    return ConcurrencyLimits(**{name: data[name] for name in LIMIT_FIELDS if name in data})


def read_bucket(
    conn: sqlite3.Connection, project: str, queue_id: str
) -> tuple[datetime | None, datetime | None]:
    """A queue's rate bucket (longrun_core.rate_bucket): (tat, start_tat),
    None for a time never set."""
    row = conn.execute(
        "SELECT tat_us, start_us FROM rate_buckets WHERE project = ? AND queue_id = ?",
        (project, queue_id),
    ).fetchone()
    if row is None:
        return None, None
    return from_micros(row[0]), None if row[1] is None else from_micros(row[1])


def write_bucket(
    conn: sqlite3.Connection,
    project: str,
    queue_id: str,
    tat: datetime,
    start_tat: datetime | None,
) -> None:
    """Store a queue's bucket (inside the caller's write transaction)."""
    conn.execute(
        "INSERT OR REPLACE INTO rate_buckets (project, queue_id, tat_us, start_us) "
        "VALUES (?, ?, ?, ?)",
        (
            project,
            queue_id,
            to_micros(tat),
            None if start_tat is None else to_micros(start_tat),
        ),
    )


def retry_to_json(retry: RetryConfig) -> str:
    data: dict[str, Any] = {}
    if retry.max_attempts is not None:
        data["max_attempts"] = retry.max_attempts
    if retry.max_doublings is not None:
        data["max_doublings"] = retry.max_doublings
    for name in _DURATIONS:
        value: timedelta | None = getattr(retry, name)
        if value is not None:
            data[name + "_us"] = value // timedelta(microseconds=1)
    return json.dumps(data, sort_keys=True)


def retry_from_json(text: str) -> RetryConfig:
    data = json.loads(text)
    durations = {
        name: timedelta(microseconds=data[name + "_us"])
        for name in _DURATIONS
        if name + "_us" in data
    }
    return RetryConfig(
        max_attempts=data.get("max_attempts"), max_doublings=data.get("max_doublings"), **durations
    )


def _row(config: QueueConfig) -> tuple[Any, ...]:
    if config.create_time is None or config.update_time is None:
        raise ValueError(f"queue {config.name} has no create/update time to store")
    return (
        config.project,
        config.queue_id,
        int(config.state),
        retry_to_json(config.retry),
        to_micros(config.create_time),
        to_micros(config.update_time),
        None if config.purge_time is None else to_micros(config.purge_time),
        limits_to_json(config.limits),
    )


def _config(row: tuple[Any, ...]) -> QueueConfig:
    return QueueConfig(
        project=row[0],
        queue_id=row[1],
        state=QueueState(row[2]),
        retry=retry_from_json(row[3]),
        create_time=from_micros(row[4]),
        update_time=from_micros(row[5]),
        purge_time=None if row[6] is None else from_micros(row[6]),
        limits=limits_from_json(row[7]),
    )


def _read(conn: sqlite3.Connection, project: str, queue_id: str) -> QueueConfig | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM queues WHERE project = ? AND queue_id = ?", (project, queue_id)
    ).fetchone()
    return None if row is None else _config(row)


_UPSERT = f"INSERT OR REPLACE INTO queues ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"


class SqliteQueueStore:
    """A QueueStore on `db` (the operation store's Database, or one of its
    own: `owns` closes it on close). Writes are BEGIN IMMEDIATE transactions,
    so an update reads and writes with no other writer in between."""

    def __init__(self, db: Database, *, owns: bool = False) -> None:
        self.db = db
        self._owns = owns

    async def start(self) -> None:
        if self._owns:
            await self.db.start()
        await self.db.call(migrate)

    async def close(self) -> None:
        if self._owns:
            await self.db.close()

    async def create(self, config: QueueConfig) -> None:
        def write(c: sqlite3.Connection) -> None:
            if _read(c, config.project, config.queue_id) is not None:
                raise AlreadyExists(
                    f"queue {config.name} already exists", reason="QUEUE_ALREADY_EXISTS"
                )
            c.execute(_UPSERT, _row(config))

        await self.db.call(lambda c: transaction(c, write))

    async def get(self, project: str, queue_id: str) -> QueueConfig | None:
        return await self.db.call(lambda c: _read(c, project, queue_id))

    async def list(self, project: str, *, after: str = "", limit: int = 100) -> list[QueueConfig]:
        rows = await self.db.call(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM queues WHERE project = ? AND queue_id > ? "
                "ORDER BY queue_id LIMIT ?",
                (project, after, limit),
            ).fetchall()
        )
        return [_config(r) for r in rows]

    async def update(
        self, project: str, queue_id: str, change: Callable[[QueueConfig | None], QueueConfig]
    ) -> QueueConfig:
        def write(c: sqlite3.Connection) -> QueueConfig:
            new = change(_read(c, project, queue_id))
            c.execute(_UPSERT, _row(new))
            return new

        return await self.db.call(lambda c: transaction(c, write))

    async def delete(self, project: str, queue_id: str) -> bool:
        def write(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "DELETE FROM queues WHERE project = ? AND queue_id = ?", (project, queue_id)
            )
            return bool(cur.rowcount)

        return await self.db.call(lambda c: transaction(c, write))

    async def list_all(self, limit: int) -> builtins.list[QueueConfig]:
        rows = await self.db.call(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM queues ORDER BY project, queue_id LIMIT ?", (limit,)
            ).fetchall()
        )
        return [_config(r) for r in rows]
