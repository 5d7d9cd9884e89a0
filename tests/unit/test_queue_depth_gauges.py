"""Queue depth gauges: read on scrape, at most once per ttl, however many scrapes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from longrun_core.observability.queue_depth import QueueDepth, QueueDepthGauges


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_reads_are_cached_for_the_ttl() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    depths = [QueueDepth(ready=7, oldest_ready_age=2.5), QueueDepth(ready=1, oldest_ready_age=0.0)]

    async def read() -> QueueDepth:
        return depths.pop(0)

    gauges = QueueDepthGauges(registry, read, ttl=5.0, monotonic=clock)
    await gauges.refresh()
    assert registry.get_sample_value("longrun_queue_ready_messages") == 7
    assert registry.get_sample_value("longrun_queue_oldest_ready_age_seconds") == 2.5
    for _ in range(10):
        clock.now += 0.4
        await gauges.refresh()
    assert gauges.reads == 1
    clock.now += 1.0  # 5.0s after the first read
    await gauges.refresh()
    assert gauges.reads == 2
    assert registry.get_sample_value("longrun_queue_ready_messages") == 1
    assert registry.get_sample_value("longrun_queue_oldest_ready_age_seconds") == 0
