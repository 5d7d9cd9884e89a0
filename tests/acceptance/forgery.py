"""What an outsider with access to the queue can do to a running service:
put messages straight on it (SQLite rows, Pub/Sub publishes) past the
server, store operations without a message, and read what was dead-lettered."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from longrun_core.model import OperationRecord, State
from longrun_core.queue import TaskMessage
from longrun_core.signing import KEY_ID_ATTR, SIGNATURE_ATTR, SigningKeys, message_fields
from tests.acceptance.calls import _store
from tests.acceptance.harness import ACCEPTANCE_SIGNING_KEYS, Service


@dataclass
class Queue:
    """The queue of `service` on `backend`, seen from outside the service."""

    service: Service
    backend: str
    #: Dead letters read so far (Pub/Sub: pulled and acked from the inspect subscription).
    seen: list[tuple[str, str]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return Path(self.service.env["LONGRUN_SQLITE_PATH"])

    @property
    def project(self) -> str:
        return self.service.env["GOOGLE_CLOUD_PROJECT"]

    def keys(self) -> SigningKeys:
        """The deployment's signing keys (embedded: the key kept in its database)."""
        if self.backend != "embedded":
            return SigningKeys.parse(ACCEPTANCE_SIGNING_KEYS)
        with sqlite3.connect(self.db) as conn:
            row = conn.execute(
                "SELECT value FROM settings WHERE name = 'message_signing_key'"
            ).fetchone()
        return SigningKeys.parse(row[0])

    def put(
        self,
        message: TaskMessage,
        *,
        sign_with: SigningKeys | None = None,
        tamper: Mapping[str, str] | None = None,
    ) -> None:
        """Put `message` on the queue past the server: signed with `sign_with`
        (None: unsigned), then with the attributes in `tamper` changed."""
        data, attributes = message_fields(message)
        if sign_with is not None:
            attributes = sign_with.signed(data, attributes)
        attributes |= dict(tamper or {})
        if self.backend == "embedded":
            with sqlite3.connect(self.db) as conn:
                conn.execute(
                    "INSERT INTO tasks (operation, task, attempt, visible_us, enqueued_us, "
                    "signature_key, signature) VALUES (?, ?, ?, 0, 0, ?, ?)",
                    (
                        attributes["operation"],
                        attributes["task"],
                        int(attributes["attempt"]),
                        attributes.get(KEY_ID_ATTR),
                        attributes.get(SIGNATURE_ATTR),
                    ),
                )
            return
        from google.cloud.pubsub_v1 import PublisherClient

        publisher = PublisherClient()
        try:
            topic = f"projects/{self.project}/topics/longrun-tasks"
            publisher.publish(topic, data, **attributes).result(timeout=30)
        finally:
            publisher.stop()

    def pending(self, operation: str) -> int:
        """Embedded only: rows for `operation` still in the queue."""
        with sqlite3.connect(self.db) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE operation = ?", (operation,)
            ).fetchone()
        return int(row[0])

    def dead_letters(self) -> list[tuple[str, str]]:
        """(operation, reason) of every dead letter so far."""
        if self.backend == "embedded":
            with sqlite3.connect(self.db) as conn:
                rows = conn.execute(
                    "SELECT operation, reason FROM dead_letters ORDER BY dead_us, seq"
                ).fetchall()
            return [(str(op), str(reason)) for op, reason in rows]
        from google.api_core.exceptions import DeadlineExceeded
        from google.cloud.pubsub_v1 import SubscriberClient

        subscription = f"projects/{self.project}/subscriptions/longrun-dead-letters-inspect"
        with SubscriberClient() as subscriber:
            try:
                response = subscriber.pull(
                    request={"subscription": subscription, "max_messages": 50}, timeout=5
                )
                received = list(response.received_messages)
            except DeadlineExceeded:  # nothing there
                received = []
            if received:
                subscriber.acknowledge(
                    request={"subscription": subscription, "ack_ids": [r.ack_id for r in received]}
                )
        for r in received:
            attrs = r.message.attributes
            self.seen.append((attrs.get("operation", ""), attrs.get("reason", "")))
        return list(self.seen)

    def store_without_message(self, task: str, params: Mapping[str, Any]) -> str:
        """Store a QUEUED operation with no message on the queue (and none
        republished by the sweeper for an hour); returns its name."""
        struct = struct_pb2.Struct()
        struct.update(dict(params))
        now = datetime.now(UTC)
        rec = OperationRecord(
            id=uuid.uuid4().hex,
            task=task,
            params=struct.SerializeToString(),
            state=State.QUEUED,
            create_time=now,
            update_time=now,
            max_attempts=3,
            dispatch_due_time=now + timedelta(hours=1),
        )
        asyncio.run(_store(self.backend, self.service.env, rec))
        return rec.name


def rejection_summary(log: str) -> str:
    """The latest `rejected so far: ...` count in a worker's log ('' if none)."""
    marker = "(rejected so far: "
    lines = [line for line in log.splitlines() if marker in line]
    if not lines:
        return ""
    return lines[-1].split(marker, 1)[1].rstrip(")")
