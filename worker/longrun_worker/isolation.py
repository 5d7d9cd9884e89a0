"""Running an attempt in a task process of its own (isolation="process").

Why the multiprocessing fork server: each attempt gets a fresh process (a
crash, a hang, a blocked loop or a leak dies with it), forked from a small
server process that has the task modules imported already, so an attempt
costs a fork (a few ms; see bench/isolation_overhead.py), not an interpreter
start and the imports (which is what the 'spawn' context costs). The fork
server is a single-threaded process started by exec, so forking it is safe,
unlike forking the worker (gRPC and SQLite threads). Nothing crosses the
boundary as a pickle of user data: the socket pair carries JSON and
protobuf frames (longrun_worker.frames).

Stopping: SIGTERM to the task's process group, SIGKILL after `kill_grace`.
After the task process ends, whatever is left of its group is killed too.
The fork server reaps the task processes; a task process that ends by itself
first kills and reaps its own descendants (longrun_worker.child); those of a
killed one are orphans that init reaps. A task process whose worker dies
kills its group (its end of the socket closes).

The fork server is multiprocessing's, one per process: the first launcher to
start it chooses its preloaded modules (later ones' modules are imported by
each child instead). It imports the worker's main module, as multiprocessing
requires: a program that runs a Worker itself guards its entry point with
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from google.rpc import code_pb2

from longrun_core.errors import LongrunError
from longrun_core.tasks import TaskSpec
from longrun_worker import child, frames
from longrun_worker.context import RunContext
from longrun_worker.outcome import Outcome, TaskCrashed, describe_exit, outcome_of

T = TypeVar("T")

log = logging.getLogger("longrun.worker")

#: Tells the fork server the name the worker's main module was run under
#: (longrun_worker.forkserver_ready).
MAIN_VAR = "LONGRUN_FORKSERVER_MAIN"

#: How long to wait for a task process to end after SIGKILL before giving
#: up on it (a process in uninterruptible sleep); the fork server reaps it.
KILL_WAIT = 5.0


class ProcessLauncher:
    """Starts task processes from the fork server, which imports `preload`
    (the task modules) once."""

    def __init__(self, preload: Iterable[str] = ()) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._main = _main_module_name()
        self._preload = [
            "__main__",
            *([self._main] if self._main else []),
            "longrun_worker.child",
            *dict.fromkeys(preload),
            "longrun_worker.forkserver_ready",  # last: see its docstring
        ]
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the fork server if it is not (blocks: call it off the loop).
        The fork server is one per process (multiprocessing's): the first
        launcher to start it chooses what it preloads."""
        with self._lock:
            self._context.set_forkserver_preload(self._preload)
            saved = os.environ.get(MAIN_VAR)
            os.environ[MAIN_VAR] = self._main or ""
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                if saved is None:
                    del os.environ[MAIN_VAR]
                else:
                    os.environ[MAIN_VAR] = saved

    def process(self, sock: socket.socket, name: str) -> BaseProcess:
        proc: BaseProcess = self._context.Process(  # type: ignore[attr-defined]
            target=child.main, args=(sock,), name=name, daemon=True
        )
        return proc


