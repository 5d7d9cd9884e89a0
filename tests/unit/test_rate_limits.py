"""Rate limits, the pure parts: the token bucket arithmetic
(longrun_core.rate_bucket, with the clock passed in), the bounds and update
masks of rate_limits.max_dispatches_per_second / max_burst_size, which
claims need the store's guarded step, the RATE_LIMITED note, and the proto
conversion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from longrun.v1 import jobs_pb2, queues_pb2
from longrun_core import transitions
from longrun_core.errors import InvalidArgument
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.queues import ConcurrencyLimits, QueueConfig, RetryConfig, apply_update
from longrun_core.rate_bucket import (
    RESERVED_BACKSTOP,
    STALE_CLAIM_SLACK,
    TOKEN_GRACE,
    Granted,
    Refused,
    effective_burst,
    gate,
    holds_token,
    take,
    tokens,
)
from longrun_server.queue_messages import limits_of, queue_message

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
HORIZON = timedelta(seconds=60)


def take_many(
    n: int, now: datetime, tat: datetime | None, *, rate: float = 20, burst: int = 5
) -> tuple[list[datetime], datetime | None]:
    starts: list[datetime] = []
    for _ in range(n):
        got = take(tat, now, rate=rate, burst=burst, horizon=HORIZON)
        assert isinstance(got, Granted)
        starts.append(got.start)
        tat = got.tat
    return starts, tat


# ---- the bucket ----


def test_a_full_bucket_gives_the_burst_at_once_then_one_token_per_interval() -> None:
    starts, tat = take_many(8, T0, None)
    assert starts[:5] == [T0] * 5
    assert starts[5:] == [T0 + 50 * MS, T0 + 100 * MS, T0 + 150 * MS]
    assert tat == T0 + 8 * 50 * MS


def test_refill_is_lazy_from_elapsed_time_and_capped_at_the_burst() -> None:
    _, tat = take_many(5, T0, None)
    assert tokens(tat, T0, rate=20, burst=5) == pytest.approx(0)
    assert tokens(tat, T0 + 120 * MS, rate=20, burst=5) == pytest.approx(2.4)
    # 120 ms later two whole tokens are back: two start at once, the third waits.
    starts, tat = take_many(3, T0 + 120 * MS, tat)
    assert starts == [T0 + 120 * MS, T0 + 120 * MS, T0 + 150 * MS]
    # Idle for an hour: never more than the burst.
    later = T0 + timedelta(hours=1)
    assert tokens(tat, later, rate=20, burst=5) == 5
    starts, _ = take_many(6, later, tat)
    assert starts == [later] * 5 + [later + 50 * MS]


@pytest.mark.parametrize(("rate", "burst"), [(20, 5), (3.5, 1), (500, 500), (0.5, 2)])
def test_no_window_holds_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int
) -> None:
    """A backlog claimed three times as fast as the rate: every start
    window of one second holds at most rate + burst starts, every 5 s window
    at most 5 * rate + burst, and the long-run rate is the rate."""
    tat: datetime | None = None
    starts: list[datetime] = []
    now = T0
    for _ in range(int(rate * 12) + burst):
        got = take(tat, now, rate=rate, burst=burst, horizon=timedelta(hours=1))
        assert isinstance(got, Granted)
        assert got.start >= now
        starts.append(got.start)
        tat = got.tat
        now += timedelta(seconds=1 / (3 * rate))
    for window in (1.0, 5.0):
        span = timedelta(seconds=window)
        most = max(sum(1 for s in starts if a <= s < a + span) for a in starts)
        assert most <= int(rate * window) + burst
    last = starts[-1] - starts[0]
    assert (len(starts) - burst) / last.total_seconds() == pytest.approx(rate, rel=0.01)


def test_past_the_horizon_nothing_is_taken() -> None:
    _, tat = take_many(5, T0, None, rate=1, burst=5)
    short = timedelta(seconds=2)
    first = take(tat, T0, rate=1, burst=5, horizon=short)
    assert isinstance(first, Granted) and first.start == T0 + timedelta(seconds=1)
    second = take(first.tat, T0, rate=1, burst=5, horizon=short)
    assert isinstance(second, Granted) and second.start == T0 + timedelta(seconds=2)
    refused = take(second.tat, T0, rate=1, burst=5, horizon=short)
    assert refused == Refused(retry_at=T0 + timedelta(seconds=1))


def test_a_bucket_far_ahead_of_any_take_is_reset_not_obeyed() -> None:
    """A clock that jumped back (or a skewed writer) cannot stall the queue."""
    wild = T0 + timedelta(days=1)
    got = take(wild, T0, rate=20, burst=5, horizon=HORIZON)
    assert got == Granted(start=T0, tat=T0 + 50 * MS)
    just_beyond = T0 + HORIZON + 5 * 50 * MS + STALE_CLAIM_SLACK + MS
    got = take(just_beyond, T0, rate=20, burst=5, horizon=HORIZON)
    assert got == Granted(start=T0, tat=T0 + 50 * MS)
    # Within what takes can write (horizon + burst intervals ahead), it is obeyed.
    near = T0 + HORIZON
    kept = take(near, T0, rate=20, burst=5, horizon=HORIZON)
    assert isinstance(kept, Granted) and kept.start == near + 50 * MS - 5 * 50 * MS


def test_a_reserved_token_holds_until_its_grace_is_over() -> None:
    token = T0 + 50 * MS
    assert holds_token(token, token)
    assert holds_token(token, token + TOKEN_GRACE)
    assert not holds_token(token, token + TOKEN_GRACE + MS)
    assert not holds_token(None, token)


def test_an_unset_burst_is_one_seconds_worth() -> None:
    assert effective_burst(20, None) == 20
    assert effective_burst(0.5, None) == 1
    assert effective_burst(2.5, None) == 3
    assert effective_burst(20, 5) == 5


# ---- bounds, masks, proto ----


@pytest.mark.parametrize(
    ("limits", "text"),
    [
        (ConcurrencyLimits(max_dispatches_per_second=500.5), "max_dispatches_per_second"),
        (ConcurrencyLimits(max_dispatches_per_second=-1), "max_dispatches_per_second"),
        (ConcurrencyLimits(max_dispatches_per_second=float("nan")), "max_dispatches_per_second"),
        (ConcurrencyLimits(max_dispatches_per_second=float("inf")), "max_dispatches_per_second"),
        (ConcurrencyLimits(max_dispatches_per_second=5, max_burst_size=501), "max_burst_size"),
        (ConcurrencyLimits(max_dispatches_per_second=5, max_burst_size=-2), "max_burst_size"),
        (ConcurrencyLimits(max_burst_size=5), "needs rate_limits.max_dispatches_per_second"),
    ],
)
def test_rate_limits_out_of_bounds_are_invalid(limits: ConcurrencyLimits, text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        limits.check()
    assert text in str(caught.value)
    assert caught.value.reason == "QUEUE_CONFIG_INVALID"


def test_rate_limits_at_the_bounds_are_valid() -> None:
    ConcurrencyLimits(max_dispatches_per_second=500, max_burst_size=500).check()
    ConcurrencyLimits(max_dispatches_per_second=0.001, max_burst_size=1).check()


def config(**limits: object) -> QueueConfig:
    return QueueConfig(
        project="billing",
        queue_id="api",
        create_time=T0,
        update_time=T0,
        limits=ConcurrencyLimits(**limits),  # type: ignore[arg-type]
    )


def test_a_mask_path_of_the_rate_changes_only_that_field() -> None:
    current = config(max_concurrent_dispatches=3, max_dispatches_per_second=10, max_burst_size=4)
    asked = ConcurrencyLimits(max_dispatches_per_second=20, max_burst_size=9)
    later = T0 + timedelta(seconds=5)
    new = apply_update(
        current, RetryConfig(), ["rate_limits.max_dispatches_per_second"], later, asked
    )
    assert new.limits == ConcurrencyLimits(
        max_concurrent_dispatches=3, max_dispatches_per_second=20, max_burst_size=4
    )
    burst = apply_update(current, RetryConfig(), ["rate_limits.max_burst_size"], later, asked)
    assert burst.limits.max_burst_size == 9 and burst.limits.max_dispatches_per_second == 10


def test_an_update_out_of_bounds_or_leaving_a_burst_without_rate_is_refused() -> None:
    current = config(max_dispatches_per_second=10, max_burst_size=4)
    with pytest.raises(InvalidArgument, match="max_dispatches_per_second"):
        apply_update(
            current,
            RetryConfig(),
            ["rate_limits.max_dispatches_per_second"],
            T0,
            ConcurrencyLimits(max_dispatches_per_second=600),
        )
    with pytest.raises(InvalidArgument, match=r"needs rate_limits\.max_dispatches_per_second"):
        apply_update(
            current,
            RetryConfig(),
            ["rate_limits.max_dispatches_per_second"],
            T0,
            ConcurrencyLimits(),
        )
    cleared = apply_update(current, RetryConfig(), ["rate_limits"], T0, ConcurrencyLimits())
    assert not cleared.limits.any


def test_proto_rate_limits_round_trip_and_zero_means_unset() -> None:
    message = queues_pb2.RateLimits(max_dispatches_per_second=20, max_burst_size=5)
    limits = limits_of(message)
    assert limits == ConcurrencyLimits(max_dispatches_per_second=20, max_burst_size=5)
    shown = queue_message(config(max_dispatches_per_second=2.5)).rate_limits
    assert shown.max_dispatches_per_second == 2.5 and shown.max_burst_size == 0
    assert limits_of(queues_pb2.RateLimits()) == ConcurrencyLimits()


# ---- claims and the wait note ----


def record(**changes: object) -> OperationRecord:
    base = OperationRecord(
        id="b" * 32,
        task="noop",
        params=b"",
        state=State.QUEUED,
        create_time=T0,
        update_time=T0,
        max_attempts=3,
        project="billing",
        queue="api",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_claim_in_a_rate_limited_queue_goes_through_the_guarded_step() -> None:
    limits = {("billing", "api"): ConcurrencyLimits(max_dispatches_per_second=20)}
    with pytest.raises(transitions.SlotRequired) as needed:
        transitions.claim(
            record(),
            worker="w",
            now=T0,
            lease=timedelta(seconds=10),
            retention=timedelta(days=1),
            limits=limits,
            rate_horizon=timedelta(seconds=7),
        )
    request = needed.value.request
    assert (request.rate, request.burst, request.horizon) == (20, 20, timedelta(seconds=7))
    assert not request.concurrency
    # Another queue is not limited.
    other = {("billing", "other"): ConcurrencyLimits(max_dispatches_per_second=20)}
    assert transitions.slot_request(record(), other) is None


def test_a_reservation_note_shows_rate_limited_and_gates_the_start() -> None:
    token = T0 + 300 * MS
    noted = transitions.note_rate_limited(record(), now=T0, retry_at=token, token_time=token)
    assert noted is not None
    assert noted.wait_reason is WaitReason.RATE_LIMITED
    assert noted.metadata().wait_reason == jobs_pb2.JobMetadata.RATE_LIMITED
    assert noted.run_after == token and noted.rate_token_time == token
    assert noted.dispatch_due_time == token + RESERVED_BACKSTOP
    with pytest.raises(transitions.NotDue):
        transitions.claim(
            noted, worker="w", now=T0, lease=timedelta(seconds=10), retention=timedelta(days=1)
        )
    started = transitions.claim(
        noted, worker="w", now=token, lease=timedelta(seconds=10), retention=timedelta(days=1)
    )
    assert started.rate_token_time is None and started.wait_reason is WaitReason.NONE


def test_an_unreserved_wait_keeps_no_token_and_a_pause_or_slot_wait_spends_it() -> None:
    retry = T0 + timedelta(seconds=30)
    noted = transitions.note_rate_limited(record(), now=T0, retry_at=retry, token_time=None)
    assert noted is not None
    assert noted.rate_token_time is None and noted.run_after is None
    assert noted.dispatch_due_time == retry and noted.wait_reason is WaitReason.RATE_LIMITED
    holding = record(rate_token_time=T0, wait_reason=WaitReason.RATE_LIMITED)
    paused = transitions.note_paused(holding, now=T0)
    limited = transitions.note_limited(holding, now=T0, retry_at=retry)
    assert paused is not None and paused.rate_token_time is None
    assert limited is not None and limited.rate_token_time is None
    assert (
        transitions.note_rate_limited(
            record(state=State.RUNNING), now=T0, retry_at=retry, token_time=None
        )
        is None
    )


def test_the_start_gate_admits_the_burst_then_one_per_interval_and_nothing_when_shut() -> None:
    start_tat = None
    for _ in range(5):
        admitted, start_tat = gate(start_tat, T0, rate=20, burst=5)
        assert admitted
    shut, when = gate(start_tat, T0, rate=20, burst=5)
    assert not shut and when == T0 + 50 * MS
    again, still = gate(start_tat, T0 + 10 * MS, rate=20, burst=5)
    assert not again and still == when  # nothing was taken by the refusal
    opened, _ = gate(start_tat, when, rate=20, burst=5)
    assert opened
    # A start_tat beyond anything starts can write (a clock jump) is reset.
    reset, new = gate(T0 + timedelta(hours=1), T0, rate=20, burst=5)
    assert reset and new == T0 + 50 * MS


def test_a_claimer_whose_now_is_older_than_the_last_writers_obeys_the_gate() -> None:
    """A claimer takes `now` before its read; the last writer's `now` may be
    a slow round trip later. The gate that writer left saturated stays shut
    for it (it was reopened, and 27 dispatches went out in one second at
    20/s burst 5 on a loaded emulator)."""
    writer_now = T0 + 300 * MS
    start_tat = None
    for _ in range(5):
        admitted, start_tat = gate(start_tat, writer_now, rate=20, burst=5)
        assert admitted
    assert start_tat is not None
    stale, when = gate(start_tat, T0, rate=20, burst=5)
    assert not stale and when == writer_now + 50 * MS
    # The same holds for the reservation bucket at the horizon's edge.
    tat = writer_now + HORIZON + 5 * 50 * MS
    got = take(tat, T0, rate=20, burst=5, horizon=HORIZON)
    assert isinstance(got, Refused)


def test_a_taken_over_attempt_with_no_token_writes_nothing() -> None:
    """The claim of a RUNNING record whose lease was found lost, in a queue
    with no token free now: no waiting note can be made of a RUNNING record,
    so the step is refused whole (the lease check requeues the job)."""
    running = record(state=State.RUNNING, attempt=1, lease_owner="gone", lease_expire_time=T0 - MS)
    claimed = replace(running, attempt=2, lease_owner="w", update_time=T0)
    request = transitions.SlotRequest("billing", "api", None, None, None, rate=20, burst=1)
    with pytest.raises(transitions.RateLimited) as refused:
        transitions.rate_step(running, claimed, request, T0 + 50 * MS, None)
    assert not refused.value.reserved
    started = transitions.rate_step(running, claimed, request, None, None)
    assert started.record is claimed and started.wait is None
