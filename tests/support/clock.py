"""A clock that only moves when told to, for exact time-dependent tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: A fixed, unremarkable instant (microsecond precision, like the stores keep).
DEFAULT_START = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class FakeClock:
    """Implements `longrun_core.clock.Clock`, and a monotonic clock (`monotonic`,
    for `longrun_core.leases.Monotonic`); starts at `start` and moves only on
    `advance`, both clocks together."""

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be an aware datetime")
        self._start = start
        self._now = start

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        """Seconds since the clock was made."""
        return (self._now - self._start).total_seconds()

    def advance(self, seconds: float) -> datetime:
        """Move forward by `seconds` (not backwards) and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += timedelta(seconds=seconds)
        return self._now
