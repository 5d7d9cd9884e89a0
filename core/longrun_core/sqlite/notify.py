"""Change notification between processes sharing one SQLite file.

Each listening process binds a Unix datagram socket in a directory named by
the database file (see `backend.notify_directory`); a writer, after its
commit, sends a short datagram to every socket there.

Listeners find each other without touching the file system per write: a
new listener binds, lists the directory, and greets every socket it found
(a `HELLO` datagram with its own name); the others add it to the listeners
they send to. Whichever of two listeners binds later sees the earlier one in
its listing, and the earlier one gets its greeting, so every pair knows of
each other. Dead listeners are dropped when a send finds nobody bound, and
the directory is listed again every `RELIST` seconds in case a greeting was lost.

The directory is private: created with mode 0700, and a process refuses to
start (StartupError) if it exists with another owner or a looser mode, or
is not a plain directory: another local user could otherwise bind a socket
there and receive the names of the operations written.

This is a wake-up hint, not a log. Writes of one loop iteration go out
together, payloads joined by newlines in as few datagrams as fit. A listener
whose queue is full (Linux holds only `net.unix.max_dgram_qlen`, 10 by
default, datagrams per socket) gets its datagrams again from a retry timer
(1 ms, doubling to 50 ms) until they fit, so a busy listener hears late but
hears. Only a listener that is gone loses them; listeners also run a slow
safety-net check of SQLite's `data_version` for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from longrun_core.errors import StartupError

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]
MAX_DATAGRAM = 1024
RETRY_MIN = 0.001
RETRY_MAX = 0.05
#: How often the directory is listed again (greetings make it rarely needed).
RELIST = 2.0
#: A notifier-internal payload: "a listener bound at <name>" (never newline-free
#: payloads of the backend start with it: they start with a letter).
HELLO = b"\x00hello:"
#: Longest Unix socket path (sun_path is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107
#: Bytes a socket's name adds to its directory: "/" + 12 hex digits + ".sock".
_SOCKET_NAME = 1 + 12 + len(".sock")


def socket_path_fits(directory: Path) -> bool:
    """Whether the notifier's sockets in `directory` stay within the Unix limit."""
    return len(os.fsencode(directory)) + _SOCKET_NAME <= MAX_SOCKET_PATH


def ensure_private_directory(directory: Path) -> None:
    """Create `directory` with mode 0700 (its parents as needed), or check that
    the existing one is a directory owned by this user with no group or other
    permissions; StartupError saying what to do otherwise."""
    uid = os.getuid()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # exactly 0700, whatever the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise StartupError(f"cannot create the notify directory {directory}: {exc}") from exc
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise StartupError(f"cannot check the notify directory {directory}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(
            f"the notify directory {directory} is not a directory (a symlink or a file): "
            "remove it; longrun creates it private (0700)"
        )
    if info.st_uid != uid:
        raise StartupError(
            f"the notify directory {directory} belongs to uid {info.st_uid}, not to this "
            f"process's uid {uid}: another user could receive the names of operations "
            "through it; remove it (every process sharing the database must run as one user)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise StartupError(
            f"the notify directory {directory} has mode {mode:04o}, open to other users "
            f"(it must be 0700): remove it, or `chmod 700 {directory}` if you made it"
        )


class Notifier:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._handlers: list[Handler] = []
        self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send_sock.setblocking(False)
        #: Payloads sent during this loop iteration, flushed at its end.
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        #: Socket path -> datagrams its full queue could not take yet.
        self._pending: dict[str, list[bytes]] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_MIN
        #: The other listeners' socket paths, and when the directory was last listed.
        self._targets: set[str] = set()
        self._listed_at: float | None = None

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def listen(self) -> None:
        """Start receiving on the running loop (idempotent)."""
        if self._sock is not None:
            return
        ensure_private_directory(self.directory)
        # Unix socket paths are limited to ~107 bytes: keep the file name short.
        path = self.directory / f"{uuid.uuid4().hex[:12]}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(str(path))
        sock.setblocking(False)
        self._sock, self._path = sock, path
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)
        self._relist()
        hello = HELLO + path.name.encode()
        for target in list(self._targets):
            self._send_all(target, [hello])
        self._schedule_retry()

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            for part in data.split(b"\n"):
                if part.startswith(HELLO):
                    self._greeted(part[len(HELLO) :])
                elif part:
                    for handler in self._handlers:
                        handler(part)

    def _greeted(self, name: bytes) -> None:
        text = name.decode(errors="replace")
        if text.endswith(".sock") and "/" not in text:
            self._targets.add(str(self.directory / text))

    def send(self, payload: bytes) -> None:
        """Send `payload` (no newline in it) to every other listener at the end
        of this loop iteration; never blocks, never raises."""
        self._outbox.append(payload)
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nobody to flush for
            self._outbox.clear()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        datagrams, self._outbox = _pack(self._outbox), []
        if self._listed_at is None or time.monotonic() - self._listed_at > RELIST:
            self._relist()
        for target in list(self._targets):
            if target in self._pending:  # keep the order: queue behind the waiting ones
                self._pending[target] += datagrams
            else:
                self._send_all(target, datagrams)
        self._schedule_retry()

    def _relist(self) -> None:
        """Read the other listeners from the directory."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        own = self._path.name if self._path is not None else None
        self._targets = {
            str(self.directory / name) for name in names if name != own and name.endswith(".sock")
        }
        self._listed_at = time.monotonic()

    def _send_all(self, target: str, datagrams: list[bytes]) -> None:
        for i, datagram in enumerate(datagrams):
            try:
                self._send_sock.sendto(datagram, target)
            except BlockingIOError:  # its queue is full: try again from the timer
                self._pending[target] = datagrams[i:]
                return
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody bound there any more: a listener that died without cleanup.
                self._targets.discard(target)
                with contextlib.suppress(OSError):
                    os.unlink(target)
                return
            except OSError as exc:  # anything else: the safety net covers it
                log.debug("notify to %s dropped: %s", target, exc)

    def _schedule_retry(self) -> None:
        if self._pending and self._retry is None and self._sock_alive():
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(self._retry_delay, self._send_pending)

    def _sock_alive(self) -> bool:
        return self._send_sock.fileno() != -1

    def _send_pending(self) -> None:
        self._retry = None
        pending, self._pending = self._pending, {}
        for target, datagrams in pending.items():
            self._send_all(target, _pack([p for d in datagrams for p in d.split(b"\n")]))
        more = bool(self._pending)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX) if more else RETRY_MIN
        self._schedule_retry()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
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


def _pack(payloads: list[bytes]) -> list[bytes]:
    """Distinct payloads joined by newlines into datagrams of at most MAX_DATAGRAM bytes."""
    out: list[bytes] = []
    batch = b""
    for payload in dict.fromkeys(payloads):
        if batch and len(batch) + 1 + len(payload) > MAX_DATAGRAM:
            out.append(batch)
            batch = b""
        batch = batch + b"\n" + payload if batch else payload
    if batch:
        out.append(batch)
    return out
