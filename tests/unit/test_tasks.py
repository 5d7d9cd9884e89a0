"""Task declarations: retry policy, registry lookups and validation, loading."""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest

from longrun_core.errors import InvalidArgument
from longrun_core.tasks import (
    PermanentError,
    RetryPolicy,
    TaskContext,
    TaskModuleError,
    TaskRegistry,
    TaskSet,
    TaskSpec,
    TransientError,
    load_tasks,
)


async def _handler(ctx: TaskContext) -> None:
    return None


def _positive_size(params: Mapping[str, Any]) -> None:
    if not isinstance(params.get("size"), (int, float)):
        raise TypeError("size must be a number")
    if params["size"] <= 0:
        raise ValueError(f"size must be positive, got {params['size']}")


def _broken_validator(params: Mapping[str, Any]) -> None:
    raise KeyError("bug in the validator")


def registry() -> TaskRegistry:
    return TaskRegistry(
        [
            TaskSpec("resize", _handler, validate=_positive_size),
            TaskSpec("archive", _handler),
            TaskSpec("broken", _handler, validate=_broken_validator),
        ]
    )


# ---- RetryPolicy ----


def test_backoff_without_jitter_grows_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy(min_backoff=0.5, max_backoff=5.0, multiplier=2.0, jitter=False)

    delays = [policy.backoff(attempt).total_seconds() for attempt in range(1, 7)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_with_jitter_stays_between_the_minimum_and_the_attempts_ceiling() -> None:
    policy = RetryPolicy(min_backoff=0.5, max_backoff=5.0, multiplier=2.0)
    rng = random.Random(1234)

    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (30, 5.0)]:
        delays = [policy.backoff(attempt, rng).total_seconds() for _ in range(200)]
        assert all(0.5 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        if ceiling > 0.5:  # jitter spreads over the range rather than picking an end
            assert max(delays) - min(delays) > (ceiling - 0.5) / 2


def test_backoff_with_jitter_grows_with_the_attempt() -> None:
    policy = RetryPolicy(min_backoff=0.1, max_backoff=60.0, multiplier=2.0)
    rng = random.Random(7)

    means = [
        sum(policy.backoff(attempt, rng).total_seconds() for _ in range(200)) / 200
        for attempt in (1, 3, 5, 7)
    ]

    assert means == sorted(means)
    assert means[-1] > 5 * means[0]


def test_backoff_with_a_seeded_random_is_reproducible() -> None:
    policy = RetryPolicy()
    first = [policy.backoff(3, random.Random(42)) for _ in range(3)]
    again = [policy.backoff(3, random.Random(42)) for _ in range(3)]
    assert first == again
    assert all(isinstance(d, timedelta) for d in first)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"min_backoff": -1.0},
        {"min_backoff": 2.0, "max_backoff": 1.0},
    ],
)
def test_retry_policy_rejects_impossible_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


class _Permanent(PermanentError):
    pass


def test_permanent_errors_are_never_retried() -> None:
    for policy in (RetryPolicy(), RetryPolicy(retry_on=(PermanentError, Exception))):
        assert not policy.is_retryable(PermanentError("no"))
        assert not policy.is_retryable(_Permanent("no"))


def test_transient_errors_are_always_retried() -> None:
    assert RetryPolicy(retry_on=(KeyError,)).is_retryable(TransientError("again"))


def test_retry_on_selects_the_other_exceptions() -> None:
    default = RetryPolicy()
    assert default.is_retryable(ValueError("x"))
    narrow = RetryPolicy(retry_on=(ConnectionError,))
    assert narrow.is_retryable(ConnectionResetError("x"))
    assert not narrow.is_retryable(ValueError("x"))


@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()], ids=lambda e: type(e).__name__
)
def test_a_base_exception_is_a_failure_like_any_other(exc: BaseException) -> None:
    assert RetryPolicy().is_retryable(exc)  # the default policy retries every Exception
    assert not RetryPolicy(retry_on=(ConnectionError,)).is_retryable(exc)
    assert RetryPolicy(retry_on=(type(exc),)).is_retryable(exc)


