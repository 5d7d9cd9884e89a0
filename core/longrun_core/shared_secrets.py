"""Secrets every process on one store shares, kept in the store itself.

Several servers on one store must accept each other's page tokens (a client
may page through server A, then B) without anyone configuring a key. The
first server to start on a store generates a random key under a name and
stores it; every later one (and every racing one) reads that same key:

* SQLite: a row of the `settings` table (the queue's generated signing key
  lives there too), inserted with `INSERT OR IGNORE` and read back in one
  write transaction, so two processes starting together agree.
* Firestore: a document `{collection}_settings/{name}` made with `create`
  (fails if it exists); the loser of a race reads the winner's.

A store with no place for secrets (a test double) gets a random key per
process: tokens then work on that process only.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from typing import Any

from longrun_core.store import OperationStore

#: Bytes of a generated secret.
SECRET_BYTES = 32
#: The name the page-token key is kept under.
PAGE_TOKEN_KEY = "page_token_key"


def fresh_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


async def shared_secret(store: OperationStore, name: str) -> bytes | None:
    """The secret `name` kept in `store`, made now if it has none yet; None
    when the store keeps no secrets."""
    from longrun_core.sqlite.store import SqliteOperationStore

    if isinstance(store, SqliteOperationStore):
        from longrun_core.sqlite.db import transaction

        fresh = fresh_secret()
        return await store.backend.db.call(
            lambda c: transaction(c, lambda c: sqlite_secret(c, name, fresh))
        )
    try:
        from longrun_core.google.firestore_store import FirestoreOperationStore
    except ImportError:  # pragma: no cover - the Google extras are not installed
        return None
    if isinstance(store, FirestoreOperationStore):
        return await store.shared_secret(name, fresh_secret())
    return None


def sqlite_secret(conn: sqlite3.Connection, name: str, fresh: bytes) -> bytes:
    """Run in a write transaction: the stored secret `name`, `fresh` if none was."""
    conn.execute("CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", (name, encode(fresh))
    )
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    return decode(row[0])


def encode(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def decode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return base64.b64decode(str(value))
