"""Change notification between processes sharing one SQLite file.

Each listening process binds a Unix datagram socket in `<db>.notify/`; a
writer, after its commit, sends a short datagram to every socket there. This
is a wake-up hint, not a log: a datagram may be dropped (full buffer, process
starting), so listeners also run a slow safety-net check of SQLite's
`data_version` and wake everyone when another process committed unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]
MAX_DATAGRAM = 1024


class Notifier:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._handlers: list[Handler] = []
        self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send_sock.setblocking(False)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def listen(self) -> None:
        """Start receiving on the running loop (idempotent)."""
        if self._sock is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes: keep the file name short.
        path = self.directory / f"{uuid.uuid4().hex[:12]}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(str(path))
        sock.setblocking(False)
        self._sock, self._path = sock, path
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            for handler in self._handlers:
                handler(data)

    def send(self, payload: bytes) -> None:
        """Send `payload` to every other listener; never blocks, never raises."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        own = self._path.name if self._path is not None else None
        for name in names:
            if name == own or not name.endswith(".sock"):
                continue
            target = self.directory / name
            try:
                self._send_sock.sendto(payload, str(target))
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody bound there any more: a listener that died without cleanup.
                with contextlib.suppress(OSError):
                    target.unlink()
            except OSError as exc:  # full buffer and the like: the safety net covers it
                log.debug("notify to %s dropped: %s", target, exc)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None
        self._send_sock.close()
