"""Queues as pure logic: names, bounds, update masks, the retry arithmetic
(Cloud Tasks' max_doublings), and the claim gate (pause, purge time,
schedule time) in transitions."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.rpc import code_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_core import transitions
from longrun_core.access import Permission
from longrun_core.auth.roles import Role, grants
from longrun_core.errors import InvalidArgument
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.queues import (
    DEFAULT_QUEUE,
    QueueConfig,
    QueueState,
    RetryConfig,
    apply_update,
    check_queue_id,
    default_queue,
    effective_retry,
    job_queue,
    parse_queue_name,
    paused,
    stored_or_default,
)
from longrun_core.tasks import RetryPolicy

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


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


def reason(exc: InvalidArgument) -> str:
    return exc.reason


# ---- names ----


@pytest.mark.parametrize("good", ["default", "emails", "A-1", "x" * 100])
def test_queue_ids_within_the_rule_are_accepted(good: str) -> None:
    assert check_queue_id(good) == good


@pytest.mark.parametrize("bad", ["", "-x", "a_b", "a/b", "x" * 101, "é"])
def test_queue_ids_outside_the_rule_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_queue_id(bad)
    assert reason(caught.value) == "QUEUE_ID_INVALID"


def test_a_queue_name_parses_into_project_and_id() -> None:
    assert parse_queue_name("projects/billing/queues/emails") == ("billing", "emails")
    for bad in ("projects/billing/queues", "queues/emails", "projects/B!/queues/x"):
        with pytest.raises(InvalidArgument):
            parse_queue_name(bad)


def test_a_job_names_its_queue_by_id_or_by_name_in_its_own_project() -> None:
    assert job_queue("billing", "") == DEFAULT_QUEUE
    assert job_queue("billing", "emails") == "emails"
    assert job_queue("billing", "projects/billing/queues/emails") == "emails"
    with pytest.raises(InvalidArgument) as caught:
        job_queue("billing", "projects/payroll/queues/emails")
    assert reason(caught.value) == "QUEUE_PROJECT_MISMATCH"


def test_only_the_default_queue_exists_without_being_stored() -> None:
    assert stored_or_default(None, "billing", "emails", T0) is None
    made = stored_or_default(None, "billing", DEFAULT_QUEUE, T0)
    assert made == default_queue("billing", T0)
    assert made is not None and made.create_time == T0
    stored = queue()
    assert stored_or_default(stored, "billing", "emails", T0 + S) is stored
    assert default_queue("billing").create_time is None


# ---- retry_config bounds and update masks ----


@pytest.mark.parametrize(
    "bad",
    [
        RetryConfig(max_attempts=0),
        RetryConfig(max_attempts=101),
        RetryConfig(max_doublings=17),
        RetryConfig(max_doublings=-1),
        RetryConfig(min_backoff=-S),
        RetryConfig(max_backoff=timedelta(hours=2)),
        RetryConfig(min_backoff=10 * S, max_backoff=5 * S),
        RetryConfig(max_retry_duration=timedelta(days=31)),
    ],
)
def test_a_retry_config_out_of_bounds_is_invalid(bad: RetryConfig) -> None:
    with pytest.raises(InvalidArgument) as caught:
        bad.check()
    assert reason(caught.value) == "QUEUE_CONFIG_INVALID"


def test_an_update_mask_path_changes_only_its_field() -> None:
    current = queue(retry=RetryConfig(max_attempts=5, min_backoff=S))
    asked = RetryConfig(max_attempts=9, min_backoff=7 * S)
    updated = apply_update(current, asked, ["retry_config.max_attempts"], T0 + S)
    assert updated.retry == RetryConfig(max_attempts=9, min_backoff=S)
    assert updated.update_time == T0 + S and updated.create_time == T0


def test_an_empty_mask_replaces_the_whole_retry_config() -> None:
    current = queue(retry=RetryConfig(max_attempts=5, min_backoff=S))
    asked = RetryConfig(max_doublings=2)
    assert apply_update(current, asked, [], T0).retry == asked


@pytest.mark.parametrize("path", ["state", "name", "retry_config.bogus", "purge_time"])
def test_a_mask_path_that_cannot_be_updated_is_invalid(path: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        apply_update(queue(), RetryConfig(), [path], T0)
    assert reason(caught.value) == "UPDATE_MASK_INVALID"


def test_an_update_that_breaks_the_bounds_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        apply_update(
            queue(retry=RetryConfig(max_backoff=2 * S)),
            RetryConfig(min_backoff=3 * S),
            ["retry_config.min_backoff"],
            T0,
        )


# ---- the retry arithmetic ----


def test_cloud_tasks_max_doublings_doubles_then_grows_linearly() -> None:
    # Cloud Tasks' own example: min 10 s, max 300 s, max_doublings 3.
    retry = effective_retry(
        RetryPolicy(max_attempts=3),
        RetryConfig(min_backoff=10 * S, max_backoff=300 * S, max_doublings=3),
    )
    delays = [retry.backoff(n).total_seconds() for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 240, 300, 300]


def test_zero_doublings_grow_linearly_from_the_start() -> None:
    retry = effective_retry(
        RetryPolicy(), RetryConfig(min_backoff=S, max_backoff=100 * S, max_doublings=0)
    )
    assert [retry.backoff(n).total_seconds() for n in range(1, 5)] == [1, 2, 3, 4]


def test_without_a_queue_the_task_policy_is_kept_exactly() -> None:
    policy = RetryPolicy(max_attempts=4, min_backoff=0.5, max_backoff=60, multiplier=3)
    retry = effective_retry(policy, None)
    assert retry.max_attempts == 4 and retry.max_retry_duration is None
    for attempt in range(1, 6):
        assert retry.backoff(attempt, random.Random(7)) == policy.backoff(attempt, random.Random(7))


def test_a_queue_overrides_field_by_field_and_drops_the_jitter_for_its_backoff() -> None:
    policy = RetryPolicy(max_attempts=4, min_backoff=0.5, max_backoff=60, jitter=True)
    only_attempts = effective_retry(policy, RetryConfig(max_attempts=9))
    assert only_attempts.max_attempts == 9
    assert only_attempts.jitter and only_attempts.min_backoff == timedelta(seconds=0.5)
    backoff = effective_retry(policy, RetryConfig(min_backoff=2 * S))
    assert backoff.max_attempts == 4 and not backoff.jitter
    assert [backoff.backoff(n).total_seconds() for n in (1, 2, 3)] == [2, 4, 8]


def test_max_retry_duration_bounds_the_start_of_the_next_attempt() -> None:
    retry = effective_retry(RetryPolicy(), RetryConfig(max_retry_duration=10 * S))
    assert retry.allows_retry(T0, T0 + 8 * S, 2 * S)
    assert not retry.allows_retry(T0, T0 + 8 * S, 3 * S)
    unbounded = effective_retry(RetryPolicy(), None)
    assert unbounded.allows_retry(T0, T0 + timedelta(days=400), S)


# ---- the claim gate ----


def claim(rec: OperationRecord, now: datetime = T0, **kw: object) -> OperationRecord:
    return transitions.claim(
        rec,
        worker="w",
        now=now,
        lease=10 * S,
        retention=timedelta(days=1),
        **kw,  # type: ignore[arg-type]
    )


def test_a_paused_queue_starts_no_attempt_and_another_queue_is_unaffected() -> None:
    with pytest.raises(transitions.QueuePaused):
        claim(record(), paused={("billing", "emails")})
    other = claim(record(queue="reports"), paused={("billing", "emails")})
    assert other.state is State.RUNNING
    same_id_other_project = claim(record(project="payroll"), paused={("billing", "emails")})
    assert same_id_other_project.state is State.RUNNING


def test_a_claim_before_the_schedule_time_is_deferred_to_it() -> None:
    rec = record(run_after=T0 + 60 * S, schedule_time=T0 + 60 * S)
    with pytest.raises(transitions.NotDue) as caught:
        claim(rec, now=T0 + 59 * S)
    assert caught.value.until == T0 + 60 * S
    assert claim(rec, now=T0 + 60 * S).state is State.RUNNING


def test_a_job_created_before_its_queues_purge_ends_cancelled_at_claim() -> None:
    purge_times = {("billing", "emails"): T0 + S}
    ended = claim(record(), now=T0 + 2 * S, purge_times=purge_times)
    assert ended.state is State.CANCELLED
    assert status_pb2.Status.FromString(ended.error or b"").code == code_pb2.CANCELLED
    later = claim(record(create_time=T0 + 2 * S), now=T0 + 3 * S, purge_times=purge_times)
    assert later.state is State.RUNNING


def test_purge_cancels_queued_and_leaves_running_and_done_alone() -> None:
    ended = transitions.purge(record(), now=T0, retention=timedelta(days=1))
    assert ended is not None and ended.state is State.CANCELLED and ended.done
    status = status_pb2.Status.FromString(ended.error or b"")
    assert status.code == 1 and "purged" in status.message
    running = claim(record())
    assert transitions.purge(running, now=T0, retention=timedelta(days=1)) is None
    assert transitions.purge(ended, now=T0, retention=timedelta(days=1)) is None


def test_wait_reasons_follow_the_job() -> None:
    noted = transitions.note_paused(record(), now=T0 + S)
    assert noted is not None and noted.wait_reason is WaitReason.QUEUE_PAUSED
    assert transitions.note_paused(noted, now=T0 + 2 * S) is None
    running = claim(noted)
    assert running.wait_reason is WaitReason.NONE
    retried = transitions.retry(running, worker="w", attempt=1, now=T0, delay=5 * S, error=b"")
    assert retried.wait_reason is WaitReason.SCHEDULED and retried.run_after == T0 + 5 * S


def test_metadata_shows_queue_schedule_deadline_key_and_wait_reason() -> None:
    rec = record(
        schedule_time=T0 + 60 * S,
        wait_reason=WaitReason.SCHEDULED,
        dispatch_deadline=30 * S,
        concurrency_key="customer-7",
    )
    md = rec.metadata()
    assert md.queue == "projects/billing/queues/emails"
    assert md.schedule_time.ToDatetime(tzinfo=UTC) == T0 + 60 * S
    assert md.wait_reason == jobs_pb2.JobMetadata.SCHEDULED
    assert md.dispatch_deadline.ToTimedelta() == 30 * S
    assert md.concurrency_key == "customer-7"
    plain = record().metadata()
    assert plain.wait_reason == jobs_pb2.JobMetadata.READY
    assert plain.schedule_time.ToDatetime(tzinfo=UTC) == T0  # no schedule: its create time
    assert not plain.HasField("dispatch_deadline")
    running = claim(record()).metadata()
    assert running.wait_reason == jobs_pb2.JobMetadata.WAIT_REASON_UNSPECIFIED


def test_pausing_keeps_everything_but_the_state() -> None:
    before = queue(retry=RetryConfig(max_attempts=2))
    after = paused(before, T0 + S)
    assert after.state is QueueState.PAUSED
    assert after.retry == before.retry and after.create_time == before.create_time


# ---- roles ----


def test_viewers_read_queues_and_only_admins_change_them() -> None:
    for role in Role:
        assert grants(role, Permission.QUEUES_GET) and grants(role, Permission.QUEUES_LIST)
    assert not grants(Role.VIEWER, Permission.QUEUES_UPDATE)
    assert not grants(Role.EDITOR, Permission.QUEUES_UPDATE)
    assert grants(Role.ADMIN, Permission.QUEUES_UPDATE)
