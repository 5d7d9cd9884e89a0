"""`--metrics-address`: an HTTP listener serving `/metrics` in the
Prometheus text format from one process's registry.

Before each scrape the endpoint awaits its `before_scrape` hooks (e.g. a
cached queue-depth read), so collectors stay synchronous and cheap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("longrun.metrics")

#: Longest a scrape waits for its `before_scrape` hooks; past it the cached values serve.
HOOK_TIMEOUT = 2.0

ScrapeHook = Callable[[], Awaitable[None]]


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (port 0: any) as (host, port); ValueError says what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


class MetricsEndpoint:
    """`GET /metrics` of `registry` on `address`; `start` binds and returns the port."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str,
        *,
        before_scrape: Sequence[ScrapeHook] = (),
        port_file: Path | None = None,
    ) -> None:
        self.registry = registry
        self.host, self.port = split_address(address)
        self.before_scrape = list(before_scrape)
        self.port_file = port_file
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        for hook in self.before_scrape:
            try:
                async with asyncio.timeout(HOOK_TIMEOUT):
                    await hook()
            except Exception as exc:  # a scrape still answers with what it has
                log.warning("metrics hook failed: %r", exc)
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        port = int(runner.addresses[0][1]) if runner.addresses else self.port
        if self.port_file is not None:
            self.port_file.write_text(str(port))
        log.info("serving metrics on %s:%d/metrics", self.host, port)
        return port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