# ---- TaskRegistry ----


def test_get_returns_the_registered_spec() -> None:
    assert registry().get("archive").name == "archive"
    assert registry().names == ["archive", "broken", "resize"]


def test_an_unknown_task_is_invalid_and_lists_the_registered_tasks() -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().get("reszie")

    err = info.value
    assert err.reason == "TASK_UNKNOWN"
    assert "'reszie'" in err.message
    for name in ("archive", "broken", "resize"):
        assert name in err.message
    assert err.metadata == {"task": "reszie"}


def test_an_unknown_task_name_is_truncated_in_the_error() -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().get("x" * 10_000)
    assert len(info.value.message) < 300
    assert info.value.metadata["task"] == "x" * 100


def test_a_missing_task_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().get("")
    assert info.value.reason == "TASK_MISSING"
    assert "required" in info.value.message


def test_a_missing_task_error_lists_the_registered_tasks() -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().get("")
    for name in ("archive", "broken", "resize"):
        assert name in info.value.message


def test_validate_passes_acceptable_params_and_returns_the_spec() -> None:
    assert registry().validate("resize", {"size": 3}).name == "resize"
    assert registry().validate("archive", {"anything": True}).name == "archive"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"size": -2}, "size must be positive, got -2"), ({}, "size must be a number")],
)
def test_params_rejected_by_the_validator_are_invalid(
    params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().validate("resize", params)

    err = info.value
    assert err.reason == "PARAMS_REJECTED"
    assert fragment in err.message
    assert "'resize'" in err.message
    assert err.metadata == {"task": "resize"}
    assert isinstance(err.__cause__, (ValueError, TypeError))


def test_validate_of_an_unknown_task_is_task_unknown() -> None:
    with pytest.raises(InvalidArgument) as info:
        registry().validate("nope", {})
    assert info.value.reason == "TASK_UNKNOWN"


def test_a_validator_bug_is_not_reported_as_the_callers_mistake() -> None:
    with pytest.raises(KeyError):
        registry().validate("broken", {})


# ---- TaskSet and duplicates ----


def test_task_set_registers_the_function_unchanged_with_its_options() -> None:
    task_set = TaskSet()
    policy = RetryPolicy(max_attempts=7)

    decorated = task_set.task("resize", retry=policy, validate=_positive_size, cancel_grace=1.5)(
        _handler
    )

    assert decorated is _handler
    spec = task_set.specs["resize"]
    assert (spec.name, spec.handler, spec.retry, spec.validate, spec.cancel_grace) == (
        "resize",
        _handler,
        policy,
        _positive_size,
        1.5,
    )


def test_task_set_defaults() -> None:
    task_set = TaskSet()
    task_set.task("plain")(_handler)
    spec = task_set.specs["plain"]
    assert spec.retry == RetryPolicy()
    assert spec.validate is None
    assert spec.cancel_grace == 5.0
    assert (spec.isolation, spec.timeout) == (None, None)


def _sync_handler(ctx: TaskContext) -> None:
    return None


def test_sync_handlers_run_in_a_process_and_async_ones_inline_by_default() -> None:
    task_set = TaskSet()
    task_set.task("a")(_handler)
    task_set.task("s")(_sync_handler)
    task_set.task("a_in_process", isolation="process", timeout=2.5)(_handler)
    task_set.task("s_in_thread", isolation="thread")(_sync_handler)
    runs_in = {name: spec.runs_in for name, spec in task_set.specs.items()}
    assert runs_in == {
        "a": "inline",
        "s": "process",
        "a_in_process": "process",
        "s_in_thread": "thread",
    }
    assert task_set.specs["a_in_process"].timeout == 2.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"isolation": "fork"}, "isolation must be one of process, thread, inline"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1.0}, "timeout must be a positive number"),
        ({"cancel_grace": -1}, "cancel_grace must be >= 0"),
    ],
)
def test_task_options_are_checked_when_declared(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskSet().task("bad", **options)(_handler)


def test_a_task_declared_twice_in_one_set_is_an_error() -> None:
    task_set = TaskSet()
    task_set.task("resize")(_handler)
    with pytest.raises(ValueError, match="'resize'"):
        task_set.task("resize")(_handler)


def test_a_task_registered_twice_is_an_error() -> None:
    reg = registry()
    with pytest.raises(ValueError, match="'archive'"):
        reg.add(TaskSpec("archive", _handler))
    with pytest.raises(ValueError, match="'a'"):
        TaskRegistry([TaskSpec("a", _handler), TaskSpec("a", _handler)])


# ---- load_tasks ----


@pytest.fixture
def fake_module() -> Iterator[types.ModuleType]:
    name = "tests_unit_fake_task_module"
    module = types.ModuleType(name)
    sys.modules[name] = module
    yield module
    del sys.modules[name]


def test_load_tasks_collects_the_builtin_tasks() -> None:
    reg = load_tasks(["longrun_worker.builtin_tasks"])
    assert reg.names == ["fail", "noop", "sleep"]
    assert reg.get("fail").retry.max_attempts == 3


def test_load_tasks_of_two_modules_merges_them(fake_module: types.ModuleType) -> None:
    task_set = TaskSet()
    task_set.task("extra")(_handler)
    fake_module.tasks = task_set  # type: ignore[attr-defined]

    reg = load_tasks(["longrun_worker.builtin_tasks", fake_module.__name__])

    assert reg.names == ["extra", "fail", "noop", "sleep"]


def test_load_tasks_rejects_a_task_name_in_two_modules(fake_module: types.ModuleType) -> None:
    task_set = TaskSet()
    task_set.task("sleep")(_handler)
    fake_module.tasks = task_set  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="registered twice"):
        load_tasks(["longrun_worker.builtin_tasks", fake_module.__name__])


