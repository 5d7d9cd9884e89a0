"""The operation state machine: every change to an operation is one pure
function here, applied by `OperationStore.update` under compare-and-set.

A function returns the new record, returns None when there is nothing to
change (an idempotent repeat), or raises a `Rejected` subclass telling the
caller why the change does not apply. Writes by a worker are *fenced*: they
apply only while the worker's claim still holds the lease, so a stale worker
can never overwrite a newer attempt's outcome.

    QUEUED --claim--> RUNNING --finish--> SUCCEEDED | FAILED | CANCELLED
      ^  \\             |  \\--retry (transient error, attempts left)--> QUEUED
      |   \\--claim with no attempts left--> FAILED
      |                 \\--release (graceful shutdown) / lease expiry--> QUEUED
      \\--cancel--> CANCELLED (a queued operation never runs)

Attempts never exceed `max_attempts`: a claim starts attempt + 1 only while
attempts are left, and ends the operation FAILED otherwise.

Fencing: a claim is identified by (`lease_owner`, `attempt`, `releases`).
`attempt + releases` counts the claims of an operation (a claim adds one to
`attempt`; a release that gives the attempt back moves one from `attempt` to
`releases`), so no two claims share the triple even when the same worker
claims twice.

Leases and clocks: whether a lease is lost is never judged by comparing the
holder's timestamps with the observer's clock (two processes' wall clocks may
disagree by any amount). The holder renews by writing, which advances the
record's `version`; an observer declares the lease lost only once it has
itself seen the record stay at one version for `lease_duration`, measured on
its own monotonic clock (`LeaseSighting`, kept by `longrun_core.leases`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.rpc import code_pb2, status_pb2

from longrun_core.model import (
    MAX_ATTEMPT_HISTORY,
    MAX_ATTEMPT_MESSAGE,
    AttemptEntry,
    OperationRecord,
    State,
    WaitReason,
    evolve,
)
from longrun_core.queues import ConcurrencyLimits
from longrun_core.rate_bucket import (
    DEFAULT_HORIZON,
    RESERVED_BACKSTOP,
    Refused,
    effective_burst,
    gate,
    holds_token,
    take,
)


class Rejected(Exception):
    """The transition does not apply to the record as it is now."""


class AlreadyDone(Rejected):
    """The operation is finished; nothing more can happen to it."""

    def __init__(self, message: str, record: OperationRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


class LeaseHeld(Rejected):
    """Another attempt's lease may still be live (a redelivered duplicate, or a
    holder not yet seen silent for its whole lease): defer for `remaining`."""

    def __init__(self, remaining: timedelta) -> None:
        super().__init__(f"lease may be held for {remaining.total_seconds():.3g}s more")
        self.remaining = remaining


class NotDue(Rejected):
    """A retry is scheduled for later; a message that arrives early is deferred."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"not due until {until.isoformat()}")
        self.until = until


class QueuePaused(Rejected):
    """The operation's queue is paused: no attempt starts. Its message is
    dropped; the sweeper republishes it at its `dispatch_due_time`, and
    ResumeQueue republishes the queue's operations at once."""


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """What a claim of a concurrency-limited queue must be admitted under:
    at most `queue_limit` RUNNING attempts of (project, queue), and at most
    `key_limit` of those with `key` (None: that limit does not apply)."""

    project: str
    queue: str
    key: str | None
    queue_limit: int | None
    key_limit: int | None
    #: The queue's rate limit (None: none) and its bucket size.
    rate: float | None = None
    burst: int = 1
    #: Longest a token may be reserved ahead (longrun_core.rate_bucket).
    horizon: timedelta = DEFAULT_HORIZON

    @property
    def concurrency(self) -> bool:
        return self.queue_limit is not None or (self.key is not None and self.key_limit is not None)


class SlotRequired(Rejected):
    """The operation's queue limits its running attempts: the claim must be
    made through `OperationStore.claim_slot`, which counts them under a guard."""

    def __init__(self, request: SlotRequest) -> None:
        super().__init__(f"queue {request.queue!r} limits concurrency: a slot is needed")
        self.request = request


class RateLimited(Rejected):
    """The queue's rate limit has no token for the claim now: the attempt did
    not start; the operation stays QUEUED. `reserved`: a token due at `until`
    was reserved for it and the record shows it (the store wrote both in the
    claim's guarded step); otherwise nothing was taken and the claim may be
    tried again at `until`."""

    def __init__(self, message: str, *, until: datetime, reserved: bool) -> None:
        super().__init__(message)
        self.until = until
        self.reserved = reserved


