"""Bounded connections for the HTTP/JSON gateway.

aiohttp alone keeps a connection that sends half a request, or nothing,
for an hour (its keep-alive default), and takes every connection offered
until the process runs out of file descriptors. Here:

* idle: a connection with no request in progress is closed after
  `idle_timeout` (aiohttp's keep-alive timer, which also runs from the
  moment a connection opens);
* headers: once the first byte of a request arrives, its headers must be
  complete within `header_timeout`, or the connection is closed;
* body: the gateway reads a request body for at most `body_timeout`
  (rest.py answers 408 and closes the connection);
* count: at most `max_connections` are open at once; one more is answered
  503 (AIP-193 JSON, `Retry-After`) and closed, and a line is logged at
  most once per `REFUSAL_LOG_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.rpc import code_pb2

from longrun_server.rest_errors import error_body, make_status

log = logging.getLogger("longrun.http")

#: Seconds between two "refusing connections" lines.
REFUSAL_LOG_INTERVAL = 10.0
#: How long a refused connection waits for the client to read the 503 and
#: close its side (closing with unread input would reset it instead).
REFUSAL_LINGER = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts (seconds) and the connection cap of the gateway."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")


class ConnectionGuard:
    """Counts the gateway's connections and times their request headers."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        self._refusals_logged_at: float | None = None
        self._refusals_unlogged = 0

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` around aiohttp's `make`."""

        def create() -> asyncio.Protocol:
            if self.open >= self.limits.max_connections:
                self._refusing()
                return _Refusal(self.limits.max_connections)
            self.open += 1
            return _Guarded(make(), self)

        return create

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """A request's headers are complete (its handler runs)."""
        guarded = self._by_transport.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.in_request = True
            guarded.disarm()

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        guarded = self._by_transport.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.in_request = False

    def _opened(self, transport: asyncio.BaseTransport, guarded: _Guarded) -> None:
        self._by_transport[transport] = guarded

    def _closed(self, transport: asyncio.BaseTransport | None) -> None:
        self.open -= 1
        if transport is not None:
            self._by_transport.pop(transport, None)

    def _refusing(self) -> None:
        self.refused += 1
        now = asyncio.get_running_loop().time()
        last = self._refusals_logged_at
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            return
        self._refusals_logged_at = now
        log.warning(
            "refusing HTTP connections: %d open, the limit (--http-max-connections); "
            "%d more refused since the last line",
            self.open,
            self._refusals_unlogged,
        )
        self._refusals_unlogged = 0


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, plus the header timer."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.in_request = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.guard._opened(transport, self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self._timer is None and data:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.guard.limits.header_timeout, self._headers_late)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.guard._closed(self.transport)
        self.inner.connection_lost(exc)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if not self.in_request and self.transport is not None:
            log.debug("closing an HTTP connection whose request headers took too long")
            self.transport.close()


class _Refusal(asyncio.Protocol):
    """Answers 503 to a connection over the cap, then closes it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        status = make_status(
            code_pb2.UNAVAILABLE,
            f"the server holds its limit of {self.limit} HTTP connections; retry shortly",
            "CONNECTION_LIMIT",
            {"limit": str(self.limit)},
        )
        body = (json.dumps(error_body(status, 503), indent=2) + "\n").encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        transport.write(head + body)
        if transport.can_write_eof():
            transport.write_eof()
        self._closer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not served

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a `ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, **kw: Any) -> None:
        super().__init__(runner, **kw)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl=self._ssl_context,
            # A TLS handshake is held to the header timeout too.
            ssl_handshake_timeout=(
                self.guard.limits.header_timeout if self._ssl_context is not None else None
            ),
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
