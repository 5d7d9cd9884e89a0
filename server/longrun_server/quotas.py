"""Per-principal quotas (issue 10, point 7): requests per second (a token
bucket per principal, in this process) and open operations (counted in the
store, so it holds across every server). A call over either gets
RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo.

The rate buckets live in a bounded LRU: an evicted principal starts again
with a full bucket, so the map cannot grow past `max_principals` however many
identities call. Only authenticated principals have buckets of their own;
anonymous callers (a deployment without authentication) share one bucket per
peer address.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from longrun_core.errors import QuotaExceeded

#: Principals whose buckets are kept at once (about 100 bytes each).
DEFAULT_MAX_PRINCIPALS = 100_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateQuota:
    """At most `rate` requests per second per principal, with bursts of
    `burst`. `rate` 0 disables the quota."""

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_principals: int = DEFAULT_MAX_PRINCIPALS,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        if rate and self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.monotonic = monotonic
        self.max_principals = max_principals
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def admit(self, key: str) -> None:
        """Take one token from `key`'s bucket; QuotaExceeded (with the time
        until a token is back) when it is empty."""
        if not self.enabled:
            return
        now = self.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_principals:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        wait = (1 - bucket.tokens) / self.rate
        error = QuotaExceeded(
            f"request rate quota exceeded for {key!r}: at most {self.rate:g} requests per "
            f"second (bursts of {self.burst:g}); retry in {wait:.2f} s",
            reason="RATE_LIMIT_EXCEEDED",
            metadata={
                "principal": key,
                "quota_limit": "requests_per_second",
                "quota_limit_value": f"{self.rate:g}",
            },
        )
        error.retry_delay = round(max(wait, 0.001), 3)
        raise error


#: Counts a principal's unfinished operations, stopping at `limit`.
CountOpen = Callable[[str, int], Awaitable[int]]


class OpenOperationsQuota:
    """At most `limit` unfinished operations created by one principal, counted
    in the store (so every server sees the same count). `limit` 0 disables it."""

    def __init__(self, limit: int, count_open: CountOpen) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self.limit = limit
        self.count_open = count_open

    async def admit(self, principal: str, count: int = 1) -> None:
        """Allow `count` more unfinished operations of `principal` (all or
        none: a batch over the quota is refused whole)."""
        if not self.limit:
            return
        open_now = await self.count_open(principal, self.limit)
        if open_now + count > self.limit:
            error = QuotaExceeded(
                f"open operations quota exceeded for {principal!r}: at most {self.limit} "
                "unfinished operations; wait for some to finish, or cancel or delete them",
                reason="OPEN_OPERATIONS_QUOTA_EXCEEDED",
                metadata={
                    "principal": principal,
                    "quota_limit": "open_operations",
                    "quota_limit_value": str(self.limit),
                },
            )
            error.retry_delay = 5.0
            raise error
