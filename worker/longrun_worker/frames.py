"""The protocol between the worker and a task process, over a Unix socket
pair: frames of a 4-byte big-endian payload length, a 1-byte kind, and the
payload. JSON for requests and progress, serialized protobuf for outcomes;
nothing is unpickled.

worker -> task process
    REQUEST  JSON: operation, attempt, max_attempts, limit (the largest
             outcome stored, bytes), params, handler ("module:qualname"),
             retry_on (the same, per exception class), log_level
    CANCEL   empty: the operation was cancelled (ctx.cancelled turns true)
task process -> worker
    HELLO    JSON: pid and process group (the worker kills the group)
    PROGRESS JSON: percent, message
    RESULT   a packed google.protobuf.Any
    ERROR    1 byte (1: retryable) + a serialized google.rpc.Status
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from longrun_core.packing import MAX_RESULT_BYTES

REQUEST = ord("Q")
CANCEL = ord("C")
HELLO = ord("H")
PROGRESS = ord("P")
RESULT = ord("R")
ERROR = ord("E")

_HEADER = struct.Struct(">IB")

#: Largest frame either side accepts (a task's result is the largest one: at
#: most the largest outcome limit a worker takes, plus room for the rest).
MAX_FRAME = MAX_RESULT_BYTES + 1024 * 1024


class FrameTooLarge(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"a frame of {size} bytes exceeds the limit of {MAX_FRAME}")
        self.size = size


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameTooLarge(len(payload))
    return _HEADER.pack(len(payload), kind) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, or None at the end of the stream (the peer is gone)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        size, kind = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise FrameTooLarge(size)
        return kind, await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


class Channel:
    """The task process's end: blocking, and safe to send from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        sock.setblocking(True)

    def send(self, kind: int, payload: bytes = b"") -> None:
        data = encode(kind, payload)
        with self._send_lock:
            self._sock.sendall(data)

    def recv(self) -> tuple[int, bytes] | None:
        """The next frame, or None once the worker is gone."""
        header = self._recv_exactly(_HEADER.size)
        if header is None:
            return None
        size, kind = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise FrameTooLarge(size)
        payload = self._recv_exactly(size)
        return None if payload is None else (kind, payload)

    def _recv_exactly(self, size: int) -> bytes | None:
        chunks: list[bytes] = []
        left = size
        while left:
            try:
                chunk = self._sock.recv(min(left, 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
