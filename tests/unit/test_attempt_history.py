"""The attempts history (OperationRecord.attempts, JobMetadata.attempts):
opened by a claim, closed by the transition that ends the attempt, bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.rpc import code_pb2

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.model import (
    MAX_ATTEMPT_HISTORY,
    MAX_ATTEMPT_MESSAGE,
    AttemptEntry,
    OperationRecord,
    State,
    attempts_from_text,
    attempts_to_text,
)
from tests.support.clock import FakeClock
from tests.unit.test_transitions import (
    LEASE,
    RETENTION,
    claim,
    finish_ok,
    lapsed,
    new_record,
    release,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def retry(rec: OperationRecord, clock: FakeClock, message: str = "flaky") -> OperationRecord:
    return transitions.retry(
        rec,
        worker=rec.lease_owner or "",
        attempt=rec.attempt,
        now=clock.now(),
        delay=timedelta(0),
        error=transitions.status_bytes(code_pb2.UNAVAILABLE, message),
    )


def test_a_claim_opens_an_entry_and_a_finish_closes_it_ok(clock: FakeClock) -> None:
    started = clock.now()
    running = claim(new_record(clock), clock, worker="w7")
    assert running.attempts == (AttemptEntry(attempt=1, start_time=started, worker="w7"),)

    clock.advance(3)
    done = finish_ok(running, clock, worker="w7")

    (entry,) = done.attempts
    assert (entry.attempt, entry.start_time, entry.end_time) == (1, started, clock.now())
    assert (entry.code, entry.message, entry.worker) == (code_pb2.OK, "", "w7")


def test_retries_and_a_failure_keep_one_entry_per_attempt(clock: FakeClock) -> None:
    rec = new_record(clock)
    rec = retry(claim(rec, clock, worker="a"), clock, "first went wrong")
    clock.advance(1)
    rec = claim(rec, clock, worker="b")
    clock.advance(1)
    failed = transitions.finish(
        rec,
        worker="b",
        attempt=2,
        now=clock.now(),
        retention=RETENTION,
        error=transitions.status_bytes(code_pb2.INVALID_ARGUMENT, "bad input"),
    )

    assert failed.state is State.FAILED
    assert [(a.attempt, a.worker, a.code, a.message) for a in failed.attempts] == [
        (1, "a", code_pb2.UNAVAILABLE, "first went wrong"),
        (2, "b", code_pb2.INVALID_ARGUMENT, "bad input"),
    ]
    assert failed.attempts[1].end_time == clock.now()


def test_a_lost_lease_and_a_shutdown_close_the_entry_aborted(clock: FakeClock) -> None:
    running = claim(new_record(clock), clock)
    clock.advance(LEASE.total_seconds())
    taken = claim(running, clock, worker="w2", sighting=lapsed(running))

    assert [(a.attempt, a.worker, a.code) for a in taken.attempts] == [
        (1, "w1", code_pb2.ABORTED),
        (2, "w2", code_pb2.OK),
    ]
    assert "lease expired" in taken.attempts[0].message
    assert taken.attempts[1].end_time is None

    given_back = release(taken, clock, worker="w2")
    assert given_back.attempts[1].code == code_pb2.ABORTED
    assert "shutdown" in given_back.attempts[1].message


def test_the_history_keeps_the_last_attempts_only(clock: FakeClock) -> None:
    rec = new_record(clock, max_attempts=MAX_ATTEMPT_HISTORY + 5)
    long_message = "x" * (MAX_ATTEMPT_MESSAGE + 50)
    for _ in range(MAX_ATTEMPT_HISTORY + 4):
        rec = retry(claim(rec, clock), clock, long_message)
        clock.advance(1)

    assert len(rec.attempts) == MAX_ATTEMPT_HISTORY
    assert [a.attempt for a in rec.attempts] == list(range(5, MAX_ATTEMPT_HISTORY + 5))
    assert all(len(a.message) == MAX_ATTEMPT_MESSAGE for a in rec.attempts)


def test_the_history_round_trips_through_its_stored_text_and_the_metadata(
    clock: FakeClock,
) -> None:
    rec = retry(claim(new_record(clock), clock, worker="w1"), clock, "once")
    clock.advance(2)
    rec = claim(rec, clock, worker="w2")

    assert attempts_from_text(attempts_to_text(rec.attempts)) == rec.attempts
    assert attempts_to_text(()) is None and attempts_from_text(None) == ()

    md = jobs_pb2.JobMetadata()
    rec.to_operation().metadata.Unpack(md)
    assert [(a.attempt, a.worker, a.code, a.message) for a in md.attempts] == [
        (1, "w1", code_pb2.UNAVAILABLE, "once"),
        (2, "w2", code_pb2.OK, ""),
    ]
    assert md.attempts[0].HasField("end_time") and not md.attempts[1].HasField("end_time")
    assert md.attempts[1].start_time.ToDatetime().timestamp() == clock.now().timestamp()
