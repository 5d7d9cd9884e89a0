"""A local stand-in for a bucket notification on the embedded default: a
trigger with `folder = "PATH"` instead of a subscription watches a folder
(polling) and turns each settled file into the Cloud Storage notification
Google would send for it, so the same filter, mapping, identity and
CreateJob path apply.

A file becomes an event once its size and mtime have not changed for
`settle` seconds (a file still being written is not converted half-way):
eventType OBJECT_FINALIZE, bucketId = the folder's name, objectId = the
path below it ('/'-separated), objectGeneration = its mtime in
nanoseconds, payloadFormat JSON_API_V1, and as data the object resource
(name, bucket, generation, size, updated). Names starting with '.' are
skipped (temporary files). A rewritten file is a new generation, hence a
new event.

What it does not keep: which files it has seen. A restarted trigger sees
every file again and the server's request-id deduplication answers with
the operations made before (counted `deduplicated`), one CreateJob per
file. Malformed events are logged only (there is no dead-letter topic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from longrun_worker.triggers.events import EventMessage

log = logging.getLogger("longrun.trigger")

#: Most files one scan looks at (a bigger folder is taken in turns).
MAX_SCAN = 100_000


class FolderSubscription:
    """The Subscription protocol of runner.py over a folder."""

    def __init__(self, trigger_name: str, folder: Path, settle: float = 1.0) -> None:
        self.trigger_name = trigger_name
        self.folder = folder
        self.bucket = folder.resolve().name
        self.settle = settle
        #: path -> (size, mtime_ns, first seen with them, monotonic)
        self._pending: dict[str, tuple[int, int, float]] = {}
        #: path -> mtime_ns of the generation already made an event
        self._done: dict[str, int] = {}
        #: path -> monotonic time before which it is not handed out again
        self._later: dict[str, float] = {}
        #: ack id -> (path, mtime_ns) of events handed out, not yet settled
        self._out: dict[str, tuple[str, int]] = {}
        self._handed_out: set[str] = set()

    async def pull(self, max_messages: int, wait: float) -> list[tuple[str, EventMessage]]:
        deadline = time.monotonic() + wait
        while True:
            ready = await asyncio.to_thread(self._scan, max_messages)
            if ready or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))

    def _scan(self, max_messages: int) -> list[tuple[str, EventMessage]]:
        now = time.monotonic()
        ready: list[tuple[str, EventMessage]] = []
        for count, path in enumerate(self._files()):
            if count >= MAX_SCAN or len(ready) >= max_messages:
                break
            name = path.relative_to(self.folder).as_posix()
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if self._done.get(name) == st.st_mtime_ns or name in self._handed_out:
                continue
            if self._later.get(name, 0.0) > now:
                continue
            seen = self._pending.get(name)
            if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
                self._pending[name] = (st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen[2] < self.settle:
                continue
            ack_id = f"{name}#{st.st_mtime_ns}"
            self._out[ack_id] = (name, st.st_mtime_ns)
            self._handed_out.add(name)
            ready.append((ack_id, self._event(name, st.st_size, st.st_mtime_ns)))
        return ready

    def _files(self) -> list[Path]:
        out = []
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [Path(root, f) for f in sorted(files) if not f.startswith(".")]
        return out

    def _event(self, name: str, size: int, mtime_ns: int) -> EventMessage:
        updated = datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")
        resource = {
            "kind": "storage#object",
            "id": f"{self.bucket}/{name}/{mtime_ns}",
            "name": name,
            "bucket": self.bucket,
            "generation": str(mtime_ns),
            "metageneration": "1",
            "size": str(size),
            "updated": updated,
            "timeCreated": updated,
        }
        return EventMessage(
            message_id=f"{self.bucket}/{name}#{mtime_ns}",
            data=json.dumps(resource).encode(),
            attributes={
                "eventType": "OBJECT_FINALIZE",
                "payloadFormat": "JSON_API_V1",
                "bucketId": self.bucket,
                "objectId": name,
                "objectGeneration": str(mtime_ns),
                "eventTime": updated,
            },
            publish_time=updated,
        )

    async def ack(self, ack_ids: Sequence[str]) -> None:
        for ack_id in ack_ids:
            name, mtime_ns = self._out.pop(ack_id)
            self._handed_out.discard(name)
            self._done[name] = mtime_ns
            self._pending.pop(name, None)
            self._later.pop(name, None)

    async def delay(self, ack_ids: Sequence[str], seconds: int) -> None:
        for ack_id in ack_ids:
            name, _ = self._out.pop(ack_id)
            self._handed_out.discard(name)
            self._later[name] = time.monotonic() + seconds

    async def dead_letter(self, message: EventMessage, reason: str) -> None:
        log.warning("trigger %s: %s: %s", self.trigger_name, message.message_id, reason)
