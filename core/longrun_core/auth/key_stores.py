"""Composition root for API key stores: the adapter beside the configured
operation store (a table in the SQLite database, a Firestore collection)."""

from __future__ import annotations

from longrun_core.auth.api_keys import KeyStore
from longrun_core.settings import BackendSettings
from longrun_core.store import OperationStore


def build_key_store(settings: BackendSettings, store: OperationStore | None = None) -> KeyStore:
    """The key store for `settings.store`; on SQLite it shares `store`'s
    database connection when given (else opens the file itself)."""
    if settings.store == "sqlite":
        from longrun_core.sqlite.api_keys import SqliteKeyStore
        from longrun_core.sqlite.db import Database
        from longrun_core.sqlite.store import SqliteOperationStore

        if isinstance(store, SqliteOperationStore):
            return SqliteKeyStore(store.backend.db)
        return SqliteKeyStore(Database(settings.sqlite_path), owns=True)
    if settings.store == "firestore":
        from longrun_core.google.firestore_keys import FirestoreKeyStore

        return FirestoreKeyStore(
            project=settings.project,
            database=settings.firestore_database,
            call_timeout=settings.firestore_timeout,
        )
    raise ValueError(f"no API key store for store {settings.store!r}")
