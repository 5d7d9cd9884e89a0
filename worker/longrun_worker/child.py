"""The task process: runs one attempt of one handler and tells the worker its
outcome (protocol: longrun_worker.frames). Started by the worker through the
multiprocessing fork server (longrun_worker.isolation); `main` is its target.

It leads a process group of its own, so the worker can signal everything the
task started at once, and it is the subreaper of its descendants (Linux):
when the handler is done it kills what is left of its group and reaps every
child, so a task that forks leaves neither processes nor zombies behind. If
the worker goes away (its end of the socket closes), the task process kills
its group at once: an orphaned attempt never runs on beside a takeover.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from google.rpc import code_pb2, status_pb2

from longrun_core.observability.json_logs import bind_attempt, configure_logging
from longrun_core.tasks import RetryPolicy
from longrun_worker import frames
from longrun_worker.calling import call_blocking
from longrun_worker.context import SharedFlag
from longrun_worker.outcome import Outcome, outcome_of

#: How long the task process waits for the children it killed to be reaped.
REAP_WAIT = 2.0
_PR_SET_CHILD_SUBREAPER = 36


class ChildContext:
    """Implements `longrun_core.tasks.TaskContext` inside the task process."""

    def __init__(self, channel: frames.Channel, request: dict[str, Any]) -> None:
        self.operation: str = request["operation"]
        self.attempt: int = request["attempt"]
        self.params: dict[str, Any] = request["params"]
        self._channel = channel
        self._cancel = SharedFlag()

    async def progress(self, percent: int, message: str = "") -> None:
        self.progress_threadsafe(percent, message)

    def progress_threadsafe(self, percent: int, message: str = "") -> None:
        body = {"percent": max(0, min(100, int(percent))), "message": message[:1000]}
        self._channel.send(frames.PROGRESS, json.dumps(body).encode())

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def wait_cancelled(self, timeout: float | None = None) -> bool:
        return await self._cancel.wait(timeout)

    def cancel(self) -> None:
        self._cancel.set()


def main(sock: socket.socket) -> None:
    """Run one attempt (the multiprocessing target). Never returns: the
    process ends with os._exit once the outcome is sent and the descendants
    are gone, so neither the task's atexit hooks nor its stray threads can
    keep it alive."""
    os.setsid()
    _become_subreaper()
    channel = frames.Channel(sock)
    channel.send(frames.HELLO, json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0)}).encode())
    first = channel.recv()
    if first is None or first[0] != frames.REQUEST:
        os._exit(2)
    request = json.loads(first[1])
    # The worker's --log-format reaches task processes as LONGRUN_LOG_FORMAT.
    configure_logging(
        str(request.get("log_level", "INFO")), os.environ.get("LONGRUN_LOG_FORMAT", "text")
    )
    bind_attempt(str(request["operation"]), int(request["attempt"]))
    ctx = ChildContext(channel, request)
    threading.Thread(target=_listen, args=(channel, ctx), daemon=True, name="worker").start()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        outcome = run_request(request, ctx)
    except BaseException as exc:  # making the outcome failed (an unprintable exception...)
        outcome = Outcome(error=_plain_error(exc))
    try:
        if outcome.response is not None:
            channel.send(frames.RESULT, outcome.response)
        else:
            assert outcome.error is not None
            channel.send(frames.ERROR, bytes([outcome.retryable]) + outcome.error)
    except frames.FrameTooLarge as exc:
        too_big = outcome_of(
            None,
            exc,
            policy=_NO_RETRY,
            attempt=int(request["attempt"]),
            max_attempts=int(request["max_attempts"]),
            limit=int(request["limit"]),
            debug=bool(request.get("debug", False)),
        )
        assert too_big.error is not None
        channel.send(frames.ERROR, b"\x00" + too_big.error)
    end_descendants()
    _exit(0)


def run_request(request: dict[str, Any], ctx: ChildContext) -> Outcome:
    """Call the handler the request names and make its outcome."""
    attempt, max_attempts = int(request["attempt"]), int(request["max_attempts"])
    limit = int(request["limit"])  # the worker's outcome limit for this attempt
    debug = bool(request.get("debug", False))  # the worker's --debug-errors
    try:
        handler = resolve(request["handler"])
        policy = RetryPolicy(retry_on=tuple(resolve(path) for path in request["retry_on"]))
    except (ImportError, AttributeError, ValueError) as missing:
        return outcome_of(
            None,
            missing,
            policy=_NO_RETRY,
            attempt=attempt,
            max_attempts=max_attempts,
            limit=limit,
            debug=debug,
        )
    result, exc = call_blocking(handler, ctx)
    return outcome_of(
        result,
        exc,
        policy=policy,
        attempt=attempt,
        max_attempts=max_attempts,
        limit=limit,
        debug=debug,
    )


def _plain_error(exc: BaseException) -> bytes:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # even its str() fails
        text = type(exc).__name__
    data: bytes = status_pb2.Status(
        code=code_pb2.UNKNOWN, message=f"the task's outcome could not be recorded: {text}"[:2000]
    ).SerializeToString()
    return data


def resolve(path: str) -> Any:
    """The object at "module:qualified.name"."""
    module_name, _, qualname = path.partition(":")
    if not qualname:
        raise ValueError(f"{path!r} is not module:name")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def path_of(obj: Any) -> str:
    """The "module:qualified.name" that `resolve` turns back into `obj`."""
    return f"{obj.__module__}:{obj.__qualname__}"


def _listen(channel: frames.Channel, ctx: ChildContext) -> None:
    """Frames from the worker; its end closing means it is gone."""
    while True:
        try:
            frame = channel.recv()
        except frames.FrameTooLarge:
            frame = None
        if frame is None:
            _die()
        elif frame[0] == frames.CANCEL:
            ctx.cancel()


def _die() -> None:
    """The worker is gone: end this attempt and everything it started, now."""
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)
    os._exit(137)


def _on_sigterm(signum: int, frame: object) -> None:
    end_descendants()
    _exit(128 + signal.SIGTERM)


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def end_descendants() -> None:
    """Kill the rest of this process group and reap every child (including
    orphans this subreaper adopted), waiting at most REAP_WAIT seconds."""
    if _SUBREAPER and not _has_children():
        return  # a subreaper without children has no descendants: nothing to scan
    me = os.getpid()
    for pid in group_members(os.getpgid(0)):
        if pid != me:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + REAP_WAIT
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


def group_members(pgid: int) -> list[int]:
    """Pids of the processes in group `pgid` (read from /proc; [] elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


_SUBREAPER = False


def _become_subreaper() -> None:
    global _SUBREAPER
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        _SUBREAPER = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


_NO_RETRY = RetryPolicy(max_attempts=1, retry_on=())