def rate_reserved(request: SlotRequest, start: datetime) -> RateLimited:
    return RateLimited(
        f"queue {request.queue!r} is at its rate of {request.rate:g}/s: a token due at "
        f"{start.isoformat()} was reserved",
        until=start,
        reserved=True,
    )


def rate_refused(request: SlotRequest, retry_at: datetime) -> RateLimited:
    return RateLimited(
        f"queue {request.queue!r} is at its rate of {request.rate:g}/s with tokens reserved "
        f"{request.horizon.total_seconds():g}s ahead: none taken; try again at "
        f"{retry_at.isoformat()}",
        until=retry_at,
        reserved=False,
    )


@dataclass(frozen=True, slots=True)
class RateStep:
    """What a claim of a rate-limited queue writes (longrun_core.rate_bucket):
    `record` (the claim, or the record waiting RATE_LIMITED with a token due
    later; its version is the caller's to set) and the bucket's `tat` and
    `start_tat`; `wait` is raised once that is written (None: it started)."""

    record: OperationRecord
    tat: datetime
    start_tat: datetime | None
    wait: RateLimited | None


def rate_step(
    current: OperationRecord,
    claimed: OperationRecord,
    request: SlotRequest,
    tat: datetime | None,
    start_tat: datetime | None,
) -> RateStep:
    """The rate part of `claimed` (the RUNNING record the claim of `current`
    made) given the queue's bucket as read: a token (one reserved for the
    job and still held, or a fresh one), then the start gate. Raises
    RateLimited with nothing to write when no token can be reserved within
    the horizon."""
    assert request.rate is not None
    now = claimed.update_time

    def waiting(until: datetime) -> OperationRecord:
        noted = note_rate_limited(current, now=now, retry_at=until, token_time=until)
        if noted is None:
            # `current` was RUNNING under a lease found lost: the claim took it
            # back first. Nothing is written; the lease check requeues it.
            raise RateLimited(
                f"queue {request.queue!r} has no rate token now for a taken-over "
                "attempt; it is requeued when its lease is found lost",
                until=until,
                reserved=False,
            )
        return noted

    if not holds_token(current.rate_token_time, now):
        taken = take(tat, now, rate=request.rate, burst=request.burst, horizon=request.horizon)
        if isinstance(taken, Refused):
            raise rate_refused(request, taken.retry_at)
        tat = taken.tat
        if taken.start > now:
            return RateStep(
                waiting(taken.start), tat, start_tat, rate_reserved(request, taken.start)
            )
    admitted, when = gate(start_tat, now, rate=request.rate, burst=request.burst)
    if not admitted:  # a token is held: wait for the gate, keeping it
        return RateStep(waiting(when), tat or now, start_tat, rate_reserved(request, when))
    return RateStep(claimed, tat or now, when, None)


class ConcurrencyLimited(Rejected):
    """Every slot of the queue (or of the job's concurrency key) is taken:
    the claim did not happen; the operation stays QUEUED."""

    def __init__(self, message: str, *, full: str) -> None:
        super().__init__(message)
        #: "queue" or "key": which limit was reached.
        self.full = full


def over_limit(request: SlotRequest, running_in_queue: int, running_with_key: int) -> str | None:
    """Which limit a new attempt would exceed ("queue", "key"), given the
    other attempts RUNNING now; None: it may start."""
    if request.queue_limit is not None and running_in_queue >= request.queue_limit:
        return "queue"
    if (
        request.key is not None
        and request.key_limit is not None
        and running_with_key >= request.key_limit
    ):
        return "key"
    return None


def slot_request(
    rec: OperationRecord,
    limits: Mapping[tuple[str, str], ConcurrencyLimits] | None,
    *,
    horizon: timedelta = DEFAULT_HORIZON,
) -> SlotRequest | None:
    """The slot (and rate token) `rec`'s claim needs under its queue's
    `limits` (None: no limit applies)."""
    found = limits.get((rec.project, rec.queue)) if limits else None
    if found is None:
        return None
    key = rec.concurrency_key or None
    key_limit = found.max_concurrent_per_key if key is not None else None
    rate = found.max_dispatches_per_second
    if found.max_concurrent_dispatches is None and key_limit is None and rate is None:
        return None
    return SlotRequest(
        project=rec.project,
        queue=rec.queue,
        key=key,
        queue_limit=found.max_concurrent_dispatches,
        key_limit=key_limit,
        rate=rate,
        burst=effective_burst(rate, found.max_burst_size) if rate is not None else 1,
        horizon=horizon,
    )


