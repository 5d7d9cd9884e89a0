"""The shared part of the embedded backends: one database file, one
notifier, and the safety-net check for missed notifications."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from longrun_core.errors import Unavailable
from longrun_core.sqlite.db import Database
from longrun_core.sqlite.notify import Notifier, socket_path_fits

log = logging.getLogger("longrun.sqlite")

OP_CHANGED = b"o"
QUEUE_CHANGED = b"q"
#: A health probe committed (nothing to do; it tells the safety net it was no missed change).
PROBED = b"p"


def notify_directory(db_path: Path) -> Path:
    """Where the processes sharing `db_path` meet: `<db>.notify/` beside the
    file, so that processes in other containers mounting the same volume hear
    each other; when a socket path there would pass the Unix limit (~107
    bytes), a short directory in the temp folder named by the file's absolute
    path. Either is created private (0700) and refused if it is not
    (`notify.ensure_private_directory`)."""
    beside = db_path.absolute().with_name(db_path.name + ".notify")
    if socket_path_fits(beside):
        return beside
    digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"longrun-{os.getuid()}-{digest}"


class SqliteBackend:
    """Owns the database and the notifier; the store and the queue share it.

    `safety_net` is how often (seconds) to check whether another process
    committed without our hearing of it; notifications make the common case
    immediate, this only bounds the rare missed one."""

    def __init__(self, path: Path | str, *, safety_net: float = 1.0) -> None:
        self.db = Database(path)
        self.notifier = Notifier(notify_directory(Path(path)))
        self.safety_net = safety_net
        self._on_op: list[Callable[[str], None]] = []
        self._on_queue: list[Callable[[], None]] = []
        self._on_missed: list[Callable[[], None]] = []
        self._started = False
        self._heard = False
        self._users = 0
        self._net_task: asyncio.Task[None] | None = None
        self.notifier.add_handler(self._dispatch)

    def on_operation_changed(self, fn: Callable[[str], None]) -> None:
        self._on_op.append(fn)

    def on_queue_changed(self, fn: Callable[[], None]) -> None:
        self._on_queue.append(fn)

    def on_missed(self, fn: Callable[[], None]) -> None:
        """Called when another process committed and no notification told us."""
        self._on_missed.append(fn)

    def _dispatch(self, data: bytes) -> None:
        self._heard = True
        kind, body = data[:1], data[1:]
        if kind == OP_CHANGED:
            name = body.decode(errors="replace")
            for fn in self._on_op:
                fn(name)
        elif kind == QUEUE_CHANGED:
            for wake in self._on_queue:
                wake()

    async def start(self) -> None:
        """Open the database (the store and the queue share it: the first
        start opens it). Safe to call again after it raised."""
        if not self._started:
            await self.db.start()
            self.notifier.listen()
            self._net_task = asyncio.create_task(self._safety_net_loop(), name="sqlite-safety-net")
            self._started = True
        self._users += 1

    async def _safety_net_loop(self) -> None:
        """Every `safety_net` seconds: wake everyone if another process
        committed unheard. Its call also checks that the database file is
        still the one this process opened, so an idle process notices a
        deleted or replaced file within a second. Storage faults are waited out."""
        seen: int | None = None
        while True:
            try:
                version = await self.db.data_version()
            except Unavailable as exc:
                log.debug("safety-net check failed: %s", exc)
                version = None
            if version is not None:
                if seen is not None and version != seen and not self._heard:
                    for fn in self._on_missed:
                        fn()
                seen, self._heard = version, False
            await asyncio.sleep(self.safety_net)

    async def probe(self) -> None:
        """Raise `Unavailable` (or a subclass) if the database cannot take a
        write now, or a call met a storage fault since the last probe (see
        `Database.probe`). The probe's commit is announced, so other processes
        do not take it for a missed notification."""
        await self.db.probe()
        self.notifier.send(PROBED)

    def operation_written(self, name: str) -> None:
        self.notifier.send(OP_CHANGED + name.encode())

    def queue_written(self) -> None:
        self.notifier.send(QUEUE_CHANGED)

    async def close(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users > 0:
            return
        self._started = False
        if self._net_task is not None:
            self._net_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._net_task
        self.notifier.close()
        await self.db.close()
