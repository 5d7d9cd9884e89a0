"""The asyncio client: the same surface as `clients.Client`, awaited.

from longrun_client import AsyncClient

async with AsyncClient("localhost:50051") as client:
    future = await client.submit("sleep", {"worktime": 2})
    print(await future.result(timeout=60))
    async for op in client.list(filter="done:false"):
        print(op.name)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, overload

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf.message import Message

from longrun.v1 import jobs_pb2, jobs_pb2_grpc, queues_pb2, queues_pb2_grpc
from longrun_client.client import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    RETRY_PAUSE,
    WAIT_DEADLINE_MARGIN,
    batch_request,
    job_request,
    list_name,
    wait_request,
)
from longrun_client.credentials import ChannelSecurity, balancing_options
from longrun_client.errors import (
    DeadlineExceeded,
    OperationError,
    ServiceError,
    Unavailable,
    Unimplemented,
)
from longrun_client.future import FutureState, ProgressCallback, WaitPolicy, time_left
from longrun_client.queues import (
    JobOptions,
    LimitOptions,
    RetryOptions,
    create_request,
    queue_path,
    stats_mask,
    update_request,
)
from longrun_client.tracing import trace_metadata

log = logging.getLogger("longrun.client")

R = TypeVar("R")
M = TypeVar("M", bound=Message)
T = TypeVar("T")


class AsyncOperationsTransport(Protocol):
    """The async twin of longrun_client.future.OperationsTransport."""

    wait_supported: bool

    async def get(self, name: str) -> operations_pb2.Operation: ...

    async def wait(self, name: str, timeout: float) -> operations_pb2.Operation: ...

    async def cancel(self, name: str) -> None: ...


class AsyncOperationFuture(FutureState[R]):
    """OperationFuture for asyncio: `await result()`, `await done()`... Use it
    from one event loop. Callbacks are plain functions, called in the loop."""

    def __init__(
        self,
        operation: operations_pb2.Operation,
        transport: AsyncOperationsTransport,
        *,
        response_type: type[Message] | None = None,
        metadata_type: type[Message] | None = jobs_pb2.JobMetadata,
        policy: WaitPolicy | None = None,
        watchers: set[asyncio.Task[None]] | None = None,
    ) -> None:
        super().__init__(
            operation,
            response_type=response_type,
            metadata_type=metadata_type,
            policy=policy or WaitPolicy(),
        )
        self._transport = transport
        self._done_callbacks: list[Callable[[AsyncOperationFuture[R]], None]] = []
        self._settled = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._watch_error: BaseException | None = None
        self._watchers = watchers if watchers is not None else set()
        if operation.done:
            self._settled.set()

    def __repr__(self) -> str:
        return f"<AsyncOperationFuture {self.name} done={self._operation.done}>"

    async def done(self) -> bool:
        """True once the operation is done (asks the server unless already known)."""
        if not self._known_done():
            self._update(await self._transport.get(self.name))
        return self._known_done()

    async def cancelled(self) -> bool:
        """True if the operation ended CANCELLED (asks the server unless done)."""
        await self.done()
        return self._known_cancelled()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until done or `timeout` seconds pass; True when done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._watcher is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._settled.wait()
            except TimeoutError:
                return False
            if self._watch_error is not None and not self._known_done():
                raise self._watch_error
            return True
        while not self._known_done():
            remaining = time_left(deadline)
            if remaining is not None and remaining <= 0:
                return False
            await self._step(remaining)
        return True

    async def result(self, timeout: float | None = None) -> R:
        """The unpacked response, once done; TimeoutError, JobFailed, JobCancelled
        as for OperationFuture.result."""
        if not await self.wait(timeout):
            raise TimeoutError(f"{self.name} is not done after {timeout}s")
        return self._outcome()

    async def exception(self, timeout: float | None = None) -> OperationError | None:
        if not await self.wait(timeout):
            raise TimeoutError(f"{self.name} is not done after {timeout}s")
        return self._exception()

    async def cancel(self) -> bool:
        """Ask the server to cancel; False if the operation was known done."""
        if self._known_done():
            return False
        await self._transport.cancel(self.name)
        return True

    def add_progress_callback(self, fn: ProgressCallback) -> None:
        """Call `fn(metadata)` when state or progress change; a task in the
        running loop follows the operation from now on."""
        self._progress_callbacks.append(fn)
        self._ensure_watcher()

    def add_done_callback(self, fn: Callable[[AsyncOperationFuture[R]], None]) -> None:
        """Call `fn(self)` once done (at once if it already is)."""
        if self._known_done():
            self._call_all([fn], self)
            return
        self._done_callbacks.append(fn)
        self._ensure_watcher()

    def _update(self, operation: operations_pb2.Operation) -> None:
        was_done = self._known_done()
        callbacks, metadata = self._apply(operation)
        self._call_all(callbacks, metadata)
        if self._known_done() and not was_done:
            done_callbacks, self._done_callbacks = self._done_callbacks, []
            self._settled.set()
            self._call_all(done_callbacks, self)

    async def _pause(self, remaining: float | None) -> None:
        try:
            async with asyncio.timeout(self._next_pause(remaining)):
                await self._settled.wait()
        except TimeoutError:
            pass

    async def _step(self, remaining: float | None) -> None:
        transport = self._transport
        if transport.wait_supported:
            try:
                operation = await transport.wait(self.name, self._wait_budget(remaining))
            except Unimplemented:
                log.info("WaitOperation is unimplemented; polling GetOperation instead")
                transport.wait_supported = False
                return
            except (Unavailable, DeadlineExceeded) as exc:
                log.debug("retrying after %s", exc)
                await self._pause(remaining)
                return
            self._delay = self._policy.poll_initial
            self._update(operation)
            return
        try:
            self._update(await transport.get(self.name))
        except (Unavailable, DeadlineExceeded) as exc:
            log.debug("retrying after %s", exc)
        if not self._known_done():
            await self._pause(remaining)

    def _ensure_watcher(self) -> None:
        if self._watcher is not None or self._known_done():
            return
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name=f"longrun-watch-{self.name}"
        )
        self._watchers.add(self._watcher)
        self._watcher.add_done_callback(self._watchers.discard)

    async def _watch(self) -> None:
        try:
            while not self._known_done():
                await self._step(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to whoever waits
            self._watch_error = exc
            log.warning("stopped following %s: %s", self.name, exc)
        finally:
            self._settled.set()


class _AsyncTransport:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        timeout: float,
        attempts: int,
    ) -> None:
        self.operations = operations_pb2_grpc.OperationsStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.queues = queues_pb2_grpc.QueuesStub(channel)
        self._metadata = tuple(metadata)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.wait_supported = True
        self.watchers: set[asyncio.Task[None]] = set()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The configured metadata plus the calling task's trace context (tracing.py)."""
        return self._metadata + trace_metadata()

    async def call(self, method: Callable[..., Awaitable[T]], request: Message) -> T:
        attempt = 1
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                error = ServiceError.from_grpc(exc)
                if not isinstance(error, Unavailable) or attempt >= self.attempts:
                    raise error from exc
            await asyncio.sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            attempt += 1

    async def get(self, name: str) -> operations_pb2.Operation:
        return await self.call(
            self.operations.GetOperation, operations_pb2.GetOperationRequest(name=name)
        )

    async def wait(self, name: str, timeout: float) -> operations_pb2.Operation:
        try:
            operation: operations_pb2.Operation = await self.operations.WaitOperation(
                wait_request(name, timeout),
                timeout=timeout + WAIT_DEADLINE_MARGIN,
                metadata=self.metadata,
            )
        except grpc.RpcError as exc:
            raise ServiceError.from_grpc(exc) from exc
        return operation

    async def cancel(self, name: str) -> None:
        await self.call(
            self.operations.CancelOperation, operations_pb2.CancelOperationRequest(name=name)
        )


