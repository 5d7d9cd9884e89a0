"""Process-wide limits of a long-running server process: the open-file limit
raised as far as allowed, and a flood of identical accept errors reduced to
one log line per interval.

When a process runs out of file descriptors, asyncio's accept loop reports
"socket.accept() out of system resource" through the loop's exception
handler (the `asyncio` logger) for every connection it cannot take, and
retries each second per listening socket with a growing pile of retries: a
tester saw 309,247 such lines in 40 s. `limit_accept_error_logs` keeps the
first line of each interval and counts the rest.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

log = logging.getLogger("longrun.limits")

ACCEPT_ERROR = "socket.accept() out of system resource"
#: Seconds between two accept-error lines.
ACCEPT_LOG_INTERVAL = 10.0


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is a
    file descriptor), log the outcome, and return the (soft, hard) limits
    now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        log.info("open-file limit %d (the hard limit)", soft)
        return soft, hard
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = max(soft, 1 << 20)  # "unlimited" is not a valid soft limit everywhere
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-file limit stays %d: cannot raise it to %d: %s", soft, target, exc)
        return soft, hard
    log.info("open-file limit raised from %d to %d", soft, target)
    return target, hard


class RepeatFilter(logging.Filter):
    """Lets through one record whose message starts with `prefix` per
    `interval` seconds; the next one let through says how many were
    dropped meanwhile. Other records pass untouched."""

    def __init__(
        self, prefix: str, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.dropped = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.dropped += 1
            return False
        self._last = now
        if self.dropped:
            record.msg = (
                f"{message} ({self.dropped} more like it in the last {self.interval:g} s "
                "were not logged)"
            )
            record.args = ()
            self.dropped = 0
        return True


def limit_accept_error_logs(interval: float = ACCEPT_LOG_INTERVAL) -> RepeatFilter:
    """Log "socket.accept() out of system resource" at most once per
    `interval` (a filter on the `asyncio` logger); returns the filter."""
    logger = logging.getLogger("asyncio")
    for existing in logger.filters:
        if isinstance(existing, RepeatFilter) and existing.prefix == ACCEPT_ERROR:
            return existing
    repeat = RepeatFilter(ACCEPT_ERROR, interval)
    logger.addFilter(repeat)
    return repeat
