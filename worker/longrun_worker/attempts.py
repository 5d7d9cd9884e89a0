"""Starting one attempt of a handler where its task's `isolation` says
(longrun_core.tasks), and the handle the worker keeps on it.

The worker's control loop (receive, claim, heartbeat, outcome) never runs a
handler: inline handlers run on the task loop, a thread of its own, so a
handler that blocks its loop, swallows a cancellation or never returns can
delay other inline handlers but not a lease renewal or a shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Protocol

from longrun_core.tasks import TaskRegistry, TaskSpec
from longrun_worker.calling import call_async, call_blocking
from longrun_worker.context import RunContext
from longrun_worker.isolation import ProcessAttempt, ProcessLauncher, check_process_handler
from longrun_worker.outcome import Outcome, outcome_of


class RunningAttempt(Protocol):
    async def wait(self) -> Outcome:
        """The handler's outcome. Cancelling this wait leaves the attempt be."""
        ...

    def done(self) -> bool: ...

    async def stop(self, *, grace: bool = True) -> None:
        """End the attempt now: a task process is killed (SIGTERM, then
        SIGKILL after the kill grace; at once without `grace`); a thread or
        a coroutine cannot be killed and is abandoned."""
        ...


class TaskLoop:
    """An event loop on a daemon thread, for inline handlers. Whatever is
    still running on it when the worker exits is abandoned with the thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._main, args=(loop, ready), daemon=True, name="longrun-tasks"
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            # Handlers still running here were abandoned: drop them with the loop.
            for task in asyncio.all_tasks(loop):
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            loop.close()

    def close(self) -> None:
        """Stop the loop (abandoning what runs on it); the thread then ends."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)


class InlineAttempt:
    """A handler on the task loop: two hops between the loops (start, outcome)."""

    def __init__(
        self,
        task_loop: TaskLoop,
        spec: TaskSpec,
        ctx: RunContext,
        max_attempts: int,
        limit: int,
        *,
        debug: bool = False,
    ) -> None:
        self._spec = spec
        self._ctx = ctx
        self._max_attempts = max_attempts
        self._limit = limit
        self._debug = debug
        self._loop = task_loop.loop
        self._control = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._outcome: asyncio.Future[Outcome] = self._control.create_future()
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:  # on the task loop
        self._task = self._loop.create_task(self._main())

    async def _main(self) -> None:  # on the task loop
        result, exc = await call_async(self._spec.handler, self._ctx)
        try:
            outcome = outcome_of(
                result,
                exc,
                policy=self._spec.retry,
                attempt=self._ctx.attempt,
                max_attempts=self._max_attempts,
                limit=self._limit,
                debug=self._debug,
            )
        except Exception as failure:  # an exception that cannot even be described
            self._control.call_soon_threadsafe(_fail, self._outcome, failure)
            return
        with contextlib.suppress(RuntimeError):  # the worker's loop is closed
            self._control.call_soon_threadsafe(_settle, self._outcome, outcome)

    async def wait(self) -> Outcome:
        return await asyncio.shield(self._outcome)

    def done(self) -> bool:
        return self._outcome.done()

    async def stop(self, *, grace: bool = True) -> None:
        with contextlib.suppress(RuntimeError):  # the task loop is closed
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # on the task loop
        if self._task is not None:
            self._task.cancel()


class ThreadAttempt:
    """A handler on a daemon thread of its own (an async one on a loop of its
    own there). `finished` completes when the thread returns: an abandoned
    thread keeps its worker slot until then."""

    def __init__(
        self,
        spec: TaskSpec,
        ctx: RunContext,
        max_attempts: int,
        limit: int,
        *,
        debug: bool = False,
    ) -> None:
        self._spec = spec
        self._ctx = ctx
        self._max_attempts = max_attempts
        self._limit = limit
        self._debug = debug
        self._control = asyncio.get_running_loop()
        self._outcome: asyncio.Future[Outcome] = self._control.create_future()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(target=self._main, daemon=True, name=f"task-{spec.name}")
        thread.start()

    def _main(self) -> None:
        try:
            result, exc = call_blocking(self._spec.handler, self._ctx)
            outcome = outcome_of(
                result,
                exc,
                policy=self._spec.retry,
                attempt=self._ctx.attempt,
                max_attempts=self._max_attempts,
                limit=self._limit,
                debug=self._debug,
            )
            with contextlib.suppress(RuntimeError):  # the worker's loop is closed
                self._control.call_soon_threadsafe(_settle, self._outcome, outcome)
        finally:
            self.finished.set_result(None)

    async def wait(self) -> Outcome:
        return await asyncio.shield(self._outcome)

    def done(self) -> bool:
        return self._outcome.done()

    async def stop(self, *, grace: bool = True) -> None:
        """A thread cannot be stopped: it is abandoned (see `finished`)."""


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _fail(future: asyncio.Future[Outcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class AttemptRunner:
    """Starts attempts; owns the task loop and the process launcher."""

    def __init__(self, registry: TaskRegistry, *, kill_grace: float, log_level: str) -> None:
        self.kill_grace = kill_grace
        self.log_level = log_level
        self._process_specs = [s for s in registry.specs if s.runs_in == "process"]
        for spec in self._process_specs:
            check_process_handler(spec)
        self.launcher = ProcessLauncher(sorted({s.handler.__module__ for s in self._process_specs}))
        self.task_loop = TaskLoop()

    @property
    def uses_processes(self) -> bool:
        return bool(self._process_specs)

    async def start(
        self,
        spec: TaskSpec,
        ctx: RunContext,
        *,
        max_attempts: int,
        limit: int,
        debug: bool = False,
    ) -> RunningAttempt:
        """Start an attempt whose outcome (a result or an error) is made within
        `limit` bytes, an error with a DebugInfo if `debug` (--debug-errors).
        Raises only if a task process cannot be started."""
        mode = spec.runs_in
        if mode == "inline":
            return InlineAttempt(self.task_loop, spec, ctx, max_attempts, limit, debug=debug)
        if mode == "thread":
            return ThreadAttempt(spec, ctx, max_attempts, limit, debug=debug)
        attempt = ProcessAttempt(
            self.launcher,
            spec,
            ctx,
            max_attempts=max_attempts,
            limit=limit,
            kill_grace=self.kill_grace,
            log_level=self.log_level,
            debug=debug,
        )
        await attempt.start()
        return attempt

    def close(self) -> None:
        self.task_loop.close()
