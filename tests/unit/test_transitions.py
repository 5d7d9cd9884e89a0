"""The operation state machine (longrun_core.transitions) and the caller's view of a
record (OperationRecord.to_operation), exact to the microsecond via FakeClock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.model import OperationRecord, State, pack
from longrun_core.transitions import (
    AlreadyDone,
    LeaseHeld,
    LeaseLost,
    LeaseSighting,
    NotDue,
    Rejected,
)
from tests.support.clock import FakeClock

LEASE = timedelta(seconds=10)
RETENTION = timedelta(days=30)
REDISPATCH = timedelta(seconds=30)
MAX_RELEASES = 2


def new_record(clock: FakeClock, **changes: object) -> OperationRecord:
    rec = OperationRecord(
        id="op1",
        task="resize",
        params=struct_pb2.Struct().SerializeToString(),
        state=State.QUEUED,
        create_time=clock.now(),
        update_time=clock.now(),
        labels={"team": "a"},
        max_attempts=3,
        dispatch_due_time=clock.now(),
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def claim(
    rec: OperationRecord,
    clock: FakeClock,
    worker: str = "w1",
    sighting: LeaseSighting | None = None,
) -> OperationRecord:
    return transitions.claim(
        rec, worker=worker, now=clock.now(), lease=LEASE, retention=RETENTION, sighting=sighting
    )


def silent(rec: OperationRecord, seconds: float) -> LeaseSighting:
    """An observer has seen `rec` at its version for `seconds`."""
    return LeaseSighting(version=rec.version, silent_for=timedelta(seconds=seconds))


def lapsed(rec: OperationRecord) -> LeaseSighting:
    return silent(rec, LEASE.total_seconds())


def release(
    rec: OperationRecord, clock: FakeClock, worker: str = "w1", max_releases: int = MAX_RELEASES
) -> OperationRecord:
    return transitions.release(
        rec,
        worker=worker,
        attempt=rec.attempt,
        releases=rec.releases,
        now=clock.now(),
        retention=RETENTION,
        max_releases=max_releases,
    )


def response_bytes() -> bytes:
    return pack(struct_pb2.Struct(fields={"ok": struct_pb2.Value(bool_value=True)}))


def error_of(rec: OperationRecord) -> status_pb2.Status:
    assert rec.error is not None
    return status_pb2.Status.FromString(rec.error)


def finish_ok(rec: OperationRecord, clock: FakeClock, worker: str = "w1") -> OperationRecord:
    return transitions.finish(
        rec,
        worker=worker,
        attempt=rec.attempt,
        now=clock.now(),
        retention=RETENTION,
        response=response_bytes(),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- claim ----


def test_claim_moves_queued_to_running_with_a_lease(clock: FakeClock) -> None:
    rec = new_record(clock)
    clock.advance(2)

    running = claim(rec, clock, worker="w1")

    assert running.state is State.RUNNING
    assert running.attempt == 1
    assert running.lease_owner == "w1"
    assert running.lease_expire_time == clock.now() + LEASE
    assert running.lease_duration == LEASE
    assert running.start_time == clock.now()
    assert running.update_time == clock.now()
    assert running.dispatch_due_time is None
    assert not running.done


def test_a_later_claim_keeps_the_first_start_time(clock: FakeClock) -> None:
    first = claim(new_record(clock), clock)
    started = clock.now()
    clock.advance(1)
    queued = release(first, clock)
    clock.advance(1)

    second = claim(queued, clock, worker="w2")

    assert second.attempt == 1  # the released attempt was given back
    assert second.start_time == started
    assert second.lease_owner == "w2"


def test_claim_with_no_attempts_left_ends_failed_instead_of_running(clock: FakeClock) -> None:
    last_error = transitions.status_bytes(code_pb2.UNKNOWN, "SystemExit: 3")
    rec = new_record(clock, attempt=2, max_attempts=2, error=last_error)
    clock.advance(1)

    ended = claim(rec, clock)

    assert ended.state is State.FAILED
    assert ended.attempt == 2  # never 3 of 2
    status = error_of(ended)
    assert status.code == code_pb2.ABORTED
    assert "no attempts left: 2 of 2 attempts were used" in status.message
    assert "last error: SystemExit: 3" in status.message
    assert (ended.end_time, ended.lease_owner) == (clock.now(), None)


@pytest.mark.parametrize("state", [State.SUCCEEDED, State.FAILED, State.CANCELLED])
def test_claim_of_a_done_operation_is_rejected(clock: FakeClock, state: State) -> None:
    rec = new_record(clock, state=state)
    with pytest.raises(AlreadyDone) as info:
        claim(rec, clock)
    assert info.value.record == rec  # so a redelivery can be dead-lettered if it failed


def test_claim_while_another_attempt_holds_a_live_lease_is_deferred_until_it_could_lapse(
    clock: FakeClock,
) -> None:
    running = claim(new_record(clock), clock, worker="w1")

    with pytest.raises(LeaseHeld) as info:
        claim(running, clock, worker="w2")  # never seen before: a whole lease to wait
    assert info.value.remaining == LEASE

    with pytest.raises(LeaseHeld) as info:
        claim(running, clock, worker="w2", sighting=silent(running, 9.999999))
    assert info.value.remaining == timedelta(microseconds=1)
    assert "1e-06s" in str(info.value)


def test_claim_ignores_the_holders_wall_clock(clock: FakeClock) -> None:
    """A holder whose clock is a minute behind wrote a lease_expire_time that is
    long past for everyone else: the lease is still live until an observer has
    seen it silent for the lease."""
    running = claim(new_record(clock), clock, worker="w1")
    behind = replace(running, lease_expire_time=clock.now() - timedelta(seconds=60))
    clock.advance(120)

    with pytest.raises(LeaseHeld):
        claim(behind, clock, worker="w2", sighting=silent(behind, 1))
    assert claim(behind, clock, worker="w2", sighting=lapsed(behind)).lease_owner == "w2"


def test_a_sighting_of_an_older_version_counts_for_nothing(clock: FakeClock) -> None:
    running = replace(claim(new_record(clock), clock, worker="w1"), version=7)
    renewed = replace(running, version=8)  # the holder wrote since

    with pytest.raises(LeaseHeld) as info:
        claim(renewed, clock, worker="w2", sighting=lapsed(running))
    assert info.value.remaining == LEASE


def test_claim_takes_over_a_lapsed_lease_with_the_next_attempt(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock, worker="w1")
    clock.advance(3)

    taken = claim(running, clock, worker="w2", sighting=lapsed(running))  # inclusive

    assert taken.state is State.RUNNING
    assert taken.attempt == 2
    assert taken.lease_owner == "w2"
    assert taken.lease_expire_time == clock.now() + LEASE


def test_claim_of_a_lapsed_lease_with_no_attempts_left_ends_failed(clock: FakeClock) -> None:
    running = claim(new_record(clock, max_attempts=1), clock)
    clock.advance(60)

    ended = claim(running, clock, worker="w2", sighting=lapsed(running))

    assert ended.state is State.FAILED
    assert ended.attempt == 1
    assert error_of(ended).code == code_pb2.ABORTED


def test_claim_of_a_lapsed_lease_after_a_cancel_request_ends_cancelled(
    clock: FakeClock,
) -> None:
    running = claim(new_record(clock), clock)
    asked = transitions.request_cancel(running, now=clock.now(), retention=RETENTION)
    assert asked is not None
    clock.advance(60)

    ended = claim(asked, clock, worker="w2", sighting=lapsed(asked))

    assert ended.state is State.CANCELLED
    assert error_of(ended).code == code_pb2.CANCELLED


def test_claim_before_run_after_is_not_due(clock: FakeClock) -> None:
    rec = new_record(clock, run_after=clock.now() + timedelta(seconds=5))
    clock.advance(4.999999)

    with pytest.raises(NotDue) as info:
        claim(rec, clock)

    assert info.value.until == rec.run_after
    clock.advance(0.000001)
    assert claim(rec, clock).state is State.RUNNING


# ---- renew ----


def test_renew_extends_the_lease_and_records_progress(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(3)

    renewed = transitions.renew(
        running, worker="w1", attempt=1, now=clock.now(), lease=LEASE, progress=(40, "resizing")
    )

    assert renewed.lease_expire_time == clock.now() + LEASE
    assert renewed.lease_duration == LEASE
    assert renewed.update_time == clock.now()
    assert (renewed.progress_percent, renewed.progress_message) == (40, "resizing")
    assert renewed.state is State.RUNNING


def test_every_renew_changes_the_record_even_if_the_clock_stood_still(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)  # no clock.advance: the same instant

    once = transitions.renew(running, worker="w1", attempt=1, now=clock.now(), lease=LEASE)
    twice = transitions.renew(once, worker="w1", attempt=1, now=clock.now(), lease=LEASE)

    assert running != once != twice  # so the store writes (and versions) each one
    assert once.update_time == clock.now() + timedelta(microseconds=1)
    assert twice.update_time == clock.now() + timedelta(microseconds=2)
    earlier = clock.now() - timedelta(seconds=30)  # a clock stepped back
    assert transitions.renew(
        twice, worker="w1", attempt=1, now=earlier, lease=LEASE
    ).update_time == twice.update_time + timedelta(microseconds=1)


def test_renew_without_progress_keeps_the_last_progress(clock: FakeClock) -> None:
    running = replace(claim(new_record(clock), clock), progress_percent=7, progress_message="x")
    clock.advance(1)

    renewed = transitions.renew(running, worker="w1", attempt=1, now=clock.now(), lease=LEASE)

    assert (renewed.progress_percent, renewed.progress_message) == (7, "x")
    assert renewed.lease_expire_time == clock.now() + LEASE


# ---- fencing: every worker write applies only while its attempt holds the lease ----


def _worker_writes(
    clock: FakeClock, worker: str, attempt: int, releases: int = 0
) -> dict[str, Callable[[OperationRecord], OperationRecord]]:
    err = transitions.status_bytes(code_pb2.UNAVAILABLE, "flaky")
    w, a, n = worker, attempt, releases
    return {
        "renew": lambda r: transitions.renew(
            r, worker=w, attempt=a, releases=n, now=clock.now(), lease=LEASE
        ),
        "finish": lambda r: transitions.finish(
            r,
            worker=w,
            attempt=a,
            releases=n,
            now=clock.now(),
            retention=RETENTION,
            response=response_bytes(),
        ),
        "fail": lambda r: transitions.finish(
            r, worker=w, attempt=a, releases=n, now=clock.now(), retention=RETENTION, error=err
        ),
        "retry": lambda r: transitions.retry(
            r,
            worker=w,
            attempt=a,
            releases=n,
            now=clock.now(),
            delay=timedelta(seconds=1),
            error=err,
        ),
        "release": lambda r: transitions.release(
            r,
            worker=w,
            attempt=a,
            releases=n,
            now=clock.now(),
            retention=RETENTION,
            max_releases=MAX_RELEASES,
        ),
    }


WRITES = ["renew", "finish", "fail", "retry", "release"]


@pytest.mark.parametrize("write", WRITES)
def test_a_write_by_another_worker_is_lease_lost(clock: FakeClock, write: str) -> None:
    running = claim(new_record(clock), clock, worker="w1")
    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w2", 1)[write](running)


@pytest.mark.parametrize("write", WRITES)
def test_a_write_for_another_attempt_is_lease_lost(clock: FakeClock, write: str) -> None:
    running = claim(new_record(clock), clock, worker="w1")
    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w1", 2)[write](running)


@pytest.mark.parametrize("write", WRITES)
def test_a_write_to_a_queued_operation_is_lease_lost(clock: FakeClock, write: str) -> None:
    running = replace(claim(new_record(clock), clock, worker="w1"), attempt=2, max_attempts=3)
    released = release(running, clock)
    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w1", 2)[write](released)
    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w1", 1, releases=1)[write](released)


@pytest.mark.parametrize("write", WRITES)
def test_a_write_to_a_done_operation_is_rejected_as_already_done(
    clock: FakeClock, write: str
) -> None:
    running = claim(new_record(clock), clock, worker="w1")
    done = finish_ok(running, clock)
    with pytest.raises(AlreadyDone):
        _worker_writes(clock, "w1", 1)[write](done)


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("same_worker", [False, True], ids=["other_worker", "same_worker"])
def test_a_stale_attempt_can_never_write_after_a_takeover(
    clock: FakeClock, write: str, same_worker: bool
) -> None:
    stale = claim(new_record(clock), clock, worker="w1")
    clock.advance(LEASE.total_seconds() + 1)
    new_owner = "w1" if same_worker else "w2"
    current = claim(stale, clock, worker=new_owner, sighting=lapsed(stale))  # attempt 2

    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w1", 1)[write](current)
    # ... while the new attempt's writes apply.
    clock.advance(1)
    assert _worker_writes(clock, new_owner, 2)[write](current) != current


@pytest.mark.parametrize("write", WRITES)
def test_a_stale_claim_cannot_write_after_a_release_and_a_new_claim_by_the_same_worker(
    clock: FakeClock, write: str
) -> None:
    """Release gives the attempt back, so the next claim has the same attempt
    number and owner: the release count tells the two claims apart."""
    stale = claim(new_record(clock), clock, worker="w1")
    current = claim(release(stale, clock), clock, worker="w1")
    assert (current.lease_owner, current.attempt) == (stale.lease_owner, stale.attempt)

    with pytest.raises(LeaseLost):
        _worker_writes(clock, "w1", 1, releases=0)[write](current)
    clock.advance(1)
    assert _worker_writes(clock, "w1", 1, releases=1)[write](current) != current


# ---- leases ----


def test_lease_remaining_counts_down_on_the_observers_clock_only(clock: FakeClock) -> None:
    running = replace(claim(new_record(clock), clock), version=3)

    assert transitions.lease_remaining(running, None) == LEASE
    assert transitions.lease_remaining(running, silent(running, 4)) == timedelta(seconds=6)
    assert transitions.lease_remaining(running, silent(running, 11)) == timedelta(0)
    other = LeaseSighting(version=2, silent_for=timedelta(seconds=11))
    assert transitions.lease_remaining(running, other) == LEASE


def test_lease_duration_of_a_record_from_before_durations_were_kept(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    legacy = replace(
        running,
        lease_duration=None,
        lease_expire_time=running.update_time + timedelta(seconds=25),
    )
    assert transitions.lease_duration(legacy) == timedelta(seconds=25)
    unknown = replace(legacy, lease_expire_time=None)
    assert transitions.lease_duration(unknown) == transitions.LEGACY_LEASE


# ---- expire_lease ----


def test_expire_lease_requeues_when_attempts_are_left(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(LEASE.total_seconds())

    queued = transitions.expire_lease(running, clock.now(), RETENTION, sighting=lapsed(running))

    assert queued.state is State.QUEUED
    assert queued.attempt == 1
    assert queued.lease_owner is None
    assert queued.lease_expire_time is None
    assert queued.lease_duration is None
    assert queued.dispatch_due_time == clock.now()
    assert queued.update_time == clock.now()
    assert queued.error is None


def test_expire_lease_fails_when_attempts_are_used_up(clock: FakeClock) -> None:
    rec = new_record(clock, max_attempts=2)
    first = claim(rec, clock)
    rec = transitions.expire_lease(first, clock.now(), RETENTION, sighting=lapsed(first))
    running = claim(rec, clock, worker="w2")
    clock.advance(LEASE.total_seconds() + 5)

    failed = transitions.expire_lease(running, clock.now(), RETENTION, sighting=lapsed(running))

    assert failed.state is State.FAILED
    status = error_of(failed)
    assert status.code == code_pb2.ABORTED
    assert "attempt 2 of 2" in status.message
    assert "attempts left" in status.message
    assert failed.end_time == clock.now()
    assert failed.expire_time == clock.now() + RETENTION
    assert failed.lease_owner is None
    assert failed.response is None


def test_expire_lease_ends_cancelled_when_a_cancel_was_requested(clock: FakeClock) -> None:
    running = claim(new_record(clock, max_attempts=1), clock)
    asked = transitions.request_cancel(running, now=clock.now(), retention=RETENTION)
    assert asked is not None
    clock.advance(LEASE.total_seconds())

    ended = transitions.expire_lease(asked, clock.now(), RETENTION, sighting=lapsed(asked))

    assert ended.state is State.CANCELLED
    status = error_of(ended)
    assert status.code == code_pb2.CANCELLED == 1
    assert "during attempt 1" in status.message


def test_expire_lease_of_a_live_lease_is_lease_held(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(1000)  # the wall clock decides nothing
    with pytest.raises(LeaseHeld) as info:
        transitions.expire_lease(running, clock.now(), RETENTION, sighting=silent(running, 1))
    assert info.value.remaining == timedelta(seconds=9)
    with pytest.raises(LeaseHeld):
        transitions.expire_lease(running, clock.now(), RETENTION, sighting=None)


def test_expire_lease_rejects_queued_and_done_records(clock: FakeClock) -> None:
    queued = new_record(clock)
    with pytest.raises(Rejected) as info:
        transitions.expire_lease(queued, clock.now(), RETENTION, sighting=lapsed(queued))
    assert not isinstance(info.value, (AlreadyDone, LeaseHeld, NotDue, LeaseLost))
    assert "QUEUED" in str(info.value)

    done = finish_ok(claim(queued, clock), clock)
    with pytest.raises(AlreadyDone):
        transitions.expire_lease(done, clock.now(), RETENTION, sighting=lapsed(done))


# ---- finish ----


def test_finish_with_a_response_succeeds(clock: FakeClock) -> None:
    running = replace(claim(new_record(clock), clock), progress_percent=30)
    clock.advance(2)

    done = finish_ok(running, clock)

    assert done.state is State.SUCCEEDED
    assert done.response == response_bytes()
    assert done.error is None
    assert done.progress_percent == 100
    assert done.end_time == clock.now()
    assert done.expire_time == clock.now() + RETENTION
    assert done.lease_owner is None
    assert done.lease_expire_time is None
    assert done.dispatch_due_time is None


def test_success_after_a_retried_attempt_drops_the_earlier_error(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    queued = transitions.retry(
        running,
        worker="w1",
        attempt=1,
        now=clock.now(),
        delay=timedelta(0),
        error=transitions.status_bytes(code_pb2.UNAVAILABLE, "flaky"),
    )
    done = finish_ok(claim(queued, clock), clock)

    assert done.state is State.SUCCEEDED
    assert done.error is None
    assert done.to_operation().WhichOneof("result") == "response"


@pytest.mark.parametrize(
    ("cancel_requested", "code", "expected"),
    [
        (True, code_pb2.CANCELLED, State.CANCELLED),
        (True, code_pb2.INTERNAL, State.FAILED),
        (False, code_pb2.CANCELLED, State.FAILED),
        (False, code_pb2.UNKNOWN, State.FAILED),
    ],
)
def test_finish_with_an_error_ends_cancelled_only_for_a_requested_cancel(
    clock: FakeClock, cancel_requested: bool, code: int, expected: State
) -> None:
    running = claim(new_record(clock), clock)
    if cancel_requested:
        asked = transitions.request_cancel(running, now=clock.now(), retention=RETENTION)
        assert asked is not None
        running = asked
    error = transitions.status_bytes(code, "stopped")

    done = transitions.finish(
        running, worker="w1", attempt=1, now=clock.now(), retention=RETENTION, error=error
    )

    assert done.state is expected
    assert done.error == error
    assert done.response is None


# ---- retry ----


def test_retry_requeues_with_a_backoff_that_claim_respects(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    err = transitions.status_bytes(code_pb2.UNAVAILABLE, "flaky")
    delay = timedelta(seconds=4)

    queued = transitions.retry(
        running, worker="w1", attempt=1, now=clock.now(), delay=delay, error=err
    )

    assert queued.state is State.QUEUED
    assert queued.attempt == 1
    assert queued.error == err
    assert queued.run_after == clock.now() + delay
    assert queued.dispatch_due_time == clock.now() + delay
    assert queued.lease_owner is None
    assert queued.lease_expire_time is None
    assert not queued.to_operation().done
    assert queued.to_operation().WhichOneof("result") is None  # the error is kept, not shown

    clock.advance(3.5)
    with pytest.raises(NotDue) as info:
        claim(queued, clock, worker="w2")
    assert info.value.until == queued.run_after

    clock.advance(0.5)
    assert claim(queued, clock, worker="w2").attempt == 2


# ---- release ----


def test_release_gives_the_operation_back_for_an_immediate_claim(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(1)

    released = release(running, clock)

    assert released.state is State.QUEUED
    assert released.lease_owner is None
    assert released.lease_expire_time is None
    assert released.lease_duration is None
    assert released.dispatch_due_time == clock.now()
    assert (released.attempt, released.releases) == (0, 1)  # the attempt was given back
    assert claim(released, clock, worker="w2").lease_owner == "w2"


def test_release_gives_attempts_back_only_max_releases_times(clock: FakeClock) -> None:
    rec = new_record(clock, max_attempts=2)
    for released in range(1, MAX_RELEASES + 1):
        rec = release(claim(rec, clock), clock)
        assert (rec.state, rec.attempt, rec.releases) == (State.QUEUED, 0, released)

    rec = release(claim(rec, clock), clock)  # this interruption counts
    assert (rec.state, rec.attempt, rec.releases) == (State.QUEUED, 1, MAX_RELEASES)

    last = release(claim(rec, clock), clock)  # and this one was the last attempt
    assert last.state is State.FAILED
    assert last.attempt == 2
    status = error_of(last)
    assert status.code == code_pb2.ABORTED
    assert "attempt 2 of 2 was interrupted by a worker shutdown" in status.message
    assert f"after {MAX_RELEASES} earlier interruptions; no attempts left" in status.message


def test_a_release_loop_ends_after_max_attempts_plus_max_releases_claims(
    clock: FakeClock,
) -> None:
    """A task whose every run brings its worker down gracefully: the
    operation ends FAILED after a bounded number of runs."""
    rec = new_record(clock, max_attempts=3)
    runs = 0
    while not rec.done:
        rec = claim(rec, clock)
        if rec.done:
            break
        runs += 1
        assert rec.attempt <= rec.max_attempts
        rec = release(rec, clock)
    assert rec.state is State.FAILED
    assert runs == 3 + MAX_RELEASES


# ---- request_cancel ----


def test_cancel_of_a_queued_operation_ends_it_at_once(clock: FakeClock) -> None:
    rec = new_record(clock)
    clock.advance(1)

    cancelled = transitions.request_cancel(rec, now=clock.now(), retention=RETENTION)

    assert cancelled is not None
    assert cancelled.done
    assert cancelled.state is State.CANCELLED
    assert cancelled.cancel_requested
    status = error_of(cancelled)
    assert status.code == 1
    assert "before it started" in status.message
    assert cancelled.end_time == clock.now()
    assert cancelled.expire_time == clock.now() + RETENTION
    assert cancelled.dispatch_due_time is None
    with pytest.raises(AlreadyDone):
        claim(cancelled, clock)


def test_cancel_of_a_running_operation_only_asks_its_handler(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(1)

    asked = transitions.request_cancel(running, now=clock.now(), retention=RETENTION)

    assert asked is not None
    assert asked.cancel_requested
    assert asked.state is State.RUNNING
    assert asked.error is None
    assert asked.end_time is None
    assert asked.lease_owner == "w1"
    assert asked.lease_expire_time == running.lease_expire_time
    assert asked.update_time == clock.now()


def test_cancel_of_a_done_operation_or_a_repeated_cancel_changes_nothing(
    clock: FakeClock,
) -> None:
    done = finish_ok(claim(new_record(clock), clock), clock)
    assert transitions.request_cancel(done, now=clock.now(), retention=RETENTION) is None

    asked = transitions.request_cancel(
        claim(new_record(clock), clock), now=clock.now(), retention=RETENTION
    )
    assert asked is not None
    assert transitions.request_cancel(asked, now=clock.now(), retention=RETENTION) is None

    cancelled = transitions.request_cancel(new_record(clock), now=clock.now(), retention=RETENTION)
    assert cancelled is not None
    assert transitions.request_cancel(cancelled, now=clock.now(), retention=RETENTION) is None


# ---- mark_dispatched ----


def test_mark_dispatched_pushes_the_redispatch_time(clock: FakeClock) -> None:
    rec = new_record(clock)
    clock.advance(1)

    marked = transitions.mark_dispatched(rec, now=clock.now(), redispatch_after=REDISPATCH)

    assert marked is not None
    assert marked.dispatch_due_time == clock.now() + REDISPATCH
    assert marked.state is State.QUEUED


def test_mark_dispatched_counts_from_the_end_of_a_retry_backoff(clock: FakeClock) -> None:
    run_after = clock.now() + timedelta(seconds=20)
    rec = new_record(clock, run_after=run_after)

    marked = transitions.mark_dispatched(rec, now=clock.now(), redispatch_after=REDISPATCH)
    assert marked is not None
    assert marked.dispatch_due_time == run_after + REDISPATCH

    clock.advance(25)  # a past run_after no longer matters
    marked = transitions.mark_dispatched(rec, now=clock.now(), redispatch_after=REDISPATCH)
    assert marked is not None
    assert marked.dispatch_due_time == clock.now() + REDISPATCH


def test_mark_dispatched_leaves_running_and_done_operations_alone(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    done = finish_ok(running, clock)
    for rec in (running, done):
        assert (
            transitions.mark_dispatched(rec, now=clock.now(), redispatch_after=REDISPATCH) is None
        )


# ---- to_operation ----


def test_state_values_match_the_proto_enum() -> None:
    proto_names = {v.name for v in jobs_pb2.JobMetadata.State.DESCRIPTOR.values if v.number != 0}
    assert proto_names == {s.name for s in State}
    for state in State:
        assert jobs_pb2.JobMetadata.State.Value(state.name) == state.value


def test_to_operation_of_a_running_operation(clock: FakeClock) -> None:
    running = replace(
        claim(new_record(clock), clock), progress_percent=12, progress_message="working"
    )

    op = running.to_operation()

    assert op.name == "projects/default/operations/op1"
    assert not op.done
    assert op.WhichOneof("result") is None
    md = jobs_pb2.JobMetadata()
    assert op.metadata.Unpack(md)
    assert jobs_pb2.JobMetadata.State.Name(md.state) == "RUNNING"
    assert md.task == "resize"
    assert (md.attempt, md.max_attempts) == (1, 3)
    assert (md.progress_percent, md.progress_message) == (12, "working")
    assert dict(md.labels) == {"team": "a"}
    assert md.start_time.ToDatetime(tzinfo=clock.now().tzinfo) == clock.now()
    assert md.HasField("create_time")
    assert not md.HasField("end_time")
    assert not md.HasField("expire_time")


def test_to_operation_of_a_succeeded_operation_carries_the_response(clock: FakeClock) -> None:
    done = finish_ok(claim(new_record(clock), clock), clock)

    op = done.to_operation()

    assert op.done
    assert op.WhichOneof("result") == "response"
    result = struct_pb2.Struct()
    assert op.response.Unpack(result)
    assert result["ok"] is True
    md = jobs_pb2.JobMetadata()
    assert op.metadata.Unpack(md)
    assert jobs_pb2.JobMetadata.State.Name(md.state) == "SUCCEEDED"
    assert md.end_time.ToDatetime(tzinfo=clock.now().tzinfo) == clock.now()
    assert md.expire_time.ToDatetime(tzinfo=clock.now().tzinfo) == clock.now() + RETENTION


def test_to_operation_of_a_cancelled_operation_carries_the_error(clock: FakeClock) -> None:
    cancelled = transitions.request_cancel(new_record(clock), now=clock.now(), retention=RETENTION)
    assert cancelled is not None

    op = cancelled.to_operation()

    assert op.done
    assert op.WhichOneof("result") == "error"
    assert op.error.code == 1
    md = jobs_pb2.JobMetadata()
    assert op.metadata.Unpack(md)
    assert jobs_pb2.JobMetadata.State.Name(md.state) == "CANCELLED"
    assert md.cancel_requested


def test_to_operation_of_a_done_record_without_outcome_still_reports_an_error(
    clock: FakeClock,
) -> None:
    broken = new_record(clock, state=State.SUCCEEDED)  # no transition stores this

    op = broken.to_operation()

    assert op.done
    assert op.WhichOneof("result") == "error"
    assert op.error.code == code_pb2.INTERNAL


# ---- any sequence of transitions keeps the record's invariants ----

ACTIONS = st.sampled_from(
    [
        "advance",
        "claim_a",
        "claim_b",
        "renew_a",
        "renew_b",
        "finish_a",
        "finish_b",
        "fail_a",
        "retry_a",
        "retry_b",
        "release_a",
        "release_b",
        "takeover_b",
        "cancel",
        "expire",
        "dispatched",
    ]
)


def _apply(action: str, rec: OperationRecord, clock: FakeClock) -> OperationRecord | None:
    if action == "advance":
        clock.advance(4)
        return None
    if action == "cancel":
        return transitions.request_cancel(rec, now=clock.now(), retention=RETENTION)
    if action == "expire":
        return transitions.expire_lease(rec, clock.now(), RETENTION, sighting=lapsed(rec))
    if action == "dispatched":
        return transitions.mark_dispatched(rec, now=clock.now(), redispatch_after=REDISPATCH)
    verb, who = action.split("_")
    worker = {"a": "wa", "b": "wb"}[who]
    if verb == "claim":
        return claim(rec, clock, worker=worker)
    if verb == "takeover":
        return claim(rec, clock, worker=worker, sighting=lapsed(rec))
    # A worker writes for the claim it last made; a stale one keeps its old numbers.
    if rec.lease_owner == worker:
        attempt, releases = rec.attempt, rec.releases
    else:
        attempt, releases = max(rec.attempt - 1, 1), max(rec.releases - 1, 0)
    writes = _worker_writes(clock, worker, attempt, releases)
    return writes["finish" if verb == "finish" else verb](rec)


def _check_invariants(rec: OperationRecord) -> None:
    op = rec.to_operation()
    assert op.done == rec.done
    if rec.done:
        assert (rec.response is None) != (rec.error is None)
        assert op.WhichOneof("result") in ("response", "error")
        assert rec.end_time is not None
        assert rec.expire_time is not None
        assert rec.lease_owner is None
        assert rec.dispatch_due_time is None
        if rec.state is State.CANCELLED:
            assert error_of(rec).code == code_pb2.CANCELLED
    else:
        assert op.WhichOneof("result") is None
        assert rec.end_time is None
    if rec.state is State.RUNNING:
        assert rec.lease_owner is not None
        assert rec.lease_expire_time is not None
        assert rec.lease_duration is not None
        assert rec.attempt >= 1
    assert 0 <= rec.attempt <= rec.max_attempts
    assert 0 <= rec.releases <= MAX_RELEASES
    if rec.state is State.QUEUED:
        assert rec.lease_owner is None
    md = jobs_pb2.JobMetadata()
    assert op.metadata.Unpack(md)
    assert jobs_pb2.JobMetadata.State.Name(md.state) == rec.state.name


@settings(max_examples=300, database=None, deadline=None)
@given(st.lists(ACTIONS, max_size=30))
def test_any_sequence_of_transitions_keeps_the_invariants(actions: list[str]) -> None:
    clock = FakeClock()
    rec = new_record(clock)
    for action in actions:
        before = rec
        try:
            new = _apply(action, rec, clock)
        except Rejected:
            continue
        if new is not None:
            assert not before.done, f"{action} changed a finished operation"
            # attempt + releases counts the claims: never goes back, one up per claim.
            claimed = action.split("_")[0] in ("claim", "takeover") and not new.done
            grew = (new.attempt + new.releases) - (before.attempt + before.releases)
            assert grew == (1 if claimed else 0), action
            if action.split("_")[0] in ("renew", "finish", "fail", "retry", "release"):
                owner = {"a": "wa", "b": "wb"}[action[-1]]
                assert before.state is State.RUNNING
                assert before.lease_owner == owner, f"{action} applied without the lease"
            rec = new
        _check_invariants(rec)
