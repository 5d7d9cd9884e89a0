"""--log-format json: one valid JSON object per line, Cloud Logging
severities, the fields Cloud Logging reads, extras and the attempt's tags."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from longrun_core.observability.json_logs import (
    CloudLoggingFormatter,
    bind_attempt,
    resolve_format,
    severity,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(CloudLoggingFormatter())
    logger = logging.getLogger("longrun.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def entries(out: io.StringIO) -> list[dict[str, object]]:
    lines = out.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in parsed)
    return parsed


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (logging.INFO + 5, "INFO"),
        (5, "DEFAULT"),
    ],
)
def test_severity_maps_python_levels_to_cloud_logging(level: int, expected: str) -> None:
    assert severity(level) == expected


def test_each_record_is_one_line_of_json_with_cloud_logging_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    before = datetime.now(UTC)
    logger.warning("disk %s is %d%% full\nsecond line", "/data", 93)
    logger.info('quotes " and \\ and ünïcode')
    after = datetime.now(UTC)
    first, second = entries(out)
    assert first["severity"] == "WARNING"
    assert first["message"] == "disk /data is 93% full\nsecond line"
    assert first["logger"] == "longrun.test.json"
    time = str(first["time"])
    assert time.endswith("Z")
    assert before <= datetime.fromisoformat(time) <= after
    location = first["logging.googleapis.com/sourceLocation"]
    assert isinstance(location, dict)
    assert location["file"] == __file__
    assert location["function"] == "test_each_record_is_one_line_of_json_with_cloud_logging_fields"
    assert int(location["line"]) > 0
    assert second["severity"] == "INFO"
    assert second["message"] == 'quotes " and \\ and ünïcode'


def test_extras_become_fields_and_cannot_replace_the_formatters_own(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.info(
        "finished",
        extra={
            "action": "finish",
            "operation": "projects/p/operations/1",
            "attempt": 2,
            "skew": 1.5,
            "severity": "DEBUG",
            "obj": object(),
            "long": "x" * 5000,
        },
    )
    (entry,) = entries(out)
    assert entry["action"] == "finish"
    assert entry["operation"] == "projects/p/operations/1"
    assert entry["attempt"] == 2
    assert entry["skew"] == 1.5
    assert entry["severity"] == "INFO"  # the record's own, not the extra's
    assert str(entry["obj"]).startswith("<object object")
    assert len(str(entry["long"])) == 2000
    assert "args" not in entry and "msg" not in entry and "levelno" not in entry


def test_an_exception_is_part_of_the_message(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("task failed")
    (entry,) = entries(out)
    assert entry["severity"] == "ERROR"
    message = str(entry["message"])
    assert message.startswith("task failed\nTraceback (most recent call last):")
    assert message.rstrip().endswith("ValueError: bad value")


async def test_an_attempts_entries_carry_its_operation_and_attempt(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured

    async def attempt(name: str, number: int) -> None:
        bind_attempt(name, number)
        await asyncio.sleep(0)
        logger.info("working on it")

    await asyncio.gather(
        asyncio.create_task(attempt("projects/p/operations/a", 1)),
        asyncio.create_task(attempt("projects/p/operations/b", 3)),
    )
    logger.info("outside any attempt")
    tagged = {(e["operation"], e["attempt"]) for e in entries(out) if "operation" in e}
    assert tagged == {("projects/p/operations/a", 1), ("projects/p/operations/b", 3)}
    assert "operation" not in entries(out)[-1]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert resolve_format("auto", _Stream(tty=True)) == "text"
    assert resolve_format("auto", _Stream(tty=False)) == "json"
    assert resolve_format("text", _Stream(tty=False)) == "text"
    assert resolve_format("json", _Stream(tty=True)) == "json"


def test_inside_a_span_entries_carry_cloud_loggings_trace_fields() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(CloudLoggingFormatter(project="my-project"))
    logger = logging.getLogger("longrun.test.json.trace")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before")
        tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            logger.warning("inside")
            context = span.get_span_context()
    finally:
        logger.removeHandler(handler)
    before, inside = entries(out)
    assert "logging.googleapis.com/trace" not in before
    assert inside["logging.googleapis.com/trace"] == (
        f"projects/my-project/traces/{context.trace_id:032x}"
    )
    assert inside["logging.googleapis.com/spanId"] == f"{context.span_id:016x}"
    assert inside["logging.googleapis.com/trace_sampled"] is True
