"""The operation state machine: every change to an operation is one pure
function here, applied by `OperationStore.update` under compare-and-set.

A function returns the new record, returns None when there is nothing to
change (an idempotent repeat), or raises a `Rejected` subclass telling the
caller why the change does not apply. Writes by a worker are *fenced*: they
apply only while the worker's attempt still holds the lease, so a stale worker
can never overwrite a newer attempt's outcome.

    QUEUED --claim--> RUNNING --finish--> SUCCEEDED | FAILED | CANCELLED
      ^                 |  \\--retry (transient error, attempts left)--> QUEUED
      |                 \\--release (graceful shutdown) / lease expiry--> QUEUED
      \\--cancel--> CANCELLED (a queued operation never runs)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from google.rpc import code_pb2, status_pb2

from longrun_core.model import OperationRecord, State, evolve


class Rejected(Exception):
    """The transition does not apply to the record as it is now."""


class AlreadyDone(Rejected):
    """The operation is finished; nothing more can happen to it."""

    def __init__(self, message: str, record: OperationRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


class LeaseHeld(Rejected):
    """Another attempt holds an unexpired lease (a redelivered duplicate): defer."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"lease held until {until.isoformat()}")
        self.until = until


class NotDue(Rejected):
    """A retry is scheduled for later; a message that arrives early is deferred."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"not due until {until.isoformat()}")
        self.until = until


class LeaseLost(Rejected):
    """The caller's attempt no longer holds the lease (taken over, cancelled, deleted)."""


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


def expire_lease(rec: OperationRecord, now: datetime, retention: timedelta) -> OperationRecord:
    """A RUNNING record whose lease has expired (its worker died) goes back to
    QUEUED for takeover, or ends: CANCELLED if a cancel was requested, FAILED if
    its attempts are used up. Raises if the lease is still live."""
    if rec.done:
        raise AlreadyDone(rec.name)
    if rec.state is not State.RUNNING:
        raise Rejected(f"{rec.name} is {rec.state.name}, not RUNNING")
    if rec.lease_expire_time is not None and rec.lease_expire_time > now:
        raise LeaseHeld(rec.lease_expire_time)
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
) -> OperationRecord:
    """QUEUED -> RUNNING with attempt + 1 and a lease for `worker`; an expired
    RUNNING lease is first taken back (see `expire_lease`)."""
    if rec.state is State.RUNNING:
        rec = expire_lease(rec, now, retention)
        if rec.done:
            return rec
    if rec.done:
        raise AlreadyDone(rec.name, rec)
    if rec.run_after is not None and rec.run_after > now:
        raise NotDue(rec.run_after)
    return evolve(
        rec,
        state=State.RUNNING,
        attempt=rec.attempt + 1,
        start_time=rec.start_time or now,
        lease_owner=worker,
        lease_expire_time=now + lease,
        dispatch_due_time=None,
        update_time=now,
    )


def _check_fence(rec: OperationRecord, worker: str, attempt: int) -> None:
    if rec.done:
        raise AlreadyDone(rec.name)
    if rec.state is not State.RUNNING or rec.lease_owner != worker or rec.attempt != attempt:
        raise LeaseLost(f"{rec.name}: attempt {attempt} of {worker} no longer holds the lease")


def renew(
    rec: OperationRecord,
    *,
    worker: str,
    attempt: int,
    now: datetime,
    lease: timedelta,
    progress: tuple[int, str] | None = None,
) -> OperationRecord:
    """Heartbeat: extend the lease (and record progress). Fenced."""
    _check_fence(rec, worker, attempt)
    changes: dict[str, object] = {"lease_expire_time": now + lease, "update_time": now}
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
) -> OperationRecord:
    """Record the outcome of `attempt`. Fenced. An error with code CANCELLED
    after a cancel request ends CANCELLED; other errors end FAILED."""
    _check_fence(rec, worker, attempt)
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
) -> OperationRecord:
    """A transient failure with attempts left: back to QUEUED, due after `delay`.
    The error is kept (not shown while not done) for the final outcome."""
    _check_fence(rec, worker, attempt)
    return evolve(
        rec,
        state=State.QUEUED,
        error=error,
        lease_owner=None,
        lease_expire_time=None,
        dispatch_due_time=now + delay,
        run_after=now + delay,
        update_time=now,
    )


def release(rec: OperationRecord, *, worker: str, attempt: int, now: datetime) -> OperationRecord:
    """Graceful shutdown: give the operation back so another worker takes it at once."""
    _check_fence(rec, worker, attempt)
    return evolve(
        rec,
        state=State.QUEUED,
        lease_owner=None,
        lease_expire_time=None,
        dispatch_due_time=now,
        update_time=now,
    )


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
