"""Queues (longrun.v1.Queues): named, per-project queues like Cloud Tasks'.

A queue holds configuration the dispatch path honours: its `state` (a
PAUSED queue starts no new attempts) and a `retry_config` that overrides, field
by field, the retry policy of the tasks run in it. The queue `default` of
every project always exists: until it is changed it is not stored, and
`QueueStore.get` answers None for it (callers use `default_queue`).

Everything here is pure (validation, names, the retry arithmetic); the
stores live in longrun_core.sqlite.queues and longrun_core.google.firestore_queues.
"""

from __future__ import annotations

import builtins
import enum
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from longrun_core.errors import InvalidArgument
from longrun_core.model import queue_name
from longrun_core.names import check_project_id
from longrun_core.tasks import RetryPolicy

DEFAULT_QUEUE = "default"
_QUEUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
_QUEUE_NAME = re.compile(r"^projects/([^/]+)/queues/([^/]+)$")
QUEUE_ID_RULE = "a queue id is 1-100 characters of letters, digits and '-', not starting with '-'"

#: Bounds of a retry_config (Cloud Tasks' own, where it has them).
MAX_ATTEMPTS_LIMIT = 100
MAX_DOUBLINGS_LIMIT = 16
MAX_BACKOFF_LIMIT = timedelta(hours=1)
MAX_RETRY_DURATION_LIMIT = timedelta(days=30)


class QueueState(enum.IntEnum):
    """Values equal `longrun.v1.Queue.State`."""

    RUNNING = 1
    PAUSED = 2


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """A queue's override of its tasks' RetryPolicy; None keeps the task's value."""

    max_attempts: int | None = None
    max_retry_duration: timedelta | None = None
    min_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    max_doublings: int | None = None

    def check(self) -> None:
        """INVALID_ARGUMENT naming the first field out of bounds."""
        if self.max_attempts is not None and not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise _bad(f"retry_config.max_attempts must be 1-{MAX_ATTEMPTS_LIMIT}")
        if self.max_doublings is not None and not 0 <= self.max_doublings <= MAX_DOUBLINGS_LIMIT:
            raise _bad(f"retry_config.max_doublings must be 0-{MAX_DOUBLINGS_LIMIT}")
        for name, value, limit in (
            ("min_backoff", self.min_backoff, MAX_BACKOFF_LIMIT),
            ("max_backoff", self.max_backoff, MAX_BACKOFF_LIMIT),
            ("max_retry_duration", self.max_retry_duration, MAX_RETRY_DURATION_LIMIT),
        ):
            if value is not None and not timedelta(0) <= value <= limit:
                raise _bad(f"retry_config.{name} must be between 0 and {limit}")
        if (
            self.min_backoff is not None
            and self.max_backoff is not None
            and self.min_backoff > self.max_backoff
        ):
            raise _bad("retry_config.min_backoff must not exceed max_backoff")


#: Bounds of the concurrency limits (Cloud Tasks' max_concurrent_dispatches: 5,000).
MAX_CONCURRENT_DISPATCHES_LIMIT = 5000
MAX_CONCURRENT_PER_KEY_LIMIT = 5000
#: Bounds of the rate limit (Cloud Tasks': max_dispatches_per_second <= 500;
#: queue.yaml's bucket_size <= 500).
MAX_DISPATCHES_PER_SECOND_LIMIT = 500.0
MAX_BURST_SIZE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class ConcurrencyLimits:
    """A queue's `rate_limits`, each None when not set: at most
    `max_concurrent_dispatches` attempts of the queue (and
    `max_concurrent_per_key` with the same concurrency_key) RUNNING at once,
    and attempts started at most `max_dispatches_per_second` on average with
    bursts of `max_burst_size` (a token bucket, longrun_core.rate_bucket),
    over every worker."""

    max_concurrent_dispatches: int | None = None
    max_concurrent_per_key: int | None = None
    max_dispatches_per_second: float | None = None
    max_burst_size: int | None = None

    def check(self) -> None:
        for name, value, limit in (
            (
                "max_concurrent_dispatches",
                self.max_concurrent_dispatches,
                MAX_CONCURRENT_DISPATCHES_LIMIT,
            ),
            ("max_concurrent_per_key", self.max_concurrent_per_key, MAX_CONCURRENT_PER_KEY_LIMIT),
        ):
            if value is not None and not 1 <= value <= limit:
                raise _bad(f"rate_limits.{name} must be 1-{limit} (0: no limit)")
        rate = self.max_dispatches_per_second
        if rate is not None and not (
            math.isfinite(rate) and 0 < rate <= MAX_DISPATCHES_PER_SECOND_LIMIT
        ):
            raise _bad(
                "rate_limits.max_dispatches_per_second must be more than 0 and at most "
                f"{MAX_DISPATCHES_PER_SECOND_LIMIT:g} (0: no limit)"
            )
        burst = self.max_burst_size
        if burst is not None and not 1 <= burst <= MAX_BURST_SIZE_LIMIT:
            raise _bad(f"rate_limits.max_burst_size must be 1-{MAX_BURST_SIZE_LIMIT} (0: unset)")
        if burst is not None and rate is None:
            raise _bad(
                "rate_limits.max_burst_size needs rate_limits.max_dispatches_per_second: "
                "the burst is the size of the rate's token bucket"
            )

    @property
    def any(self) -> bool:
        return self.concurrency or self.max_dispatches_per_second is not None

    @property
    def concurrency(self) -> bool:
        """Whether a concurrency limit (rather than only a rate) is set."""
        return self.max_concurrent_dispatches is not None or self.max_concurrent_per_key is not None


