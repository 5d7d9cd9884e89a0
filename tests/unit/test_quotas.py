"""Per-principal quotas: the token bucket, its bounded memory, the
open-operations count, and the QuotaFailure + RetryInfo they are sent with."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from longrun_core.errors import QuotaExceeded
from longrun_server.quotas import OpenOperationsQuota, RateQuota
from longrun_server.status import to_status


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_rate() -> None:
    clock = FakeMonotonic()
    quota = RateQuota(2.0, burst=3, monotonic=clock)
    for _ in range(3):
        quota.admit("user:a")
    with pytest.raises(QuotaExceeded) as caught:
        quota.admit("user:a")
    assert caught.value.retry_delay == pytest.approx(0.5)
    clock.now += 0.5
    quota.admit("user:a")  # one token back after 1/rate seconds
    with pytest.raises(QuotaExceeded):
        quota.admit("user:a")


def test_principals_have_separate_buckets() -> None:
    quota = RateQuota(1.0, burst=1, monotonic=FakeMonotonic())
    quota.admit("user:a")
    quota.admit("user:b")
    with pytest.raises(QuotaExceeded) as caught:
        quota.admit("user:a")
    assert caught.value.metadata["principal"] == "user:a"


def test_bucket_map_is_bounded() -> None:
    quota = RateQuota(1.0, burst=1, monotonic=FakeMonotonic(), max_principals=10)
    for n in range(1000):
        quota.admit(f"key:{n}")
    assert len(quota._buckets) == 10


def test_zero_rate_disables() -> None:
    quota = RateQuota(0.0)
    for _ in range(10_000):
        quota.admit("anonymous")
    assert not quota.enabled


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateQuota(-1.0)
    with pytest.raises(ValueError):
        OpenOperationsQuota(-1, lambda p, n: asyncio.sleep(0, 0))


def test_open_operations_counted_up_to_limit() -> None:
    seen: list[tuple[str, int]] = []
    open_counts = {"user:a": 2, "user:b": 3}

    async def count(principal: str, limit: int) -> int:
        seen.append((principal, limit))
        return min(open_counts[principal], limit)

    quota = OpenOperationsQuota(3, count)
    asyncio.run(quota.admit("user:a"))
    with pytest.raises(QuotaExceeded) as caught:
        asyncio.run(quota.admit("user:b"))
    assert caught.value.reason == "OPEN_OPERATIONS_QUOTA_EXCEEDED"
    assert seen == [("user:a", 3), ("user:b", 3)]


def test_a_batch_is_admitted_whole_or_not_at_all() -> None:
    async def count(principal: str, limit: int) -> int:
        return min(2, limit)

    quota = OpenOperationsQuota(5, count)
    asyncio.run(quota.admit("user:a", 3))  # 2 open + 3 = 5: fits
    with pytest.raises(QuotaExceeded) as caught:
        asyncio.run(quota.admit("user:a", 4))  # 2 + 4 > 5
    assert caught.value.metadata["quota_limit_value"] == "5"


def test_quota_error_carries_quota_failure_and_retry_info() -> None:
    quota = RateQuota(1.0, burst=1, monotonic=FakeMonotonic())
    quota.admit("user:a")
    with pytest.raises(QuotaExceeded) as caught:
        quota.admit("user:a")
    status = to_status(caught.value)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    kinds = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
    failure = error_details_pb2.QuotaFailure()
    kinds["google.rpc.QuotaFailure"].Unpack(failure)
    assert failure.violations[0].subject == "user:a"
    retry = error_details_pb2.RetryInfo()
    kinds["google.rpc.RetryInfo"].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(1.0)
    info = error_details_pb2.ErrorInfo()
    kinds["google.rpc.ErrorInfo"].Unpack(info)
    assert info.reason == "RATE_LIMIT_EXCEEDED"
