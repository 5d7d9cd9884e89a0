"""Composition root for queue configuration stores: the adapter beside the
configured operation store (a table in the SQLite database, a Firestore
collection)."""

from __future__ import annotations

from longrun_core.queues import QueueStore
from longrun_core.settings import BackendSettings
from longrun_core.store import OperationStore


def build_queue_store(settings: BackendSettings, store: OperationStore | None = None) -> QueueStore:
    """The queue store for `settings.store`; on SQLite it shares `store`'s
    database connection when given (else opens the file itself)."""
    if settings.store == "sqlite":
        from longrun_core.sqlite.db import Database
        from longrun_core.sqlite.queues import SqliteQueueStore
        from longrun_core.sqlite.store import SqliteOperationStore

        if isinstance(store, SqliteOperationStore):
            return SqliteQueueStore(store.backend.db)
        return SqliteQueueStore(Database(settings.sqlite_path), owns=True)
    if settings.store == "firestore":
        from longrun_core.google.firestore_queues import FirestoreQueueStore

        return FirestoreQueueStore(
            project=settings.project,
            database=settings.firestore_database,
            call_timeout=settings.firestore_timeout,
        )
    raise ValueError(f"no queue store for store {settings.store!r}")


def queue_store_for(store: OperationStore) -> QueueStore:
    """The queue store beside an operation store already built (tests and
    embedders that pass a store to `create_server`)."""
    from longrun_core.sqlite.queues import SqliteQueueStore
    from longrun_core.sqlite.store import SqliteOperationStore

    if isinstance(store, SqliteOperationStore):
        return SqliteQueueStore(store.backend.db)
    from longrun_core.google.firestore_queues import FirestoreQueueStore
    from longrun_core.google.firestore_store import FirestoreOperationStore

    if isinstance(store, FirestoreOperationStore):
        return FirestoreQueueStore(
            project=store.project,
            database=store.database,
            client=store._client,
            call_timeout=store.call_timeout,
        )
    raise ValueError(f"no queue store beside {type(store).__name__}")
