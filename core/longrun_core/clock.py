"""Injectable time and id sources (no module-level state)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Tells the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


IdGenerator = Callable[[], str]


def uuid_ids() -> str:
    """Operation ids: 32 lowercase hex digits of a random UUID4."""
    return uuid.uuid4().hex


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Exact microseconds since the epoch (floats lose the last digits)."""
    return (value - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class SkewedClock:
    """Another clock, off by `skew` seconds. A test hook: `clock_from_env`
    builds one from LONGRUN_CLOCK_SKEW so that a real process can play a
    machine whose clock is wrong. Never set it in production."""

    def __init__(self, inner: Clock, skew: float) -> None:
        self.inner = inner
        self.skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        return self.inner.now() + self.skew


#: Test-only: seconds added to this process's wall clock (see `SkewedClock`).
CLOCK_SKEW_VAR = "LONGRUN_CLOCK_SKEW"


def clock_from_env(env: Mapping[str, str] | None = None) -> Clock:
    """The system clock, or (test hook) one skewed by $LONGRUN_CLOCK_SKEW seconds."""
    raw = (os.environ if env is None else env).get(CLOCK_SKEW_VAR, "").strip()
    if not raw:
        return SystemClock()
    try:
        skew = float(raw)
    except ValueError as exc:
        raise ValueError(f"{CLOCK_SKEW_VAR} must be a number of seconds, got {raw!r}") from exc
    return SkewedClock(SystemClock(), skew)
