"""Task declarations shared by the server (which validates requests) and the
worker (which runs them).

A task module holds a `TaskSet` named `tasks` and registers functions on it:

    tasks = TaskSet()

    @tasks.task("resize", retry=RetryPolicy(max_attempts=5), validate=check_resize)
    async def resize(ctx: TaskContext) -> dict[str, object]: ...

Where a handler runs (`isolation`):

* "process": in a child process of its own for each attempt (params and
  result cross as JSON and a packed protobuf). A crash (os._exit, a
  segfault), a hang, a blocked event loop or a leak costs that attempt, not
  the worker: the worker kills the child on cancel (after `cancel_grace`),
  at the attempt deadline (`timeout`) and at shutdown. The default for sync
  handlers. The handler must be a module-level function.
* "thread": in a thread of its own (an async handler gets its own event
  loop there). A thread cannot be killed: one that ignores a cancel is
  abandoned and keeps its worker slot until it returns.
* "inline": on the worker's task event loop (a thread apart from the loop
  that renews leases, so a blocking handler cannot lose its lease). The
  default for async handlers: no per-attempt cost, but a handler that
  blocks delays the other inline handlers, and one that crashes the
  process takes the worker down.

`load_tasks(["longrun_worker.builtin_tasks", "myapp.tasks"])` collects them into a
`TaskRegistry`. Nothing is registered at import time anywhere global.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol

from longrun_core.errors import InvalidArgument


class PermanentError(Exception):
    """Raise from a task to fail the operation at once, without retries."""


class TransientError(Exception):
    """Raise from a task to ask for a retry (while attempts are left)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a task's attempt fails with a retryable error: exponential backoff
    with full jitter, like Cloud Tasks' RetryConfig."""

    max_attempts: int = 3
    min_backoff: float = 0.5
    max_backoff: float = 60.0
    multiplier: float = 2.0
    jitter: bool = True
    #: Which exceptions are retried; `PermanentError` never is.
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.min_backoff <= self.max_backoff:
            raise ValueError("need 0 <= min_backoff <= max_backoff")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Delay before the attempt after `attempt` (1-based)."""
        ceiling = min(self.max_backoff, self.min_backoff * self.multiplier ** (attempt - 1))
        if self.jitter:
            ceiling = (rng or random).uniform(self.min_backoff, max(ceiling, self.min_backoff))
        return timedelta(seconds=ceiling)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether `exc` from an attempt asks for another attempt. A
        BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
        GeneratorExit...) is a failure of the task like any other: retried
        when the policy retries every Exception."""
        if isinstance(exc, PermanentError):
            return False
        if isinstance(exc, (TransientError, *self.retry_on)):
            return True
        return not isinstance(exc, Exception) and any(
            issubclass(Exception, kind) for kind in self.retry_on
        )


class TaskContext(Protocol):
    """What a running task sees (implemented by the worker runtime)."""

    params: dict[str, Any]
    operation: str
    attempt: int

    async def progress(self, percent: int, message: str = "") -> None: ...

    def progress_threadsafe(self, percent: int, message: str = "") -> None:
        """`progress` for a sync handler (blocks until recorded)."""
        ...

    @property
    def cancelled(self) -> bool: ...

    async def wait_cancelled(self, timeout: float | None = None) -> bool: ...


Handler = Callable[[TaskContext], Any | Awaitable[Any]]
Validator = Callable[[Mapping[str, Any]], None]
Isolation = Literal["process", "thread", "inline"]
ISOLATIONS: tuple[Isolation, ...] = ("process", "thread", "inline")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    handler: Handler
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Raises ValueError with a message when params are unacceptable.
    validate: Validator | None = None
    #: A cancelled handler that has not returned after this many seconds is
    #: stopped: its process killed, or (thread, inline) abandoned.
    cancel_grace: float = 5.0
    #: Where the handler runs (see the module docstring); None: "process" for
    #: a sync handler, "inline" for an async one.
    isolation: Isolation | None = None
    #: The attempt deadline in seconds (None: none). Past it the handler is
    #: told to stop as on a cancel, then stopped, and the attempt fails with
    #: DEADLINE_EXCEEDED (retried while attempts are left).
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.isolation is not None and self.isolation not in ISOLATIONS:
            raise ValueError(
                f"task {self.name!r}: isolation must be one of {', '.join(ISOLATIONS)}, "
                f"got {self.isolation!r}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"task {self.name!r}: timeout must be a positive number of seconds")
        if not self.cancel_grace >= 0:
            raise ValueError(f"task {self.name!r}: cancel_grace must be >= 0")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def runs_in(self) -> Isolation:
        """The isolation in effect (the default resolved)."""
        if self.isolation is not None:
            return self.isolation
        return "inline" if self.is_async else "process"


class TaskSet:
    """Declarations in one module."""

    def __init__(self) -> None:
        self.specs: dict[str, TaskSpec] = {}

    def task(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        validate: Validator | None = None,
        cancel_grace: float = 5.0,
        isolation: Isolation | None = None,
        timeout: float | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            if name in self.specs:
                raise ValueError(f"task {name!r} declared twice")
            self.specs[name] = TaskSpec(
                name,
                fn,
                retry or RetryPolicy(),
                validate,
                cancel_grace,
                isolation=isolation,
                timeout=timeout,
            )
            return fn

        return register


class TaskRegistry:
    def __init__(self, specs: Iterable[TaskSpec] = ()) -> None:
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: TaskSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"task {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    @property
    def names(self) -> list[str]:
        return sorted(self._specs)

    @property
    def specs(self) -> list[TaskSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> TaskSpec:
        spec = self._specs.get(name)
        if spec is None:
            if not name:
                raise InvalidArgument(
                    f"task is required; registered tasks: {', '.join(self.names)}",
                    reason="TASK_MISSING",
                )
            raise InvalidArgument(
                f"unknown task {name[:100]!r}; registered tasks: {', '.join(self.names)}",
                reason="TASK_UNKNOWN",
                metadata={"task": name[:100]},
            )
        return spec

    def validate(self, name: str, params: Mapping[str, Any]) -> TaskSpec:
        spec = self.get(name)
        if spec.validate is not None:
            try:
                spec.validate(params)
            except (ValueError, TypeError) as exc:
                raise InvalidArgument(
                    f"params rejected by task {name!r}: {exc}",
                    reason="PARAMS_REJECTED",
                    metadata={"task": name},
                ) from exc
        return spec


class TaskModuleError(ValueError):
    """A task module that cannot be imported or holds no `tasks = TaskSet()`."""


def load_tasks(modules: Iterable[str]) -> TaskRegistry:
    """Import each module (once, in order) and collect its `tasks` TaskSet."""
    registry = TaskRegistry()
    for module_name in dict.fromkeys(modules):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TaskModuleError(
                f"cannot import task module {module_name!r}: {exc}. Install the package "
                "that holds it into this Python environment, or put its folder on "
                f"PYTHONPATH (this process runs in {os.getcwd()})"
            ) from exc
        task_set = getattr(module, "tasks", None)
        if not isinstance(task_set, TaskSet):
            raise TaskModuleError(f"module {module_name!r} has no `tasks = TaskSet()`")
        for spec in task_set.specs.values():
            registry.add(spec)
    return registry
