"""Queue configuration in Firestore: one document per queue (id
`{project}~{queue}`) in the `queues` collection of the operation store's
database. Create is exclusive (`create` fails on an existing document);
update and delete are compare-and-set on the document's update time (like
the operation store's writes), retried on a conflict."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.base_query import FieldFilter

from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import Aborted, AlreadyExists
from longrun_core.google.collection_client import CollectionClient
from longrun_core.queues import (
    LIMIT_FIELDS,
    ConcurrencyLimits,
    QueueConfig,
    QueueState,
    RetryConfig,
)

DEFAULT_COLLECTION = "queues"
#: A write whose precondition no longer holds (someone wrote in between).
_CONFLICT = (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound, gexc.Aborted)
#: Read-change-write rounds an update tries before giving up (ABORTED).
MAX_CONFLICTS = 50
_DURATIONS = ("max_retry_duration", "min_backoff", "max_backoff")
_MICRO = timedelta(microseconds=1)


def doc_id(project: str, queue_id: str) -> str:
    return f"{project}~{queue_id}"


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return from_micros(to_micros(value))


def _retry_doc(retry: RetryConfig) -> dict[str, Any]:
    data: dict[str, Any] = {
        "max_attempts": retry.max_attempts,
        "max_doublings": retry.max_doublings,
    }
    for name in _DURATIONS:
        value: timedelta | None = getattr(retry, name)
        data[name + "_us"] = None if value is None else value // _MICRO
    return data


def _retry(data: dict[str, Any]) -> RetryConfig:
    def duration(name: str) -> timedelta | None:
        value = data.get(name + "_us")
        return None if value is None else timedelta(microseconds=int(value))

    return RetryConfig(
        max_attempts=data.get("max_attempts"),
        max_doublings=data.get("max_doublings"),
        max_retry_duration=duration("max_retry_duration"),
        min_backoff=duration("min_backoff"),
        max_backoff=duration("max_backoff"),
    )


def _doc(config: QueueConfig) -> dict[str, Any]:
    if config.create_time is None or config.update_time is None:
        raise ValueError(f"queue {config.name} has no create/update time to store")
    return {
        "project": config.project,
        "queue_id": config.queue_id,
        "state": int(config.state),
        "retry": _retry_doc(config.retry),
        "create_time": config.create_time,
        "update_time": config.update_time,
        "purge_time": config.purge_time,
        "limits": {name: getattr(config.limits, name) for name in LIMIT_FIELDS},
    }


def _config(data: dict[str, Any]) -> QueueConfig:
    create, update = _time(data["create_time"]), _time(data["update_time"])
    assert create is not None and update is not None
    return QueueConfig(
        project=data["project"],
        queue_id=data["queue_id"],
        state=QueueState(int(data["state"])),
        retry=_retry(data.get("retry") or {}),
        create_time=create,
        update_time=update,
        purge_time=_time(data.get("purge_time")),
        limits=ConcurrencyLimits(
            **{k: v for k, v in (data.get("limits") or {}).items() if k in LIMIT_FIELDS}
        ),
    )


class FirestoreQueueStore(CollectionClient):
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
            thread_name_prefix="firestore-queues",
        )
        self._queues = self._collection

    async def create(self, config: QueueConfig) -> None:
        ref = self._queues.document(doc_id(config.project, config.queue_id))
        try:
            await self._call(lambda: ref.create(_doc(config)))
        except gexc.Conflict as exc:
            raise AlreadyExists(
                f"queue {config.name} already exists", reason="QUEUE_ALREADY_EXISTS"
            ) from exc

    async def get(self, project: str, queue_id: str) -> QueueConfig | None:
        snap = await self._call(self._queues.document(doc_id(project, queue_id)).get)
        return _config(snap.to_dict() or {}) if snap.exists else None

    async def list(self, project: str, *, after: str = "", limit: int = 100) -> list[QueueConfig]:
        query = self._queues.where(filter=FieldFilter("project", "==", project)).order_by(
            "__name__"
        )
        if after:
            query = query.start_after({"__name__": self._queues.document(doc_id(project, after))})
        snaps = await self._call(lambda: list(query.limit(limit).stream()))
        return [_config(s.to_dict()) for s in snaps]

    async def update(
        self, project: str, queue_id: str, change: Callable[[QueueConfig | None], QueueConfig]
    ) -> QueueConfig:
        """Read, change, write under a precondition (the document's update
        time as read, or that it does not exist), again on a conflict."""
        ref = self._queues.document(doc_id(project, queue_id))
        for _ in range(MAX_CONFLICTS):
            snap = await self._call(ref.get)
            new = change(_config(snap.to_dict() or {}) if snap.exists else None)
            try:
                if snap.exists:
                    option = self._client.write_option(last_update_time=snap.update_time)
                    await self._call(lambda: ref.update(_doc(new), option=option))  # noqa: B023
                else:
                    await self._call(lambda: ref.create(_doc(new)))  # noqa: B023
            except _CONFLICT:
                continue
            return new
        raise Aborted(
            f"queue projects/{project}/queues/{queue_id} changed {MAX_CONFLICTS} times "
            "while being updated; try again",
            reason="QUEUE_CONTENDED",
        )

    async def delete(self, project: str, queue_id: str) -> bool:
        ref = self._queues.document(doc_id(project, queue_id))
        for _ in range(MAX_CONFLICTS):
            snap = await self._call(ref.get)
            if not snap.exists:
                return False
            option = self._client.write_option(last_update_time=snap.update_time)
            try:
                await self._call(lambda: ref.delete(option=option))  # noqa: B023
            except _CONFLICT:
                continue
            return True
        raise Aborted(
            f"queue projects/{project}/queues/{queue_id} kept changing while being deleted",
            reason="QUEUE_CONTENDED",
        )

    async def list_all(self, limit: int) -> builtins.list[QueueConfig]:
        query = self._queues.order_by("__name__").limit(limit)
        snaps = await self._call(lambda: list(query.stream()))
        return [_config(s.to_dict()) for s in snaps]
