"""longrun.v1.Queue messages <-> longrun_core.queues values."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from longrun.v1 import queues_pb2
from longrun_core.queues import ConcurrencyLimits, QueueConfig, RetryConfig


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def retry_message(retry: RetryConfig) -> queues_pb2.RetryConfig:
    message = queues_pb2.RetryConfig(max_attempts=retry.max_attempts or 0)
    if retry.max_doublings is not None:
        message.max_doublings = retry.max_doublings
    for name in ("max_retry_duration", "min_backoff", "max_backoff"):
        value = getattr(retry, name)
        if value is not None:
            getattr(message, name).FromTimedelta(value)
    return message


def retry_of(message: queues_pb2.RetryConfig) -> RetryConfig:
    """The RetryConfig a message asks for (unset fields: None), unchecked."""

    def duration(value: duration_pb2.Duration, present: bool) -> timedelta | None:
        return value.ToTimedelta() if present else None

    return RetryConfig(
        max_attempts=message.max_attempts or None,
        max_doublings=message.max_doublings if message.HasField("max_doublings") else None,
        max_retry_duration=duration(
            message.max_retry_duration, message.HasField("max_retry_duration")
        ),
        min_backoff=duration(message.min_backoff, message.HasField("min_backoff")),
        max_backoff=duration(message.max_backoff, message.HasField("max_backoff")),
    )


def limits_of(message: queues_pb2.RateLimits) -> ConcurrencyLimits:
    """The limits a message asks for (0: no limit; a negative value stays,
    for check() to refuse)."""
    return ConcurrencyLimits(
        max_concurrent_dispatches=message.max_concurrent_dispatches or None,
        max_concurrent_per_key=message.max_concurrent_per_key or None,
        max_dispatches_per_second=message.max_dispatches_per_second or None,
        max_burst_size=message.max_burst_size or None,
    )


def limits_message(limits: ConcurrencyLimits) -> queues_pb2.RateLimits:
    return queues_pb2.RateLimits(
        max_concurrent_dispatches=limits.max_concurrent_dispatches or 0,
        max_concurrent_per_key=limits.max_concurrent_per_key or 0,
        max_dispatches_per_second=limits.max_dispatches_per_second or 0.0,
        max_burst_size=limits.max_burst_size or 0,
    )


def queue_message(config: QueueConfig) -> queues_pb2.Queue:
    message = queues_pb2.Queue(
        name=config.name,
        state=int(config.state),  # type: ignore[arg-type]
        retry_config=retry_message(config.retry),
        rate_limits=limits_message(config.limits),
    )
    for attr in ("create_time", "update_time", "purge_time"):
        value: datetime | None = getattr(config, attr)
        if value is not None:
            getattr(message, attr).CopyFrom(_timestamp(value))
    return message