@dataclass(frozen=True, slots=True)
class QueueConfig:
    project: str
    queue_id: str
    #: None only for the implicit default queue, never stored.
    create_time: datetime | None
    update_time: datetime | None
    state: QueueState = QueueState.RUNNING
    retry: RetryConfig = field(default_factory=RetryConfig)
    purge_time: datetime | None = None
    limits: ConcurrencyLimits = field(default_factory=ConcurrencyLimits)

    @property
    def name(self) -> str:
        return queue_name(self.project, self.queue_id)

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.queue_id)


def _bad(message: str, reason: str = "QUEUE_CONFIG_INVALID") -> InvalidArgument:
    return InvalidArgument(message, reason=reason)


def check_queue_id(queue_id: str) -> str:
    if not _QUEUE_ID.fullmatch(queue_id):
        raise _bad(f"queue id {queue_id[:120]!r}: {QUEUE_ID_RULE}", "QUEUE_ID_INVALID")
    return queue_id


def parse_queue_name(name: str) -> tuple[str, str]:
    """(project, queue id) of `projects/{p}/queues/{q}`; INVALID_ARGUMENT otherwise."""
    match = _QUEUE_NAME.fullmatch(name)
    if match is None:
        raise _bad(
            f"queue name {name[:200]!r} is not projects/PROJECT/queues/QUEUE", "QUEUE_NAME_INVALID"
        )
    return check_project_id(match.group(1)), check_queue_id(match.group(2))


def job_queue(project: str, requested: str) -> str:
    """The queue id a CreateJob `queue` field names in `project`: empty ->
    `default`; an id; or a full name, which must be in the same project."""
    if not requested:
        return DEFAULT_QUEUE
    if "/" not in requested:
        return check_queue_id(requested)
    other, queue_id = parse_queue_name(requested)
    if other != project:
        raise _bad(
            f"queue {requested[:200]!r} is not in the job's project {project!r}",
            "QUEUE_PROJECT_MISMATCH",
        )
    return queue_id


def default_queue(project: str, now: datetime | None = None) -> QueueConfig:
    """The `default` queue of `project`: as shown before it is changed (no
    times), or as first stored at `now`."""
    return QueueConfig(project=project, queue_id=DEFAULT_QUEUE, create_time=now, update_time=now)


def stored_or_default(
    current: QueueConfig | None, project: str, queue_id: str, now: datetime
) -> QueueConfig | None:
    """The queue to change: the stored one, else the default queue (stored
    from `now` on), else None (no such queue)."""
    if current is not None:
        return current
    if queue_id == DEFAULT_QUEUE:
        return default_queue(project, now)
    return None


def purged(config: QueueConfig, now: datetime) -> QueueConfig:
    return replace(config, purge_time=now, update_time=now)


def paused(config: QueueConfig, now: datetime) -> QueueConfig:
    return replace(config, state=QueueState.PAUSED, update_time=now)


def resumed(config: QueueConfig, now: datetime) -> QueueConfig:
    return replace(config, state=QueueState.RUNNING, update_time=now)


#: Update mask paths and what each copies from the request's queue.
RETRY_FIELDS = ("max_attempts", "max_retry_duration", "min_backoff", "max_backoff", "max_doublings")
LIMIT_FIELDS = (
    "max_concurrent_dispatches",
    "max_concurrent_per_key",
    "max_dispatches_per_second",
    "max_burst_size",
)
UPDATABLE_PATHS = frozenset(
    {
        "retry_config",
        *(f"retry_config.{f}" for f in RETRY_FIELDS),
        "rate_limits",
        *(f"rate_limits.{f}" for f in LIMIT_FIELDS),
    }
)


def apply_update(
    config: QueueConfig,
    new_retry: RetryConfig,
    paths: list[str],
    now: datetime,
    new_limits: ConcurrencyLimits | None = None,
) -> QueueConfig:
    """`config` with the fields `paths` name taken from `new_retry` and
    `new_limits` (`retry_config` and `rate_limits` when `paths` is empty).
    INVALID_ARGUMENT for a path that is unknown or not updatable."""
    if new_limits is None:
        new_limits = ConcurrencyLimits()
    if not paths:
        paths = ["retry_config", "rate_limits"]
    retry = config.retry
    limits = config.limits
    for path in paths:
        if path not in UPDATABLE_PATHS:
            updatable = ", ".join(sorted(UPDATABLE_PATHS))
            raise _bad(
                f"update_mask path {path[:100]!r} cannot be updated; use one of: {updatable}",
                "UPDATE_MASK_INVALID",
            )
        if path == "retry_config":
            retry = new_retry
        elif path == "rate_limits":
            limits = new_limits
        elif path.startswith("rate_limits."):
            attr = path.removeprefix("rate_limits.")
            limits = replace(limits, **{attr: getattr(new_limits, attr)})
        else:
            attr = path.removeprefix("retry_config.")
            retry = replace(retry, **{attr: getattr(new_retry, attr)})
    retry.check()
    limits.check()
    return replace(config, retry=retry, limits=limits, update_time=now)


