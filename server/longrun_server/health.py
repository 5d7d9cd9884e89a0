"""grpc.health.v1.Health with `List` (grpcio-health-checking's servicer has
Check and Watch; reflection advertises List, so it is served too), and the
monitor that turns the operation store's health into it: every service
reports NOT_SERVING while the store cannot take writes (a full disk, a
read-only or lost database file, an unreachable Firestore) and SERVING again
once it can, so a load balancer or orchestrator routes around the outage
instead of sending requests that fail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2

from longrun_core.errors import LongrunError

log = logging.getLogger("longrun.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):
    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service this server reports on, with its current status."""
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )

    async def set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Set every service reported on (the overall "" included) to `status`;
        nothing changes once graceful shutdown began."""
        for service in list(self._server_status):
            await self.set(service, status)


class StoreHealth:
    """Probes the store every `interval` seconds (a probe taking longer than
    `timeout` counts as failed) and sets every service NOT_SERVING while
    probes fail, SERVING once one succeeds. Each change is logged once."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        servicer: HealthServicer,
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self.probe = probe
        self.servicer = servicer
        self.interval = interval
        self.timeout = timeout
        #: None while the store is healthy; else why it is not.
        self.fault: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> str | None:
        """One probe; returns (and reports) the fault, None if healthy."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.probe()
            fault = None
        except TimeoutError:
            fault = f"the store did not answer a probe within {self.timeout:g}s"
        except LongrunError as exc:
            fault = f"{exc.reason}: {exc.message}"
        if fault is not None and self.fault is None:
            log.warning("operation store unavailable (%s): health NOT_SERVING", fault)
            await self.servicer.set_all(NOT_SERVING)
        elif fault is None and self.fault is not None:
            log.info("operation store available again: health SERVING")
            await self.servicer.set_all(SERVING)
        self.fault = fault
        return fault

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug in a probe must not end health reporting
                log.exception("store health probe failed unexpectedly")
            await asyncio.sleep(self.interval)
