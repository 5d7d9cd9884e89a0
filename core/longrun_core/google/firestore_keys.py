"""API keys in Firestore: one document per key (id = key id) in the
`api_keys` collection of the operation store's database. Revocation is a
transaction, so a key keeps its first revoke time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from longrun_core.auth.api_keys import ApiKey
from longrun_core.auth.roles import Role
from longrun_core.google.collection_client import CollectionClient

DEFAULT_COLLECTION = "api_keys"


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    raise ValueError(f"not a timestamp: {value!r}")


def _doc(key: ApiKey) -> dict[str, Any]:
    return {
        "project": key.project,
        "role": key.role.value,
        "secret_hash": key.secret_hash,
        "create_time": key.create_time,
        "expire_time": key.expire_time,
        "last_use_time": key.last_use_time,
        "revoke_time": key.revoke_time,
    }


def _key(key_id: str, data: dict[str, Any]) -> ApiKey:
    create = _time(data["create_time"])
    assert create is not None
    return ApiKey(
        key_id=key_id,
        project=data["project"],
        role=Role(data["role"]),
        secret_hash=data["secret_hash"],
        create_time=create,
        expire_time=_time(data.get("expire_time")),
        last_use_time=_time(data.get("last_use_time")),
        revoke_time=_time(data.get("revoke_time")),
    )


class FirestoreKeyStore(CollectionClient):
    def __init__(
        self,
        *,
        project: str,
        database: str = "(default)",
        collection: str = DEFAULT_COLLECTION,
        client: Any | None = None,
        call_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            project=project,
            database=database,
            collection=collection,
            client=client,
            call_timeout=call_timeout,
            thread_name_prefix="firestore-keys",
        )
        self._keys = self._collection

    async def add(self, key: ApiKey) -> None:
        await self._call(lambda: self._keys.document(key.key_id).create(_doc(key)))

    async def get(self, key_id: str) -> ApiKey | None:
        snap = await self._call(self._keys.document(key_id).get)
        return _key(key_id, snap.to_dict()) if snap.exists else None

    async def list(self, project: str, *, after: str = "", limit: int = 100) -> list[ApiKey]:
        query = self._keys.where(filter=FieldFilter("project", "==", project)).order_by("__name__")
        if after:
            query = query.start_after({"__name__": self._keys.document(after)})
        snaps = await self._call(lambda: list(query.limit(limit).stream()))
        return [_key(s.id, s.to_dict()) for s in snaps]

    async def revoke(self, key_id: str, when: datetime) -> ApiKey | None:
        ref = self._keys.document(key_id)

        @firestore.transactional  # type: ignore[misc]
        def revoke(transaction: Any) -> ApiKey | None:
            snap = ref.get(transaction=transaction)
            if not snap.exists:
                return None
            data: dict[str, Any] = snap.to_dict() or {}
            if data.get("revoke_time") is None:
                data["revoke_time"] = when
                transaction.update(ref, {"revoke_time": when})
            return _key(key_id, data)

        result: ApiKey | None = await self._call(lambda: revoke(self._client.transaction()))
        return result

    async def touch(self, key_id: str, when: datetime) -> None:
        ref = self._keys.document(key_id)

        @firestore.transactional  # type: ignore[misc]
        def touch(transaction: Any) -> None:
            snap = ref.get(transaction=transaction)
            if not snap.exists:
                return
            last = _time(snap.get("last_use_time"))
            if last is None or last < when:
                transaction.update(ref, {"last_use_time": when})

        await self._call(lambda: touch(self._client.transaction()))
