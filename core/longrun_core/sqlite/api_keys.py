"""API keys in the embedded database: the `api_keys` table beside the
operations (created by `migrate` on start; older files get it then)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from longrun_core.auth.api_keys import ApiKey
from longrun_core.auth.roles import Role
from longrun_core.clock import from_micros, to_micros
from longrun_core.sqlite.db import Database, transaction

TABLE = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    create_us INTEGER NOT NULL,
    expire_us INTEGER,
    last_use_us INTEGER,
    revoke_us INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_project ON api_keys(project, key_id);
"""

_COLUMNS = "key_id, project, role, secret_hash, create_us, expire_us, last_use_us, revoke_us"

_MARKS = ",".join("?" * 8)


def migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(TABLE)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        key_id=row[0],
        project=row[1],
        role=Role(row[2]),
        secret_hash=row[3],
        create_time=from_micros(row[4]),
        expire_time=_time(row[5]),
        last_use_time=_time(row[6]),
        revoke_time=_time(row[7]),
    )


class SqliteKeyStore:
    """A KeyStore on `db` (the operation store's Database, or one of its own:
    `owns` closes it on close)."""

    def __init__(self, db: Database, *, owns: bool = False) -> None:
        self.db = db
        self._owns = owns

    async def start(self) -> None:
        await self.db.start()
        await self.db.call(migrate)

    async def close(self) -> None:
        if self._owns:
            await self.db.close()

    async def add(self, key: ApiKey) -> None:
        row = (
            key.key_id,
            key.project,
            key.role.value,
            key.secret_hash,
            to_micros(key.create_time),
            _us(key.expire_time),
            _us(key.last_use_time),
            _us(key.revoke_time),
        )
        await self.db.call(
            lambda c: transaction(
                c,
                lambda t: t.execute(
                    f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", row
                ),
            )
        )

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self.db.call(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else _key(row)

    async def list(self, project: str, *, after: str = "", limit: int = 100) -> list[ApiKey]:
        rows = await self.db.call(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE project = ? AND key_id > ? "
                "ORDER BY key_id LIMIT ?",
                (project, after, limit),
            ).fetchall()
        )
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str, when: datetime) -> ApiKey | None:
        def write(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            c.execute(
                "UPDATE api_keys SET revoke_us = ? WHERE key_id = ? AND revoke_us IS NULL",
                (to_micros(when), key_id),
            )
            row: tuple[Any, ...] | None = c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            return row

        row = await self.db.call(lambda c: transaction(c, write))
        return None if row is None else _key(row)

    async def touch(self, key_id: str, when: datetime) -> None:
        us = to_micros(when)
        await self.db.call(
            lambda c: transaction(
                c,
                lambda t: t.execute(
                    "UPDATE api_keys SET last_use_us = ? WHERE key_id = ? "
                    "AND (last_use_us IS NULL OR last_use_us < ?)",
                    (us, key_id, us),
                ),
            )
        )