def _main_module_name() -> str | None:
    """The name `__main__` was run under (python -m NAME), if it was, and if
    multiprocessing would import it again in each child (NAME not ending in
    `.__main__`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or name == "__main__" or name.endswith(".__main__"):
        return None
    return name


def check_process_handler(spec: TaskSpec) -> None:
    """A process-isolated handler must be findable by name in the task
    process; ValueError saying what to do if it is not."""
    handler = spec.handler
    try:
        found = child.resolve(child.path_of(handler))
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not handler:
        raise ValueError(
            f"task {spec.name!r} runs in a child process (isolation='process', the default for "
            "sync handlers), so its handler must be a module-level function; declare it with "
            "isolation='thread' to run it in the worker's process instead"
        )
    for kind in spec.retry.retry_on:
        if child.resolve(child.path_of(kind)) is not kind:
            raise ValueError(f"task {spec.name!r}: retry_on class {kind!r} is not importable")


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a short blocking call on a daemon thread of its own (never on a
    pool that process exit would wait for)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, daemon=True, name="longrun-spawn").start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class ProcessAttempt:
    """One attempt in a task process (see the module docstring)."""

    def __init__(
        self,
        launcher: ProcessLauncher,
        spec: TaskSpec,
        ctx: RunContext,
        *,
        max_attempts: int,
        limit: int,
        kill_grace: float,
        log_level: str,
        debug: bool = False,
    ) -> None:
        self._launcher = launcher
        self._spec = spec
        self._ctx = ctx
        self._max_attempts = max_attempts
        self._limit = limit
        self._debug = debug
        self._kill_grace = kill_grace
        self._request = {
            "operation": ctx.operation,
            "attempt": ctx.attempt,
            "max_attempts": max_attempts,
            "limit": limit,
            "debug": debug,
            "params": ctx.params,
            "handler": child.path_of(spec.handler),
            "retry_on": [child.path_of(kind) for kind in spec.retry.retry_on],
            "log_level": log_level,
        }
        self._proc: BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._pgid: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._outcome: Outcome | None = None
        self._exited: asyncio.Future[int | None] | None = None
        self._done: asyncio.Task[Outcome] | None = None

    @property
    def pid(self) -> int | None:
        """The task process's pid, once started."""
        return self._pid

    async def start(self) -> None:
        """Start the task process and send it the request. Raises if the
        process cannot be started (the fork server is broken, say)."""
        loop = asyncio.get_running_loop()
        parent, child_end = socket.socketpair()
        try:
            proc = self._launcher.process(child_end, f"longrun-task-{self._spec.name}")

            def spawn() -> None:
                self._launcher.ensure_running()
                proc.start()

            await in_thread(spawn)
        except BaseException:
            parent.close()
            raise
        finally:
            child_end.close()
        self._proc, self._pid, self._loop = proc, proc.pid, loop
        self._exited = loop.create_future()
        loop.add_reader(proc.sentinel, self._on_exit)
        reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        self._writer.write(frames.encode(frames.REQUEST, json.dumps(self._request).encode()))
        self._ctx.on_cancel(self._cancel_soon)
        self._done = asyncio.create_task(self._run(reader))

    def _on_exit(self) -> None:
        assert self._proc is not None and self._exited is not None
        asyncio.get_running_loop().remove_reader(self._proc.sentinel)
        self._proc.join(0)  # reads the exit code the fork server sent
        if not self._exited.done():
            self._exited.set_result(self._proc.exitcode)

    def _cancel_soon(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._send, frames.CANCEL)

    def _send(self, kind: int) -> None:
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(frames.encode(kind))

    async def _run(self, reader: asyncio.StreamReader) -> Outcome:
        assert self._exited is not None
        try:
            await self._read(reader)
        except Exception as exc:  # a malformed frame: the process is not to be trusted
            self._outcome = outcome_of(
                None,
                TaskCrashed(f"the task process sent a malformed frame: {exc!r}"[:500]),
                policy=self._spec.retry,
                attempt=self._ctx.attempt,
                max_attempts=self._max_attempts,
                limit=self._limit,
                debug=self._debug,
            )
        finally:
            if self._outcome is not None:
                # Sent its outcome: it ends by itself at once, or is made to.
                if not await self._wait_exit(self._kill_grace):
                    await self._kill()
            else:
                await asyncio.shield(self._exited)
            self._end_group()
            if self._writer is not None:
                self._writer.close()
            if self._exited.done() and self._proc is not None:
                with contextlib.suppress(ValueError):
                    self._proc.close()
        if self._outcome is not None:
            return self._outcome
        exitcode = self._exited.result()
        crash = TaskCrashed(f"the task process {describe_exit(exitcode)} without an outcome")
        return outcome_of(
            None,
            crash,
            policy=self._spec.retry,
            attempt=self._ctx.attempt,
            max_attempts=self._max_attempts,
            limit=self._limit,
            debug=self._debug,
        )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                frame = await frames.read_frame(reader)
            except frames.FrameTooLarge as exc:
                self._outcome = outcome_of(
                    None,
                    exc,
                    policy=self._spec.retry,
                    attempt=self._ctx.attempt,
                    max_attempts=self._max_attempts,
                    limit=self._limit,
                    debug=self._debug,
                    code=code_pb2.RESOURCE_EXHAUSTED,
                )
                return
            except OSError:
                return
            if frame is None:
                return
            kind, payload = frame
            if kind == frames.HELLO:
                self._pgid = int(json.loads(payload)["pgid"])
            elif kind == frames.PROGRESS:
                body = json.loads(payload)
                try:
                    await self._ctx.progress(int(body["percent"]), str(body["message"]))
                except LongrunError as exc:  # the store is down: this progress is lost
                    log.warning("progress of %s not recorded: %s", self._ctx.operation, exc)
            elif kind == frames.RESULT:
                self._outcome = Outcome(response=payload)
                return
            elif kind == frames.ERROR and payload:
                self._outcome = Outcome(error=payload[1:], retryable=payload[0] == 1)
                return

    async def wait(self) -> Outcome:
        """The attempt's outcome, once its process has ended. Cancelling this
        wait leaves the process alone (`stop` ends it)."""
        assert self._done is not None, "not started"
        return await asyncio.shield(self._done)

    def done(self) -> bool:
        return self._done is not None and self._done.done()

    async def stop(self, *, grace: bool = True) -> None:
        """End the task process: SIGTERM to its group, SIGKILL after
        `kill_grace` (at once with grace=False); returns once it is gone (or
        after KILL_WAIT more, if even SIGKILL cannot end it yet)."""
        if self._exited is None or self._exited.done():
            return
        if grace and self._kill_grace > 0:
            self._signal(signal.SIGTERM)
            if await self._wait_exit(self._kill_grace):
                return
        await self._kill()

    async def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        await self._wait_exit(KILL_WAIT)

    async def _wait_exit(self, timeout: float) -> bool:
        assert self._exited is not None
        done, _ = await asyncio.wait({self._exited}, timeout=timeout)
        return bool(done)

    def _signal(self, sig: int) -> None:
        if self._exited is None or self._exited.done() or self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._pgid is not None:
                os.killpg(self._pgid, sig)
            elif self._pid is not None:
                os.kill(self._pid, sig)

    def _end_group(self) -> None:
        """Kill what the task left running in its process group."""
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGKILL)
