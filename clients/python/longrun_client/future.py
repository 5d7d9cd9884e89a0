"""The Operation future: follow one google.longrunning.Operation to its end.

Waiting is a loop of WaitOperation long polls (`WaitPolicy.long_poll` seconds
each, 1 s while progress callbacks are registered so progress is seen), so the
caller learns of completion as soon as the server does: there is no polling
interval. A server answering WaitOperation with UNIMPLEMENTED is followed with
GetOperation polls and exponential backoff instead (remembered per client).

The future talks to the server through a transport (`OperationsTransport`):
three callables and a flag, so tests can feed it a fixed sequence of states.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2

from longrun.v1 import jobs_pb2
from longrun_client.codec import unpack_any, unpack_as
from longrun_client.errors import (
    DeadlineExceeded,
    LongrunClientError,
    OperationError,
    Unavailable,
    Unimplemented,
    operation_error,
)

log = logging.getLogger("longrun.client")

R = TypeVar("R")
ProgressCallback = Callable[[Any], None]


@dataclass(frozen=True)
class WaitPolicy:
    """How a future waits. The server's own limit on one WaitOperation
    (`--max-wait`) and the RPC deadline are honoured too."""

    #: Seconds one WaitOperation may last when nobody watches progress.
    long_poll: float = 30.0
    #: Seconds per WaitOperation (and most between polls) with progress callbacks.
    progress_poll: float = 1.0
    #: GetOperation fallback and retries after UNAVAILABLE: first pause, growth, cap.
    poll_initial: float = 0.2
    poll_multiplier: float = 1.5
    poll_maximum: float = 10.0

    def __post_init__(self) -> None:
        if min(self.long_poll, self.progress_poll, self.poll_initial) <= 0:
            raise ValueError("long_poll, progress_poll and poll_initial must be positive")
        if self.poll_multiplier < 1 or self.poll_maximum < self.poll_initial:
            raise ValueError("need poll_multiplier >= 1 and poll_maximum >= poll_initial")


class OperationsTransport(Protocol):
    """What a future needs from a client. Each method raises `ServiceError`s.
    `wait_supported` starts True and is cleared by the first future that finds
    WaitOperation UNIMPLEMENTED."""

    wait_supported: bool

    def get(self, name: str) -> operations_pb2.Operation: ...

    def wait(self, name: str, timeout: float) -> operations_pb2.Operation: ...

    def cancel(self, name: str) -> None: ...


def progress_key(metadata: Any) -> tuple[Any, ...] | None:
    """What counts as a progress change: state, percent and message."""
    if metadata is None:
        return None
    return tuple(
        getattr(metadata, field, None)
        for field in ("state", "progress_percent", "progress_message")
    )


class FutureState(Generic[R]):
    """What the sync and async futures share: the latest Operation, unpacking,
    and callback bookkeeping. No I/O here."""

    def __init__(
        self,
        operation: operations_pb2.Operation,
        *,
        response_type: type[Message] | None,
        metadata_type: type[Message] | None,
        policy: WaitPolicy,
    ) -> None:
        if not operation.name:
            raise ValueError("the operation has no name")
        self._operation = operation
        self._response_type = response_type
        self._metadata_type = metadata_type
        self._policy = policy
        self._lock = threading.Lock()
        self._progress_callbacks: list[ProgressCallback] = []
        self._last_progress = progress_key(self.metadata)
        self._delay = policy.poll_initial

    @property
    def name(self) -> str:
        return str(self._operation.name)

    @property
    def operation(self) -> operations_pb2.Operation:
        """The latest Operation seen (a copy: changing it changes nothing here)."""
        with self._lock:
            copy = operations_pb2.Operation()
            copy.CopyFrom(self._operation)
            return copy

    @property
    def metadata(self) -> Any:
        """The latest metadata, unpacked as `metadata_type` (JobMetadata unless
        told otherwise); with metadata_type=None, unpacked by its type URL.
        None when the operation has no metadata of that type."""
        packed: any_pb2.Any = self._operation.metadata
        if not self._operation.HasField("metadata"):
            return None
        if self._metadata_type is None:
            return unpack_any(packed)
        if packed.TypeName() != self._metadata_type.DESCRIPTOR.full_name:
            return None
        return unpack_as(packed, self._metadata_type)

    def _known_done(self) -> bool:
        return bool(self._operation.done)

    def _known_cancelled(self) -> bool:
        op = self._operation
        return bool(op.done and op.HasField("error") and op.error.code == code_pb2.CANCELLED)

    def _apply(self, operation: operations_pb2.Operation) -> tuple[list[ProgressCallback], Any]:
        """Take a fresher Operation. Returns the progress callbacks to call (outside
        any lock) and the metadata to call them with. A done operation never goes
        back to not done."""
        with self._lock:
            if self._operation.done or operation.name != self._operation.name:
                return [], None
            self._operation = operation
            metadata = self.metadata
            key = progress_key(metadata)
            if key is None or key == self._last_progress:
                return [], None
            self._last_progress = key
            return list(self._progress_callbacks), metadata

    @staticmethod
    def _call_all(callbacks: Sequence[Callable[[Any], None]], arg: Any) -> None:
        for callback in callbacks:
            try:
                callback(arg)
            except Exception:
                log.exception("operation callback %r failed", callback)

    def _exception(self) -> OperationError | None:
        op = self._operation
        return operation_error(op) if op.HasField("error") else None

    def _outcome(self) -> R:
        """The result of a done operation, or its error raised. One place decides:
        response, error, or neither (a broken server)."""
        op = self._operation
        if op.HasField("error"):
            raise operation_error(op)
        if op.HasField("response"):
            if self._response_type is not None:
                result: R = unpack_as(op.response, self._response_type)  # type: ignore[assignment]
                return result
            value: R = unpack_any(op.response)
            return value
        raise LongrunClientError(f"{op.name} is done but has neither response nor error")

    def _wait_budget(self, remaining: float | None) -> float:
        budget = self._policy.progress_poll if self._progress_callbacks else self._policy.long_poll
        return budget if remaining is None else max(0.0, min(budget, remaining))

    def _next_pause(self, remaining: float | None) -> float:
        pause = self._delay
        if self._progress_callbacks:
            pause = min(pause, self._policy.progress_poll)
        if remaining is not None:
            pause = max(0.0, min(pause, remaining))
        self._delay = min(self._delay * self._policy.poll_multiplier, self._policy.poll_maximum)
        return pause


def time_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class OperationFuture(FutureState[R]):
    """A google.longrunning.Operation followed to its end (thread-safe).

    `result()` returns the unpacked response: a `response_type` message when one
    was given, else a dict for Struct (a Python value for Value, a message for
    another type this process knows). A failed operation raises `JobFailed`, a
    cancelled one `JobCancelled`, both carrying the google.rpc.Status."""

    def __init__(
        self,
        operation: operations_pb2.Operation,
        transport: OperationsTransport,
        *,
        response_type: type[Message] | None = None,
        metadata_type: type[Message] | None = jobs_pb2.JobMetadata,
        policy: WaitPolicy | None = None,
    ) -> None:
        super().__init__(
            operation,
            response_type=response_type,
            metadata_type=metadata_type,
            policy=policy or WaitPolicy(),
        )
        self._transport = transport
        self._done_callbacks: list[Callable[[OperationFuture[R]], None]] = []
        self._settled = threading.Event()  # done, or the watcher stopped on an error
        self._watcher: threading.Thread | None = None
        self._watch_error: BaseException | None = None
        if operation.done:
            self._settled.set()

    def __repr__(self) -> str:
        return f"<OperationFuture {self.name} done={self._operation.done}>"

    # -- queries --------------------------------------------------------------

    def done(self) -> bool:
        """True once the operation is done (asks the server unless already known)."""
        if not self._known_done():
            self._update(self._transport.get(self.name))
        return self._known_done()

    def cancelled(self) -> bool:
        """True if the operation ended CANCELLED (asks the server unless done)."""
        self.done()
        return self._known_cancelled()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until done or `timeout` seconds pass; True when done. RPC errors
        other than UNAVAILABLE / DEADLINE_EXCEEDED (retried) propagate."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._watcher is not None:
            self._settled.wait(timeout)
            if self._watch_error is not None and not self._known_done():
                raise self._watch_error
            return self._known_done()
        while not self._known_done():
            remaining = time_left(deadline)
            if remaining is not None and remaining <= 0:
                return False
            self._step(remaining)
        return True

    def result(self, timeout: float | None = None) -> R:
        """The unpacked response, once done. Raises TimeoutError when `timeout`
        seconds pass first, JobFailed / JobCancelled when the operation failed."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self.name} is not done after {timeout}s")
        return self._outcome()

    def exception(self, timeout: float | None = None) -> OperationError | None:
        """The JobFailed / JobCancelled the operation ended with, or None."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self.name} is not done after {timeout}s")
        return self._exception()

    # -- actions --------------------------------------------------------------

    def cancel(self) -> bool:
        """Ask the server to cancel (best effort, asynchronous: the operation ends
        CANCELLED unless it finished first). False if it was already known done."""
        if self._known_done():
            return False
        self._transport.cancel(self.name)
        return True

    def add_progress_callback(self, fn: ProgressCallback) -> None:
        """Call `fn(metadata)` each time state, progress_percent or progress_message
        change. Waits use short long-polls from now on, and a background thread
        follows the operation so callbacks come without calling result()."""
        with self._lock:
            self._progress_callbacks.append(fn)
        self._ensure_watcher()

    def add_done_callback(self, fn: Callable[[OperationFuture[R]], None]) -> None:
        """Call `fn(self)` once done: at once if it already is, else from a
        background thread that follows the operation."""
        with self._lock:
            pending = not self._operation.done
            if pending:
                self._done_callbacks.append(fn)
        if pending:
            self._ensure_watcher()
        else:
            self._call_all([fn], self)

    # -- machinery ------------------------------------------------------------

    def _update(self, operation: operations_pb2.Operation) -> None:
        was_done = self._known_done()
        callbacks, metadata = self._apply(operation)
        self._call_all(callbacks, metadata)
        if self._known_done() and not was_done:
            with self._lock:
                done_callbacks, self._done_callbacks = self._done_callbacks, []
            self._settled.set()
            self._call_all(done_callbacks, self)

    def _pause(self, remaining: float | None) -> None:
        # Wakes early if another thread sees the operation finish.
        self._settled.wait(self._next_pause(remaining))

    def _step(self, remaining: float | None) -> None:
        """One round trip: a WaitOperation long poll, or (fallback) a GetOperation
        followed by a backoff pause."""
        transport = self._transport
        if transport.wait_supported:
            try:
                operation = transport.wait(self.name, self._wait_budget(remaining))
            except Unimplemented:
                log.info("WaitOperation is unimplemented; polling GetOperation instead")
                transport.wait_supported = False
                return
            except (Unavailable, DeadlineExceeded) as exc:
                log.debug("retrying after %s", exc)
                self._pause(remaining)
                return
            self._delay = self._policy.poll_initial
            self._update(operation)
            return
        try:
            self._update(transport.get(self.name))
        except (Unavailable, DeadlineExceeded) as exc:
            log.debug("retrying after %s", exc)
        if not self._known_done():
            self._pause(remaining)

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None or self._operation.done:
                return
            self._watcher = threading.Thread(
                target=self._watch, name=f"longrun-watch-{self.name}", daemon=True
            )
        self._watcher.start()

    def _watch(self) -> None:
        try:
            while not self._known_done():
                self._step(None)
        except BaseException as exc:  # handed to whoever waits
            self._watch_error = exc
            log.warning("stopped following %s: %s", self.name, exc)
        finally:
            self._settled.set()