# ---- retry arithmetic (Cloud Tasks' RetryConfig semantics) ----


@dataclass(frozen=True, slots=True)
class EffectiveRetry:
    """The retry parameters an operation's attempts follow: its task's
    policy with its queue's retry_config laid over it."""

    max_attempts: int
    min_backoff: timedelta
    max_backoff: timedelta
    #: None: the backoff doubles until max_backoff (the task policy's way).
    max_doublings: int | None
    max_retry_duration: timedelta | None
    jitter: bool
    #: Growth per retry while no max_doublings is set (the task policy's).
    multiplier: float = 2.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Delay after failed attempt `attempt` (1-based). Cloud Tasks: the
        interval doubles `max_doublings` times, then grows by the last
        doubled interval each retry, never past max_backoff. With jitter
        (task policies only), a uniform draw between min_backoff and that."""
        step = attempt - 1
        if self.max_doublings is None:
            seconds = self.min_backoff.total_seconds() * self.multiplier**step
            ceiling = timedelta(seconds=min(seconds, self.max_backoff.total_seconds()))
        elif step <= self.max_doublings:
            ceiling = self.min_backoff * (1 << step)
        else:
            doubled = self.min_backoff * (1 << self.max_doublings)
            ceiling = doubled * (1 + step - self.max_doublings)
        ceiling = min(ceiling, self.max_backoff)
        if self.jitter and ceiling > self.min_backoff:
            seconds = (rng or random).uniform(
                self.min_backoff.total_seconds(), ceiling.total_seconds()
            )
            return timedelta(seconds=seconds)
        return max(ceiling, self.min_backoff)

    def allows_retry(self, first_start: datetime | None, now: datetime, delay: timedelta) -> bool:
        """Whether a retry starting after `delay` is within max_retry_duration
        of the first attempt's start."""
        if self.max_retry_duration is None or first_start is None:
            return True
        return (now + delay) - first_start <= self.max_retry_duration


def effective_retry(task: RetryPolicy, queue: RetryConfig | None) -> EffectiveRetry:
    """Lay `queue` (a queue's retry_config) over `task` (a task's RetryPolicy).
    A queue that sets any backoff field makes the backoff deterministic
    (Cloud Tasks' arithmetic, no jitter)."""
    base = EffectiveRetry(
        max_attempts=task.max_attempts,
        min_backoff=timedelta(seconds=task.min_backoff),
        max_backoff=timedelta(seconds=task.max_backoff),
        max_doublings=None,
        max_retry_duration=None,
        jitter=task.jitter,
        multiplier=task.multiplier,
    )
    if queue is None:
        return base
    backoff_set = any(
        v is not None for v in (queue.min_backoff, queue.max_backoff, queue.max_doublings)
    )
    min_backoff = queue.min_backoff if queue.min_backoff is not None else base.min_backoff
    max_backoff = queue.max_backoff if queue.max_backoff is not None else base.max_backoff
    return EffectiveRetry(
        max_attempts=queue.max_attempts or base.max_attempts,
        min_backoff=min_backoff,
        max_backoff=max(max_backoff, min_backoff),
        max_doublings=queue.max_doublings,
        max_retry_duration=queue.max_retry_duration,
        jitter=base.jitter and not backoff_set,
        multiplier=2.0 if backoff_set else base.multiplier,
    )


# ---- the store seam ----


class QueueStore(Protocol):
    """Where queue configuration lives: beside the operations (a table of
    the SQLite database, a Firestore collection), so every server and
    worker sees the same.

    Guarantees (tests/contract/test_queue_store_contract.py): `create` is
    exclusive (AlreadyExists for an id taken in that project); `update`
    applies its function to the current config atomically (no lost update
    between two concurrent updates); `list` is per project, by queue id,
    paged by `after`; `delete` answers whether there was one; `list_all`
    returns the configs of every project (for workers' caches), at most
    `limit`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, config: QueueConfig) -> None: ...

    async def get(self, project: str, queue_id: str) -> QueueConfig | None: ...

    async def list(
        self, project: str, *, after: str = "", limit: int = 100
    ) -> list[QueueConfig]: ...

    async def update(
        self, project: str, queue_id: str, change: Callable[[QueueConfig | None], QueueConfig]
    ) -> QueueConfig:
        """Store `change(current)` (current is None when absent: `change` may
        create the queue, e.g. the implicit default) in one atomic step."""
        ...

    async def delete(self, project: str, queue_id: str) -> bool: ...

    async def list_all(self, limit: int) -> builtins.list[QueueConfig]: ...