class LeaseLost(Rejected):
    """The caller's attempt no longer holds the lease (taken over, cancelled, deleted)."""


_TICK = timedelta(microseconds=1)

#: The lease of a record written before leases recorded their duration.
LEGACY_LEASE = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class LeaseSighting:
    """What one observer has seen of a RUNNING record: it has watched the
    record stay at `version` for `silent_for`, on the observer's own monotonic
    clock. `longrun_core.leases.LeaseObserver` keeps these."""

    version: int
    silent_for: timedelta


def lease_duration(rec: OperationRecord) -> timedelta:
    """How long `rec`'s holder may stay silent before its lease is lost."""
    if rec.lease_duration is not None:
        return rec.lease_duration
    if rec.lease_expire_time is not None:  # written by an older holder: its own figure
        return max(rec.lease_expire_time - rec.update_time, timedelta(0))
    return LEGACY_LEASE


def lease_remaining(rec: OperationRecord, sighting: LeaseSighting | None) -> timedelta:
    """How much longer the observer behind `sighting` must see `rec` unchanged
    before its lease counts as lost; zero when it is lost. A sighting of
    another version (the holder wrote since) starts the count again."""
    duration = lease_duration(rec)
    if sighting is None or sighting.version != rec.version:
        return duration
    return max(duration - sighting.silent_for, timedelta(0))


def _opened(rec: OperationRecord, *, worker: str, now: datetime) -> tuple[AttemptEntry, ...]:
    """The history with the attempt a claim starts now (the claim's number:
    `rec.attempt + 1`) appended, the oldest dropped past MAX_ATTEMPT_HISTORY."""
    entry = AttemptEntry(attempt=rec.attempt + 1, start_time=now, worker=worker)
    return (*rec.attempts, entry)[-MAX_ATTEMPT_HISTORY:]


def _closed(rec: OperationRecord, *, now: datetime, code: int, message: str) -> OperationRecord:
    """`rec` with its running attempt's history entry ended now with `code`
    and `message` (unchanged when the last entry is not open)."""
    if not rec.attempts or rec.attempts[-1].end_time is not None:
        return rec
    last = dataclasses.replace(
        rec.attempts[-1], end_time=now, code=code, message=message[:MAX_ATTEMPT_MESSAGE]
    )
    return evolve(rec, attempts=(*rec.attempts[:-1], last))


def _closed_by_status(
    rec: OperationRecord, *, now: datetime, error: bytes | None
) -> OperationRecord:
    if error is None:
        return _closed(rec, now=now, code=code_pb2.OK, message="")
    status = status_pb2.Status.FromString(error)
    return _closed(rec, now=now, code=status.code, message=status.message)


def status_bytes(code: int, message: str) -> bytes:
    data: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return data


def _finished(
    rec: OperationRecord,
    state: State,
    now: datetime,
    retention: timedelta,
    *,
    response: bytes | None = None,
    error: bytes | None = None,
) -> OperationRecord:
    assert state.done and (response is None) != (error is None)
    return evolve(
        rec,
        state=state,
        response=response,
        error=error,
        end_time=now,
        update_time=now,
        lease_owner=None,
        lease_expire_time=None,
        lease_duration=None,
        dispatch_due_time=None,
        expire_time=now + retention,
    )


def cancelled_error(attempt: int, *, running: bool = True) -> bytes:
    if attempt == 0:
        where = "before it started"
    elif running:
        where = f"during attempt {attempt}"
    else:
        where = f"while waiting to retry after attempt {attempt}"
    return status_bytes(code_pb2.CANCELLED, f"operation cancelled {where}")