class AsyncClient:
    """`clients.Client` for asyncio; same arguments (`channel` is a grpc.aio
    channel). Create it inside the event loop that uses it."""

    def __init__(
        self,
        target: str | None = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        wait_policy: WaitPolicy | None = None,
        security: ChannelSecurity | None = None,
        project: str | None = None,
    ) -> None:
        if channel is None and not target:
            raise ValueError("give a target (host:port) or a channel")
        if security is not None and (credentials is not None or channel is not None):
            raise ValueError("give security, or credentials / a channel, not both")
        self.target = target
        #: The project `submit` creates in and `list` lists (None: the
        #: server's choice for submit, every project you may see for list).
        self.project = project
        self._own_channel = channel is None
        if channel is None:
            if security is not None:
                channel = security.aio_channel(str(target))
            elif credentials is not None:
                channel = grpc.aio.secure_channel(
                    target, credentials, options=balancing_options(str(target))
                )
            else:
                channel = grpc.aio.insecure_channel(target, options=balancing_options(str(target)))
        self._channel = channel
        self._transport = _AsyncTransport(channel, metadata, timeout, attempts)
        self._policy = wait_policy or WaitPolicy()

    async def close(self) -> None:
        """Stop the futures' background watchers; close the channel if this
        client made it."""
        watchers = list(self._transport.watchers)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._own_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @overload
    async def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[M],
    ) -> AsyncOperationFuture[M]: ...

    @overload
    async def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: None = None,
    ) -> AsyncOperationFuture[Any]: ...

    async def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[Message] | None = None,
    ) -> AsyncOperationFuture[Any]:
        """Create a job; see Client.submit."""
        request = job_request(task, params, request_id, labels, project or self.project)
        if options is not None:
            options.apply(request)
        operation = await self._transport.call(self._transport.jobs.CreateJob, request)
        return self.follow(operation, response_type=response_type)

    async def submit_many(
        self,
        task: str,
        params: Sequence[Mapping[str, Any] | None],
        *,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[Message] | None = None,
    ) -> list[AsyncOperationFuture[Any]]:
        """Create many jobs in one BatchCreateJobs call; see Client.submit_many."""
        request = batch_request(task, params, labels, project or self.project, options)
        response = await self._transport.call(self._transport.jobs.BatchCreateJobs, request)
        return [self.follow(op, response_type=response_type) for op in response.operations]

    def follow(
        self,
        operation: operations_pb2.Operation | str,
        *,
        response_type: type[Message] | None = None,
        metadata_type: type[Message] | None = jobs_pb2.JobMetadata,
    ) -> AsyncOperationFuture[Any]:
        """A future for an existing operation (or its name); see Client.follow."""
        if isinstance(operation, str):
            operation = operations_pb2.Operation(name=operation)
        return AsyncOperationFuture(
            operation,
            self._transport,
            response_type=response_type,
            metadata_type=metadata_type,
            policy=self._policy,
            watchers=self._transport.watchers,
        )

    async def get(self, name: str) -> operations_pb2.Operation:
        return await self._transport.get(name)

    async def list(
        self,
        filter: str | None = None,
        page_size: int | None = None,
        *,
        project: str | None = None,
    ) -> AsyncIterator[operations_pb2.Operation]:
        """ListOperations over every page: `async for op in client.list(...)`."""
        request = operations_pb2.ListOperationsRequest(
            name=list_name(project or self.project), filter=filter or "", page_size=page_size or 0
        )
        while True:
            response: operations_pb2.ListOperationsResponse = await self._transport.call(
                self._transport.operations.ListOperations, request
            )
            for operation in response.operations:
                yield operation
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def cancel(self, name: str) -> None:
        await self._transport.cancel(name)

    async def delete(self, name: str) -> None:
        await self._transport.call(
            self._transport.operations.DeleteOperation,
            operations_pb2.DeleteOperationRequest(name=name),
        )

    async def wait(self, name: str, timeout: float | None = None) -> operations_pb2.Operation:
        """Wait until done or `timeout` seconds pass; the latest state either way."""
        future = self.follow(await self.get(name))
        await future.wait(timeout)
        return future.operation

    # -- Queues (reading: viewer; changing: admin) ---------------------------------

    async def create_queue(
        self,
        queue_id: str,
        *,
        project: str | None = None,
        retry: RetryOptions | None = None,
        limits: LimitOptions | None = None,
    ) -> queues_pb2.Queue:
        """CreateQueue `queue_id` in `project` (default: the client's)."""
        request = create_request(queue_id, project or self.project, retry, limits)
        try:
            queue: queues_pb2.Queue = await self._transport.queues.CreateQueue(
                request, timeout=self._transport.timeout, metadata=self._transport.metadata
            )
        except grpc.RpcError as exc:  # not retried: a lost answer would say ALREADY_EXISTS
            raise ServiceError.from_grpc(exc) from exc
        return queue

    async def get_queue(
        self, queue: str, *, project: str | None = None, stats: bool = False
    ) -> queues_pb2.Queue:
        """GetQueue: `queue` is an id (in `project`, default the client's) or a
        full name; `stats` asks for `Queue.stats` too (see Client.get_queue)."""
        name = queue_path(queue, project or self.project)
        got: queues_pb2.Queue = await self._transport.call(
            self._transport.queues.GetQueue,
            queues_pb2.GetQueueRequest(name=name, read_mask=stats_mask(stats)),
        )
        return got

    async def list_queues(
        self, project: str | None = None, *, stats: bool = False
    ) -> AsyncIterator[queues_pb2.Queue]:
        """The project's queues by id, `default` included (every page, lazily);
        with `Queue.stats` when `stats`."""
        target = project or self.project
        if not target:
            raise ValueError("listing queues needs a project")
        request = queues_pb2.ListQueuesRequest(
            parent=f"projects/{target}", read_mask=stats_mask(stats)
        )
        while True:
            response: queues_pb2.ListQueuesResponse = await self._transport.call(
                self._transport.queues.ListQueues, request
            )
            for queue in response.queues:
                yield queue
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def list_dead_letters(
        self, project: str | None = None, *, page_size: int = 0
    ) -> AsyncIterator[queues_pb2.DeadLetter]:
        """ListDeadLetters, newest first (see Client.list_dead_letters)."""
        target = project or self.project
        if not target:
            raise ValueError("listing dead letters needs a project (or '-')")
        request = queues_pb2.ListDeadLettersRequest(
            parent=f"projects/{target}", page_size=page_size
        )
        while True:
            response: queues_pb2.ListDeadLettersResponse = await self._transport.call(
                self._transport.queues.ListDeadLetters, request
            )
            for letter in response.dead_letters:
                yield letter
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def update_queue(
        self,
        queue: str,
        retry: RetryOptions | None = None,
        *,
        project: str | None = None,
        limits: LimitOptions | None = None,
    ) -> queues_pb2.Queue:
        """UpdateQueue: set the retry and limit fields given in `retry` and
        `limits`, keep the others."""
        request = update_request(queue_path(queue, project or self.project), retry, limits)
        updated: queues_pb2.Queue = await self._transport.call(
            self._transport.queues.UpdateQueue, request
        )
        return updated

    async def delete_queue(self, queue: str, *, project: str | None = None) -> None:
        """DeleteQueue (the default queue is reset to its defaults)."""
        name = queue_path(queue, project or self.project)
        await self._transport.call(
            self._transport.queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=name)
        )

    async def pause_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """PauseQueue: no new attempts start (within about a second); running ones finish."""
        name = queue_path(queue, project or self.project)
        paused: queues_pb2.Queue = await self._transport.call(
            self._transport.queues.PauseQueue, queues_pb2.PauseQueueRequest(name=name)
        )
        return paused

    async def resume_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """ResumeQueue: its waiting jobs are dispatched again."""
        name = queue_path(queue, project or self.project)
        resumed: queues_pb2.Queue = await self._transport.call(
            self._transport.queues.ResumeQueue, queues_pb2.ResumeQueueRequest(name=name)
        )
        return resumed

    async def purge_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """PurgeQueue: every queued job of the queue ends CANCELLED (code 1)."""
        name = queue_path(queue, project or self.project)
        purged: queues_pb2.Queue = await self._transport.call(
            self._transport.queues.PurgeQueue, queues_pb2.PurgeQueueRequest(name=name)
        )
        return purged
