"""Durations as people type them: `30d`, `12h`, `90m`, `45s`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Longest duration accepted (about 100 years).
MAX_SECONDS = 100 * 365 * 86400


def parse_duration(text: str) -> timedelta:
    """`<number><unit>` with unit s, m, h, d or w; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 30d, 12h, 90m or 45s, got {text[:50]!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"a duration must be positive and at most 100 years, got {text!r}")
    return timedelta(seconds=seconds)
