"""Queues (longrun.v1.Queues) and a job's queue options, for both clients.

from datetime import timedelta
from longrun_client import Client, JobOptions, RetryOptions

client.create_queue("emails", project="billing",
                    retry=RetryOptions(max_attempts=5, min_backoff=timedelta(seconds=1)))
client.submit("send", {"to": "a@b.c"}, project="billing",
              options=JobOptions(queue="emails", delay=timedelta(minutes=10)))
client.pause_queue("emails", project="billing")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import field_mask_pb2

from longrun.v1 import jobs_pb2, queues_pb2


@dataclass(frozen=True)
class JobOptions:
    """CreateJob's queue fields. `schedule_time` (an aware datetime) or
    `delay` (from now, as the client's clock tells) sets when the job may
    first run; at most 30 days ahead."""

    queue: str | None = None
    schedule_time: datetime | None = None
    delay: timedelta | None = None
    dispatch_deadline: timedelta | None = None
    concurrency_key: str | None = None

    def __post_init__(self) -> None:
        if self.schedule_time is not None and self.delay is not None:
            raise ValueError("give schedule_time or delay, not both")
        if self.schedule_time is not None and self.schedule_time.tzinfo is None:
            raise ValueError("schedule_time must be timezone-aware")

    def apply(self, request: jobs_pb2.CreateJobRequest) -> None:
        if self.queue:
            request.queue = self.queue
        when = self.schedule_time
        if self.delay is not None:
            when = datetime.now(UTC) + self.delay
        if when is not None:
            request.schedule_time.FromDatetime(when.astimezone(UTC))
        if self.dispatch_deadline is not None:
            request.dispatch_deadline.FromTimedelta(self.dispatch_deadline)
        if self.concurrency_key:
            request.concurrency_key = self.concurrency_key


@dataclass(frozen=True)
class RetryOptions:
    """A queue's retry_config (None: the task's own value)."""

    max_attempts: int | None = None
    max_retry_duration: timedelta | None = None
    min_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    max_doublings: int | None = None

    def message(self) -> queues_pb2.RetryConfig:
        config = queues_pb2.RetryConfig(max_attempts=self.max_attempts or 0)
        if self.max_doublings is not None:
            config.max_doublings = self.max_doublings
        for name in ("max_retry_duration", "min_backoff", "max_backoff"):
            value = getattr(self, name)
            if value is not None:
                getattr(config, name).FromTimedelta(value)
        return config

    def mask(self) -> field_mask_pb2.FieldMask:
        """The update mask naming the fields set here."""
        return field_mask_pb2.FieldMask(
            paths=[
                f"retry_config.{name}"
                for name in (
                    "max_attempts",
                    "max_retry_duration",
                    "min_backoff",
                    "max_backoff",
                    "max_doublings",
                )
                if getattr(self, name) is not None
            ]
        )


@dataclass(frozen=True)
class LimitOptions:
    """A queue's rate_limits: at most this many attempts of the queue (with
    the same concurrency_key) running at once, and started per second, over
    every worker. None: not set here; 0: no limit (removes one on update)."""

    max_concurrent_dispatches: int | None = None
    max_concurrent_per_key: int | None = None
    #: Attempts started per second on average over every worker (a token
    #: bucket of `max_burst_size` tokens; 0: no limit).
    max_dispatches_per_second: float | None = None
    max_burst_size: int | None = None

    def message(self) -> queues_pb2.RateLimits:
        return queues_pb2.RateLimits(
            max_concurrent_dispatches=self.max_concurrent_dispatches or 0,
            max_concurrent_per_key=self.max_concurrent_per_key or 0,
            max_dispatches_per_second=self.max_dispatches_per_second or 0.0,
            max_burst_size=self.max_burst_size or 0,
        )

    def mask(self) -> list[str]:
        """The update mask paths naming the fields set here."""
        return [
            f"rate_limits.{name}"
            for name in (
                "max_concurrent_dispatches",
                "max_concurrent_per_key",
                "max_dispatches_per_second",
                "max_burst_size",
            )
            if getattr(self, name) is not None
        ]


def queue_path(queue: str, project: str | None) -> str:
    """A queue's full name from its name, or its id and project."""
    if queue.startswith("projects/"):
        return queue
    if not project:
        raise ValueError(f"queue {queue!r} needs a project (or give projects/P/queues/{queue})")
    return f"projects/{project}/queues/{queue}"


def create_request(
    queue_id: str,
    project: str | None,
    retry: RetryOptions | None,
    limits: LimitOptions | None = None,
) -> queues_pb2.CreateQueueRequest:
    if not project:
        raise ValueError("creating a queue needs a project")
    return queues_pb2.CreateQueueRequest(
        parent=f"projects/{project}",
        queue_id=queue_id,
        queue=queues_pb2.Queue(
            retry_config=(retry or RetryOptions()).message(),
            rate_limits=(limits or LimitOptions()).message(),
        ),
    )


def update_request(
    name: str, retry: RetryOptions | None, limits: LimitOptions | None = None
) -> queues_pb2.UpdateQueueRequest:
    """Change the retry and limit fields set in `retry` and `limits`, keep the others."""
    retry = retry or RetryOptions()
    limits = limits or LimitOptions()
    mask = retry.mask()
    mask.paths.extend(limits.mask())
    if not mask.paths:
        raise ValueError("nothing to update: set at least one retry or limit field")
    return queues_pb2.UpdateQueueRequest(
        queue=queues_pb2.Queue(
            name=name, retry_config=retry.message(), rate_limits=limits.message()
        ),
        update_mask=mask,
    )


def stats_mask(stats: bool) -> field_mask_pb2.FieldMask | None:
    """The read_mask asking for `Queue.stats` (None: the queue alone)."""
    return field_mask_pb2.FieldMask(paths=["stats"]) if stats else None