def expire_lease(
    rec: OperationRecord,
    now: datetime,
    retention: timedelta,
    *,
    sighting: LeaseSighting | None,
) -> OperationRecord:
    """A RUNNING record whose lease is lost (its worker died: the observer has
    seen no write for the whole lease) goes back to QUEUED for takeover, or
    ends: CANCELLED if a cancel was requested, FAILED if its attempts are used
    up. Raises LeaseHeld while the lease may be live."""
    if rec.done:
        raise AlreadyDone(rec.name)
    if rec.state is not State.RUNNING:
        raise Rejected(f"{rec.name} is {rec.state.name}, not RUNNING")
    remaining = lease_remaining(rec, sighting)
    if remaining > timedelta(0):
        raise LeaseHeld(remaining)
    rec = _closed(
        rec,
        now=now,
        code=code_pb2.ABORTED,
        message="worker lost (lease expired without a heartbeat)",
    )
    if rec.cancel_requested:
        return _finished(rec, State.CANCELLED, now, retention, error=cancelled_error(rec.attempt))
    if rec.attempt >= rec.max_attempts:
        message = (
            f"worker lost during attempt {rec.attempt} of {rec.max_attempts} "
            "(lease expired without a heartbeat); no attempts left"
        )
        return _finished(
            rec, State.FAILED, now, retention, error=status_bytes(code_pb2.ABORTED, message)
        )
    return evolve(
        rec,
        state=State.QUEUED,
        lease_owner=None,
        lease_expire_time=None,
        lease_duration=None,
        dispatch_due_time=now,
        update_time=now,
    )


def claim(
    rec: OperationRecord,
    *,
    worker: str,
    now: datetime,
    lease: timedelta,
    retention: timedelta,
    sighting: LeaseSighting | None = None,
    paused: Collection[tuple[str, str]] = (),
    purge_times: Mapping[tuple[str, str], datetime] | None = None,
    limits: Mapping[tuple[str, str], ConcurrencyLimits] | None = None,
    admitted: bool = False,
    rate_horizon: timedelta = DEFAULT_HORIZON,
) -> OperationRecord:
    """QUEUED -> RUNNING with attempt + 1 and a lease for `worker`; a RUNNING
    record whose lease the caller has seen lapse (`sighting`) is first taken
    back (see `expire_lease`). With no attempts left it ends FAILED instead:
    an operation never runs more than `max_attempts` times. Raises NotDue
    before its `run_after` (schedule time or retry backoff), QueuePaused
    while its (project, queue) is among `paused`. An operation created no
    later than its queue's purge time (`purge_times`) ends CANCELLED instead
    (PurgeQueue's cancel may not have reached it yet). When its queue limits
    concurrency (`limits`), raises SlotRequired unless the caller is the
    store's guarded `claim_slot` (`admitted`), which counts the running
    attempts and takes the rate token (reserving one at most `rate_horizon`
    ahead) in the same transaction."""
    if rec.state is State.RUNNING:
        rec = expire_lease(rec, now, retention, sighting=sighting)
        if rec.done:
            return rec
    if rec.done:
        raise AlreadyDone(rec.name, rec)
    purge_time = purge_times.get((rec.project, rec.queue)) if purge_times else None
    if purge_time is not None and rec.create_time <= purge_time:
        purged = purge(rec, now=now, retention=retention)
        assert purged is not None  # rec is QUEUED here
        return purged
    if rec.attempt >= rec.max_attempts:
        return _finished(rec, State.FAILED, now, retention, error=attempts_used_up(rec))
    if rec.run_after is not None and rec.run_after > now:
        raise NotDue(rec.run_after)
    if (rec.project, rec.queue) in paused:
        raise QueuePaused(f"{rec.name}: queue {rec.queue!r} is paused")
    if not admitted:
        request = slot_request(rec, limits, horizon=rate_horizon)
        if request is not None:
            raise SlotRequired(request)
    return evolve(
        rec,
        state=State.RUNNING,
        wait_reason=WaitReason.NONE,
        attempt=rec.attempt + 1,
        attempts=_opened(rec, worker=worker, now=now),
        start_time=rec.start_time or now,
        lease_owner=worker,
        lease_expire_time=now + lease,
        lease_duration=lease,
        dispatch_due_time=None,
        rate_token_time=None,
        update_time=now,
    )


def attempts_used_up(rec: OperationRecord) -> bytes:
    """The error of an operation claimed with no attempts left, keeping the
    last attempt's error message when there was one."""
    message = (
        f"no attempts left: {rec.attempt} of {rec.max_attempts} attempts were used; "
        "the operation is not run again"
    )
    if rec.error is not None:
        last = status_pb2.Status.FromString(rec.error)
        message += f" (last error: {last.message})"
    return status_bytes(code_pb2.ABORTED, message)


