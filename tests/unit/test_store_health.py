"""The store health monitor: every service NOT_SERVING while probes fail
(an error or no answer in time), SERVING again after one succeeds."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from longrun_core.errors import StorageFull
from longrun_server.health import NOT_SERVING, SERVING, HealthServicer, StoreHealth
from tests.support.waiting import wait_until

SERVICES = ("", "google.longrunning.Operations", "longrun.v1.Jobs")


class Probe:
    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.hang = False

    async def __call__(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail is not None:
            raise self.fail


async def _servicer() -> HealthServicer:
    servicer = HealthServicer()
    for name in SERVICES:
        await servicer.set(name, SERVING)
    return servicer


async def _statuses(servicer: HealthServicer) -> set[int]:
    listed = await servicer.List(health_pb2.HealthListRequest(), None)  # type: ignore[arg-type]
    assert set(listed.statuses) == set(SERVICES)
    return {s.status for s in listed.statuses.values()}


async def test_failing_probes_report_not_serving_until_one_succeeds() -> None:
    servicer, probe = await _servicer(), Probe()
    monitor = StoreHealth(probe, servicer, interval=0.01, timeout=0.05)
    assert await monitor.check() is None
    assert await _statuses(servicer) == {SERVING}
    probe.fail = StorageFull("disk full")
    fault = await monitor.check()
    assert fault is not None and fault.startswith("STORAGE_FULL")
    assert await _statuses(servicer) == {NOT_SERVING}
    probe.fail, probe.hang = None, True
    assert "did not answer" in (await monitor.check() or "")
    assert await _statuses(servicer) == {NOT_SERVING}
    probe.hang = False
    assert await monitor.check() is None
    assert await _statuses(servicer) == {SERVING}


async def test_the_loop_probes_by_itself_and_shutdown_wins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer, probe = await _servicer(), Probe()
    monitor = StoreHealth(probe, servicer, interval=0.01, timeout=1)
    probe.fail = StorageFull("disk full")
    monitor.start()
    try:

        async def not_serving() -> bool:
            return await _statuses(servicer) == {NOT_SERVING}

        await wait_until(not_serving, description="NOT_SERVING")
        await servicer.enter_graceful_shutdown()
        probe.fail = None
        await wait_until(lambda: monitor.fault is None, description="a successful probe")
        assert await _statuses(servicer) == {NOT_SERVING}  # shutting down stays NOT_SERVING
    finally:
        await monitor.stop()
    warnings = [r for r in caplog.records if "NOT_SERVING" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per probe
