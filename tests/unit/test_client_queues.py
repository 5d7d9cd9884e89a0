"""The clients' queue pieces: JobOptions onto a CreateJobRequest, the
RetryOptions update mask, queue names, and the CLI's --at / --in parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import click
import pytest

from longrun.v1 import jobs_pb2
from longrun_client.cli import job_options, parse_time
from longrun_client.queues import (
    JobOptions,
    LimitOptions,
    RetryOptions,
    create_request,
    queue_path,
    update_request,
)


def test_job_options_fill_the_request() -> None:
    request = jobs_pb2.CreateJobRequest(task="noop")
    when = datetime(2026, 12, 24, 18, 0, tzinfo=timezone(timedelta(hours=1)))
    JobOptions(
        queue="emails",
        schedule_time=when,
        dispatch_deadline=timedelta(minutes=15),
        concurrency_key="c-1",
    ).apply(request)
    assert request.queue == "emails" and request.concurrency_key == "c-1"
    assert request.schedule_time.ToDatetime(tzinfo=UTC) == when
    assert request.dispatch_deadline.ToTimedelta() == timedelta(minutes=15)


def test_a_delay_is_counted_from_now() -> None:
    request = jobs_pb2.CreateJobRequest(task="noop")
    before = datetime.now(UTC)
    JobOptions(delay=timedelta(minutes=10)).apply(request)
    after = datetime.now(UTC)
    scheduled = request.schedule_time.ToDatetime(tzinfo=UTC)
    assert before + timedelta(minutes=10) <= scheduled <= after + timedelta(minutes=10)


def test_job_options_refuse_both_times_and_naive_ones() -> None:
    with pytest.raises(ValueError, match="not both"):
        JobOptions(schedule_time=datetime.now(UTC), delay=timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone"):
        JobOptions(schedule_time=datetime(2026, 1, 1))


def test_an_update_masks_only_the_fields_given() -> None:
    request = update_request(
        "projects/p/queues/q", RetryOptions(max_backoff=timedelta(seconds=60), max_doublings=0)
    )
    assert list(request.update_mask.paths) == [
        "retry_config.max_backoff",
        "retry_config.max_doublings",
    ]
    assert request.queue.retry_config.HasField("max_doublings")
    assert request.queue.retry_config.max_doublings == 0
    with pytest.raises(ValueError, match="nothing to update"):
        update_request("projects/p/queues/q", RetryOptions())


def test_limit_options_fill_create_and_mask_only_what_is_given() -> None:
    created = create_request("q", "p", None, LimitOptions(max_concurrent_dispatches=3))
    assert created.queue.rate_limits.max_concurrent_dispatches == 3
    assert created.queue.rate_limits.max_concurrent_per_key == 0
    request = update_request(
        "projects/p/queues/q",
        RetryOptions(max_attempts=4),
        LimitOptions(max_concurrent_per_key=0),
    )
    assert list(request.update_mask.paths) == [
        "retry_config.max_attempts",
        "rate_limits.max_concurrent_per_key",
    ]
    only_limits = update_request(
        "projects/p/queues/q", None, LimitOptions(max_concurrent_dispatches=2)
    )
    assert list(only_limits.update_mask.paths) == ["rate_limits.max_concurrent_dispatches"]
    assert only_limits.queue.rate_limits.max_concurrent_dispatches == 2


def test_queue_paths() -> None:
    assert queue_path("emails", "billing") == "projects/billing/queues/emails"
    assert queue_path("projects/x/queues/y", "billing") == "projects/x/queues/y"
    with pytest.raises(ValueError, match="needs a project"):
        queue_path("emails", None)


def test_the_cli_parses_at_and_in() -> None:
    assert parse_time("2026-12-24T18:00:00Z") == datetime(2026, 12, 24, 18, tzinfo=UTC)
    with pytest.raises(click.BadParameter):
        parse_time("2026-12-24T18:00:00")  # no offset
    with pytest.raises(click.BadParameter):
        parse_time("tomorrow")
    options = job_options("emails", None, "90s", "15m", None)
    assert options is not None and options.delay == timedelta(seconds=90)
    assert options.dispatch_deadline == timedelta(minutes=15)
    assert job_options(None, None, None, None, None) is None
    with pytest.raises(click.UsageError):
        job_options(None, "2026-12-24T18:00:00Z", "90s", None, None)