def _check_fence(rec: OperationRecord, worker: str, attempt: int, releases: int) -> None:
    if rec.done:
        raise AlreadyDone(rec.name)
    if (
        rec.state is not State.RUNNING
        or rec.lease_owner != worker
        or rec.attempt != attempt
        or rec.releases != releases
    ):
        raise LeaseLost(f"{rec.name}: attempt {attempt} of {worker} no longer holds the lease")


def renew(
    rec: OperationRecord,
    *,
    worker: str,
    attempt: int,
    now: datetime,
    lease: timedelta,
    progress: tuple[int, str] | None = None,
    releases: int = 0,
) -> OperationRecord:
    """Heartbeat: extend the lease (and record progress). Fenced. Every renew
    is a write (the store advances the version), which is what observers of
    the lease watch for."""
    _check_fence(rec, worker, attempt, releases)
    changes: dict[str, object] = {
        "lease_expire_time": now + lease,
        "lease_duration": lease,
        # Never the same record twice, even from a clock that stood still or
        # went back: each renew must advance the version observers watch.
        "update_time": max(now, rec.update_time + _TICK),
    }
    if progress is not None:
        changes["progress_percent"], changes["progress_message"] = progress
    return evolve(rec, **changes)  # type: ignore[arg-type]


def finish(
    rec: OperationRecord,
    *,
    worker: str,
    attempt: int,
    now: datetime,
    retention: timedelta,
    response: bytes | None = None,
    error: bytes | None = None,
    releases: int = 0,
) -> OperationRecord:
    """Record the outcome of `attempt`. Fenced. An error with code CANCELLED
    after a cancel request ends CANCELLED; other errors end FAILED."""
    _check_fence(rec, worker, attempt, releases)
    rec = _closed_by_status(rec, now=now, error=error)
    if response is not None:
        return _finished(
            evolve(rec, progress_percent=100), State.SUCCEEDED, now, retention, response=response
        )
    assert error is not None
    code = status_pb2.Status.FromString(error).code
    state = State.CANCELLED if rec.cancel_requested and code == code_pb2.CANCELLED else State.FAILED
    return _finished(rec, state, now, retention, error=error)


def retry(
    rec: OperationRecord,
    *,
    worker: str,
    attempt: int,
    now: datetime,
    delay: timedelta,
    error: bytes,
    releases: int = 0,
    attempt_trace: str | None = None,
) -> OperationRecord:
    """A transient failure with attempts left: back to QUEUED, due after `delay`.
    The error is kept (not shown while not done) for the final outcome.
    `attempt_trace` (the failed attempt's span, as a traceparent) is kept as
    the first attempt's unless one is kept already: later attempts link to it."""
    _check_fence(rec, worker, attempt, releases)
    rec = _closed_by_status(rec, now=now, error=error)
    return evolve(
        rec,
        first_attempt_trace=rec.first_attempt_trace or attempt_trace or None,
        state=State.QUEUED,
        error=error,
        lease_owner=None,
        lease_expire_time=None,
        lease_duration=None,
        dispatch_due_time=now + delay,
        run_after=now + delay,
        wait_reason=WaitReason.SCHEDULED,
        update_time=now,
    )


def release(
    rec: OperationRecord,
    *,
    worker: str,
    attempt: int,
    now: datetime,
    retention: timedelta,
    max_releases: int,
    releases: int = 0,
    attempt_trace: str | None = None,
) -> OperationRecord:
    """Graceful shutdown: give the operation back so another worker takes it
    at once. The interrupted attempt is given back too (it was not the task's
    fault), at most `max_releases` times per operation: past that it counts,
    so an operation whose runs keep bringing workers down cannot loop forever,
    and one with no attempts left ends FAILED. Fenced. `attempt_trace`: as
    for `retry`."""
    _check_fence(rec, worker, attempt, releases)
    rec = _closed(rec, now=now, code=code_pb2.ABORTED, message="given back by a worker shutdown")
    requeued = evolve(
        rec,
        first_attempt_trace=rec.first_attempt_trace or attempt_trace or None,
        state=State.QUEUED,
        lease_owner=None,
        lease_expire_time=None,
        lease_duration=None,
        dispatch_due_time=now,
        update_time=now,
    )
    if rec.releases < max_releases:
        return evolve(requeued, attempt=rec.attempt - 1, releases=rec.releases + 1)
    if rec.attempt >= rec.max_attempts:
        message = (
            f"attempt {rec.attempt} of {rec.max_attempts} was interrupted by a worker shutdown "
            f"after {rec.releases} earlier interruptions; no attempts left"
        )
        return _finished(
            rec, State.FAILED, now, retention, error=status_bytes(code_pb2.ABORTED, message)
        )
    return requeued