def test_load_tasks_imports_a_module_named_twice_once() -> None:
    # --task-module adds to the built-ins, so naming them again is harmless.
    reg = load_tasks(["longrun_worker.builtin_tasks", "longrun_worker.builtin_tasks"])
    assert reg.names == ["fail", "noop", "sleep"]


def test_load_tasks_of_an_unimportable_module_says_how_to_fix_it() -> None:
    with pytest.raises(TaskModuleError) as caught:
        load_tasks(["no_such_pkg.tasks"])
    message = str(caught.value)
    assert "cannot import task module 'no_such_pkg.tasks'" in message
    assert "No module named 'no_such_pkg'" in message
    assert "PYTHONPATH" in message


def test_load_tasks_of_a_module_without_tasks_says_what_is_missing(
    fake_module: types.ModuleType,
) -> None:
    with pytest.raises(ValueError, match=f"'{fake_module.__name__}' has no `tasks = TaskSet"):
        load_tasks([fake_module.__name__])
    fake_module.tasks = ["not", "a", "task set"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="has no `tasks"):
        load_tasks([fake_module.__name__])


@pytest.mark.parametrize(
    ("task", "params", "ok"),
    [
        ("sleep", {"worktime": 2}, True),
        ("sleep", {}, True),
        ("sleep", {"worktime": True}, False),
        ("sleep", {"worktime": -1}, False),
        ("sleep", {"worktime": 1, "extra": 1}, False),
        ("fail", {"message": "x", "permanent": True}, True),
        ("fail", {"message": 3}, False),
    ],
)
def test_builtin_validators(task: str, params: dict[str, Any], ok: bool) -> None:
    reg = load_tasks(["longrun_worker.builtin_tasks"])
    if ok:
        reg.validate(task, params)
    else:
        with pytest.raises(InvalidArgument) as info:
            reg.validate(task, params)
        assert info.value.reason == "PARAMS_REJECTED"
