"""Process limits: the accept-error log filter and the open-file limit."""

from __future__ import annotations

import logging
import resource

import pytest

from longrun_core.process_limits import (
    ACCEPT_ERROR,
    RepeatFilter,
    limit_accept_error_logs,
    raise_open_files_limit,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), None)


def test_one_repeated_line_per_interval_saying_how_many_were_dropped() -> None:
    clock = Clock()
    repeat = RepeatFilter(ACCEPT_ERROR, 10.0, clock)
    first = record(f"{ACCEPT_ERROR}\nsocket: <...>")
    assert repeat.filter(first)
    assert [repeat.filter(record(ACCEPT_ERROR)) for _ in range(5000)] == [False] * 5000
    clock.now += 9.9
    assert not repeat.filter(record(ACCEPT_ERROR))
    clock.now += 0.2
    later = record(ACCEPT_ERROR)
    assert repeat.filter(later)
    assert later.getMessage() == (
        f"{ACCEPT_ERROR} (5001 more like it in the last 10 s were not logged)"
    )
    clock.now += 10
    quiet = record(ACCEPT_ERROR)
    assert repeat.filter(quiet) and quiet.getMessage() == ACCEPT_ERROR


def test_other_records_pass() -> None:
    repeat = RepeatFilter(ACCEPT_ERROR, 10.0, Clock())
    assert repeat.filter(record(ACCEPT_ERROR))
    assert all(repeat.filter(record("Task was destroyed but it is pending!")) for _ in range(3))


def test_the_filter_is_installed_once_on_the_asyncio_logger() -> None:
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        first = limit_accept_error_logs()
        assert limit_accept_error_logs() is first
        assert logger.filters.count(first) == 1
    finally:
        logger.filters[:] = before


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        with caplog.at_level(logging.INFO, "longrun.limits"):
            now = raise_open_files_limit()
        assert now[0] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if hard != resource.RLIM_INFINITY:
            assert now == (hard, hard)
            if lower < hard:
                assert f"open-file limit raised from {lower} to {hard}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
