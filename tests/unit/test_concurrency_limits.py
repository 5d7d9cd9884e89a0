"""Concurrency limits, the pure parts: bounds and update masks of a queue's
rate_limits, which claims need a slot (and that the other gates come
first), the count check, the wait note, the slot holder maps (Firestore's
way), and the proto conversion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from longrun.v1 import jobs_pb2, queues_pb2
from longrun_core import transitions
from longrun_core.errors import InvalidArgument
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.queues import ConcurrencyLimits, QueueConfig, RetryConfig, apply_update
from longrun_core.slots import admit, is_live, key_slot_id, queue_slot_id, slots_of, without_dead
from longrun_core.transitions import SlotRequest, over_limit, slot_request
from longrun_server.queue_messages import limits_of, queue_message

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
KEY = ("billing", "emails")


def queue(**changes: object) -> QueueConfig:
    base = QueueConfig(project="billing", queue_id="emails", create_time=T0, update_time=T0)
    return replace(base, **changes)  # type: ignore[arg-type]


def record(**changes: object) -> OperationRecord:
    base = OperationRecord(
        id="a" * 32,
        task="noop",
        params=b"",
        state=State.QUEUED,
        create_time=T0,
        update_time=T0,
        max_attempts=3,
        project="billing",
        queue="emails",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def claim(rec: OperationRecord, **kw: object) -> OperationRecord:
    return transitions.claim(
        rec,
        worker="w",
        now=T0,
        lease=10 * S,
        retention=timedelta(days=1),
        **kw,  # type: ignore[arg-type]
    )


# ---- bounds and update masks ----


@pytest.mark.parametrize(
    "bad",
    [
        ConcurrencyLimits(max_concurrent_dispatches=0),
        ConcurrencyLimits(max_concurrent_dispatches=5001),
        ConcurrencyLimits(max_concurrent_dispatches=-1),
        ConcurrencyLimits(max_concurrent_per_key=5001),
        ConcurrencyLimits(max_concurrent_per_key=-3),
    ],
)
def test_limits_out_of_bounds_are_invalid(bad: ConcurrencyLimits) -> None:
    with pytest.raises(InvalidArgument) as caught:
        bad.check()
    assert caught.value.reason == "QUEUE_CONFIG_INVALID"
    assert "rate_limits." in str(caught.value)


def test_limits_at_the_bounds_are_valid() -> None:
    ConcurrencyLimits(max_concurrent_dispatches=1, max_concurrent_per_key=1).check()
    ConcurrencyLimits(max_concurrent_dispatches=5000, max_concurrent_per_key=5000).check()
    assert not ConcurrencyLimits().any
    assert ConcurrencyLimits(max_concurrent_per_key=2).any


def test_a_rate_limits_mask_path_changes_only_its_field() -> None:
    current = queue(
        retry=RetryConfig(max_attempts=5),
        limits=ConcurrencyLimits(max_concurrent_dispatches=3, max_concurrent_per_key=2),
    )
    asked = ConcurrencyLimits(max_concurrent_dispatches=10, max_concurrent_per_key=9)
    updated = apply_update(
        current, RetryConfig(), ["rate_limits.max_concurrent_per_key"], T0 + S, asked
    )
    assert updated.limits == ConcurrencyLimits(
        max_concurrent_dispatches=3, max_concurrent_per_key=9
    )
    assert updated.retry == RetryConfig(max_attempts=5)


def test_a_retry_path_leaves_the_limits_and_an_empty_mask_replaces_both() -> None:
    current = queue(limits=ConcurrencyLimits(max_concurrent_dispatches=3))
    only_retry = apply_update(current, RetryConfig(max_attempts=2), ["retry_config"], T0)
    assert only_retry.limits == ConcurrencyLimits(max_concurrent_dispatches=3)
    both = apply_update(
        current, RetryConfig(max_attempts=2), [], T0, ConcurrencyLimits(max_concurrent_per_key=4)
    )
    assert both.limits == ConcurrencyLimits(max_concurrent_per_key=4)
    assert both.retry == RetryConfig(max_attempts=2)
    cleared = apply_update(current, RetryConfig(), ["rate_limits"], T0, ConcurrencyLimits())
    assert not cleared.limits.any


def test_an_update_to_limits_out_of_bounds_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        apply_update(
            queue(),
            RetryConfig(),
            ["rate_limits.max_concurrent_dispatches"],
            T0,
            ConcurrencyLimits(max_concurrent_dispatches=6000),
        )


def test_proto_limits_round_trip_and_zero_means_none() -> None:
    message = queues_pb2.RateLimits(max_concurrent_dispatches=3, max_concurrent_per_key=0)
    assert limits_of(message) == ConcurrencyLimits(max_concurrent_dispatches=3)
    negative = limits_of(queues_pb2.RateLimits(max_concurrent_dispatches=-1))
    with pytest.raises(InvalidArgument):
        negative.check()
    shown = queue_message(queue(limits=ConcurrencyLimits(max_concurrent_per_key=2)))
    assert (
        shown.rate_limits.max_concurrent_dispatches,
        shown.rate_limits.max_concurrent_per_key,
    ) == (
        0,
        2,
    )


# ---- the claim gate ----


def test_a_claim_in_a_limited_queue_needs_a_slot_with_its_limits() -> None:
    limits = {KEY: ConcurrencyLimits(max_concurrent_dispatches=3, max_concurrent_per_key=2)}
    with pytest.raises(transitions.SlotRequired) as caught:
        claim(record(concurrency_key="c1"), limits=limits)
    assert caught.value.request == SlotRequest(
        project="billing", queue="emails", key="c1", queue_limit=3, key_limit=2
    )
    admitted = claim(record(concurrency_key="c1"), limits=limits, admitted=True)
    assert admitted.state is State.RUNNING and admitted.attempt == 1


def test_a_key_limit_does_not_apply_to_a_job_without_a_key_nor_to_other_queues() -> None:
    limits = {KEY: ConcurrencyLimits(max_concurrent_per_key=2)}
    assert claim(record(), limits=limits).state is State.RUNNING
    assert slot_request(record(), limits) is None
    assert claim(record(queue="other", concurrency_key="c"), limits=limits).state is State.RUNNING
    assert claim(record(project="p2", concurrency_key="c"), limits=limits).state is State.RUNNING


def test_the_other_gates_come_before_the_slot() -> None:
    limits = {KEY: ConcurrencyLimits(max_concurrent_dispatches=1)}
    with pytest.raises(transitions.NotDue):
        claim(record(run_after=T0 + S), limits=limits)
    with pytest.raises(transitions.QueuePaused):
        claim(record(), limits=limits, paused={KEY})
    used_up = claim(record(attempt=3), limits=limits)
    assert used_up.state is State.FAILED  # ended without taking a slot


@pytest.mark.parametrize(
    ("queue_limit", "key_limit", "key", "in_queue", "with_key", "full"),
    [
        (3, None, None, 2, 0, None),
        (3, None, None, 3, 0, "queue"),
        (None, 2, "k", 10, 1, None),
        (None, 2, "k", 10, 2, "key"),
        (None, 2, None, 10, 5, None),
        (3, 2, "k", 3, 2, "queue"),
        (5, 2, "k", 3, 2, "key"),
    ],
)
def test_over_limit_names_the_limit_a_new_attempt_would_break(
    queue_limit: int | None,
    key_limit: int | None,
    key: str | None,
    in_queue: int,
    with_key: int,
    full: str | None,
) -> None:
    request = SlotRequest("billing", "emails", key, queue_limit, key_limit)
    assert over_limit(request, in_queue, with_key) == full


def test_a_limited_job_shows_why_and_is_republished_later() -> None:
    noted = transitions.note_limited(record(), now=T0, retry_at=T0 + S)
    assert noted is not None
    assert noted.wait_reason is WaitReason.CONCURRENCY_LIMITED
    assert noted.dispatch_due_time == T0 + S
    assert noted.metadata().wait_reason == jobs_pb2.JobMetadata.CONCURRENCY_LIMITED
    running = claim(noted)
    assert running.wait_reason is WaitReason.NONE
    assert transitions.note_limited(running, now=T0, retry_at=T0 + S) is None


# ---- slot holder maps ----


def test_slots_name_a_document_per_queue_and_per_key() -> None:
    request = SlotRequest("billing", "emails", "a/b c", 3, 2)
    slots = slots_of(request)
    assert slots[0] == (queue_slot_id("billing", "emails"), 3)
    assert slots[1][1] == 2 and "/" not in slots[1][0]
    assert key_slot_id("billing", "emails", "x") != key_slot_id("billing", "emails", "y")
    assert slots_of(SlotRequest("billing", "emails", None, None, 2)) == []


def test_admit_adds_up_to_the_limit_and_replaces_its_own_earlier_attempt() -> None:
    assert admit({}, "op1", 1, 2) == {"op1": 1}
    assert admit({"op1": 1}, "op2", 1, 2) == {"op1": 1, "op2": 1}
    assert admit({"op1": 1, "op2": 1}, "op3", 1, 2) is None
    assert admit({"op1": 1, "op2": 1}, "op2", 2, 2) == {"op1": 1, "op2": 2}


def test_dead_holders_are_the_ones_not_running_that_attempt() -> None:
    running = record(state=State.RUNNING, attempt=2)
    assert is_live(2, running)
    assert not is_live(1, running)  # a later attempt runs: the entry's is over
    assert not is_live(2, record(state=State.QUEUED, attempt=2))  # lease lost, taken back
    assert not is_live(2, record(state=State.SUCCEEDED, attempt=2))
    assert not is_live(1, None)  # deleted
    holders = {"a": 2, "b": 1, "c": 1, "d": 1}
    records = {"a": running, "b": running, "c": None}
    # "d" was not read: it is kept (not judged).
    assert without_dead(holders, records) == {"a": 2, "d": 1}