def request_cancel(
    rec: OperationRecord, *, now: datetime, retention: timedelta
) -> OperationRecord | None:
    """CancelOperation. QUEUED ends CANCELLED at once (it never runs); RUNNING
    gets `cancel_requested` for its handler; a done operation is left as it is."""
    if rec.done or rec.cancel_requested:
        return None
    if rec.state is State.QUEUED:
        return _finished(
            evolve(rec, cancel_requested=True),
            State.CANCELLED,
            now,
            retention,
            error=cancelled_error(rec.attempt, running=False),
        )
    return evolve(rec, cancel_requested=True, update_time=now)


def mark_dispatched(
    rec: OperationRecord, *, now: datetime, redispatch_after: timedelta
) -> OperationRecord | None:
    """The task message was published: the sweeper republishes only if the
    operation is still QUEUED `redispatch_after` from now."""
    if rec.state is not State.QUEUED:
        return None
    start = max(now, rec.run_after) if rec.run_after is not None else now
    return evolve(rec, dispatch_due_time=start + redispatch_after)


def note_paused(rec: OperationRecord, *, now: datetime) -> OperationRecord | None:
    """A worker found the operation's queue paused: show it (JobMetadata
    wait_reason QUEUE_PAUSED) until an attempt starts. Written once."""
    if rec.state is not State.QUEUED or rec.wait_reason is WaitReason.QUEUE_PAUSED:
        return None
    # A reserved rate token is spent: the job takes a fresh one once resumed.
    return evolve(rec, wait_reason=WaitReason.QUEUE_PAUSED, rate_token_time=None, update_time=now)


def note_limited(
    rec: OperationRecord, *, now: datetime, retry_at: datetime
) -> OperationRecord | None:
    """A claim found its queue's (or key's) slots all taken: show it
    (wait_reason CONCURRENCY_LIMITED) and have the dispatcher publish it
    again at `retry_at` (its message is dropped)."""
    if rec.state is not State.QUEUED:
        return None
    return evolve(
        rec,
        wait_reason=WaitReason.CONCURRENCY_LIMITED,
        dispatch_due_time=retry_at,
        rate_token_time=None,  # a reserved rate token is spent (see rate_bucket)
        update_time=now,
    )


def note_rate_limited(
    rec: OperationRecord, *, now: datetime, retry_at: datetime, token_time: datetime | None
) -> OperationRecord | None:
    """A claim found no rate token free now (wait_reason RATE_LIMITED). With
    `token_time`, a token due then was reserved for the job: it may not start
    before it (`run_after`), starts on it without taking another, and is
    published again then by the worker that reserved it (the sweeper at
    `retry_at` if that worker is gone). Without, nothing was taken and the
    dispatcher publishes it again at `retry_at`."""
    if rec.state is not State.QUEUED:
        return None
    if token_time is None:
        return evolve(
            rec,
            wait_reason=WaitReason.RATE_LIMITED,
            dispatch_due_time=retry_at,
            rate_token_time=None,
            update_time=now,
        )
    run_after = token_time if rec.run_after is None else max(rec.run_after, token_time)
    return evolve(
        rec,
        wait_reason=WaitReason.RATE_LIMITED,
        run_after=run_after,
        dispatch_due_time=max(retry_at, token_time + RESERVED_BACKSTOP),
        rate_token_time=token_time,
        update_time=now,
    )


def purge(rec: OperationRecord, *, now: datetime, retention: timedelta) -> OperationRecord | None:
    """PurgeQueue: a QUEUED operation ends CANCELLED (code 1) at once, as if
    cancelled; a running or finished one is left alone."""
    if rec.state is not State.QUEUED:
        return None
    return _finished(
        evolve(rec, cancel_requested=True),
        State.CANCELLED,
        now,
        retention,
        error=status_bytes(code_pb2.CANCELLED, f"operation cancelled: queue {rec.queue!r} purged"),
    )
