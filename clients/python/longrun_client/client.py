"""The synchronous client: submit jobs and follow their operations.

from longrun_client import Client

with Client("localhost:50051") as client:
    future = client.submit("sleep", {"worktime": 2})
    future.add_progress_callback(lambda md: print(md.progress_percent))
    print(future.result(timeout=60))          # {"slept_seconds": 2}
    for op in client.list(filter="done:true"):
        print(op.name)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from longrun.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
)
from longrun_client.codec import dict_to_struct
from longrun_client.credentials import ChannelSecurity, balancing_options
from longrun_client.errors import ServiceError, Unavailable
from longrun_client.future import OperationFuture, WaitPolicy
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

DEFAULT_TARGET = "localhost:50051"
#: Deadline of each unary RPC but WaitOperation (seconds).
DEFAULT_TIMEOUT = 30.0
#: WaitOperation's RPC deadline is its wait timeout plus this, so the server
#: answers with the latest state instead of the call ending DEADLINE_EXCEEDED.
WAIT_DEADLINE_MARGIN = 5.0
#: Attempts of an idempotent RPC that fails UNAVAILABLE (AIP-194).
DEFAULT_ATTEMPTS = 3
RETRY_PAUSE = 0.2

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def make_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A TLS channel when `credentials` are given, else a plaintext one.
    A target naming several servers (`ipv4:HOST:PORT,HOST:PORT`, or `dns:///`
    a name with several addresses) gets round_robin over them."""
    options = [*balancing_options(target), *options]
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=list(options))
    return grpc.insecure_channel(target, options=list(options))


def list_name(project: str | None) -> str:
    """ListOperations' name: one project, or (None) every project you may see."""
    return f"projects/{project}" if project else "operations"


def wait_request(name: str, timeout: float) -> operations_pb2.WaitOperationRequest:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(max(timeout, 0.0) * 1e9))
    return operations_pb2.WaitOperationRequest(name=name, timeout=duration)


def job_request(
    task: str,
    params: Mapping[str, Any] | None,
    request_id: str | None,
    labels: Mapping[str, str] | None,
    project: str | None = None,
) -> jobs_pb2.CreateJobRequest:
    """A CreateJobRequest in `project` (none: the server picks the caller's
    project); a fresh UUID4 request_id when none is given, which makes the
    call safe to retry (AIP-155)."""
    return jobs_pb2.CreateJobRequest(
        parent=f"projects/{project}" if project else "",
        task=task,
        params=dict_to_struct(params or {}),
        request_id=request_id or str(uuid.uuid4()),
        labels=dict(labels or {}),
    )


def batch_request(
    task: str,
    params: Sequence[Mapping[str, Any] | None],
    labels: Mapping[str, str] | None,
    project: str | None,
    options: JobOptions | None,
) -> jobs_pb2.BatchCreateJobsRequest:
    """A BatchCreateJobsRequest of one `task` job per entry of `params`, each
    with a fresh request_id (so a retried call creates no duplicates)."""
    items = []
    for one in params:
        item = job_request(task, one, None, labels)
        if options is not None:
            options.apply(item)
        items.append(item)
    return jobs_pb2.BatchCreateJobsRequest(
        parent=f"projects/{project}" if project else "", requests=items
    )


class _Transport:
    """Stubs plus the shared RPC policy (metadata, deadlines, UNAVAILABLE
    retries, grpc errors -> ServiceError). Implements OperationsTransport."""

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: Sequence[tuple[str, str]],
        timeout: float,
        attempts: int,
    ) -> None:
        self.operations = operations_pb2_grpc.OperationsStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeysStub(channel)
        self.queues = queues_pb2_grpc.QueuesStub(channel)
        self._metadata = tuple(metadata)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.wait_supported = True

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The configured metadata plus the caller's trace context (tracing.py)."""
        return self._metadata + trace_metadata()

    def call(
        self, method: Callable[..., T], request: Message, *, timeout: float | None = None
    ) -> T:
        """One unary call, retried on UNAVAILABLE (only use for idempotent calls)."""
        attempt = 1
        while True:
            try:
                return method(
                    request,
                    timeout=self.timeout if timeout is None else timeout,
                    metadata=self.metadata,
                )
            except grpc.RpcError as exc:
                error = ServiceError.from_grpc(exc)
                if not isinstance(error, Unavailable) or attempt >= self.attempts:
                    raise error from exc
            time.sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            attempt += 1

    def get(self, name: str) -> operations_pb2.Operation:
        return self.call(
            self.operations.GetOperation, operations_pb2.GetOperationRequest(name=name)
        )

    def wait(self, name: str, timeout: float) -> operations_pb2.Operation:
        try:
            operation: operations_pb2.Operation = self.operations.WaitOperation(
                wait_request(name, timeout),
                timeout=timeout + WAIT_DEADLINE_MARGIN,
                metadata=self.metadata,
            )
        except grpc.RpcError as exc:
            raise ServiceError.from_grpc(exc) from exc
        return operation

    def cancel(self, name: str) -> None:
        self.call(self.operations.CancelOperation, operations_pb2.CancelOperationRequest(name=name))


class Client:
    """A longrun (or any google.longrunning) server.

    `target` is host:port; `security` (a ChannelSecurity) sets TLS, mutual
    TLS and the caller's credentials (token, API key, Google ID token);
    alternatively `credentials` (grpc.ssl_channel_credentials(...)) switch
    to TLS and `metadata` is sent with every call, e.g.
    `[("authorization", "Bearer TOKEN")]`. Pass `channel` to use your own
    channel (it is not closed by `close()`). Every method raises a
    `ServiceError` subclass when the RPC fails (NotFound, InvalidArgument...)."""

    def __init__(
        self,
        target: str | None = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.Channel | None = None,
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
            channel = (
                security.channel(str(target))
                if security is not None
                else make_channel(str(target), credentials)
            )
        self._channel = channel
        self._transport = _Transport(self._channel, metadata, timeout, attempts)
        self._policy = wait_policy or WaitPolicy()

    def close(self) -> None:
        """Close the channel if this client made it."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Jobs -------------------------------------------------------------------

    @overload
    def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[M],
    ) -> OperationFuture[M]: ...

    @overload
    def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: None = None,
    ) -> OperationFuture[Any]: ...

    def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[Message] | None = None,
    ) -> OperationFuture[Any]:
        """Create a job running `task` with `params` (JSON-like; not modified) in
        `project` (default: the client's; none: the server's choice) and
        return its future. `request_id` (a UUID4) makes a repeat return the same
        operation in that project; one is generated when omitted, so retries
        are safe."""
        request = job_request(task, params, request_id, labels, project or self.project)
        if options is not None:
            options.apply(request)
        operation = self._transport.call(self._transport.jobs.CreateJob, request)
        return self.follow(operation, response_type=response_type)

    def submit_many(
        self,
        task: str,
        params: Sequence[Mapping[str, Any] | None],
        *,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        options: JobOptions | None = None,
        response_type: type[Message] | None = None,
    ) -> list[OperationFuture[Any]]:
        """Create one `task` job per entry of `params` in one BatchCreateJobs
        call (at most the server's `--max-batch-create`, 100 by default) and
        return their futures in that order. All or none are accepted: one
        invalid item fails the call (`InvalidArgument`, the item's `index` in
        the error's metadata) and creates nothing."""
        request = batch_request(task, params, labels, project or self.project, options)
        response = self._transport.call(self._transport.jobs.BatchCreateJobs, request)
        return [self.follow(op, response_type=response_type) for op in response.operations]

    def follow(
        self,
        operation: operations_pb2.Operation | str,
        *,
        response_type: type[Message] | None = None,
        metadata_type: type[Message] | None = jobs_pb2.JobMetadata,
    ) -> OperationFuture[Any]:
        """A future for an existing operation (an Operation, or just its name:
        then nothing is asked until you wait or query). Works for operations of
        any service on this server, e.g. a typed `ConvertDocument`."""
        if isinstance(operation, str):
            operation = operations_pb2.Operation(name=operation)
        return OperationFuture(
            operation,
            self._transport,
            response_type=response_type,
            metadata_type=metadata_type,
            policy=self._policy,
        )

    # -- google.longrunning.Operations -------------------------------------------

    def get(self, name: str) -> operations_pb2.Operation:
        """GetOperation."""
        return self._transport.get(name)

    def list(
        self,
        filter: str | None = None,
        page_size: int | None = None,
        *,
        project: str | None = None,
    ) -> Iterator[operations_pb2.Operation]:
        """ListOperations over every page (fetched lazily). `filter` is AIP-160,
        e.g. `done:true AND metadata.task = "sleep"`; `page_size` is per request.
        Lists `project` (default: the client's), or every project you may see."""
        request = operations_pb2.ListOperationsRequest(
            name=list_name(project or self.project), filter=filter or "", page_size=page_size or 0
        )
        while True:
            response: operations_pb2.ListOperationsResponse = self._transport.call(
                self._transport.operations.ListOperations, request
            )
            yield from response.operations
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def cancel(self, name: str) -> None:
        """CancelOperation: best effort; the operation ends CANCELLED unless it
        finishes first. Returns before it has stopped: wait() to see the outcome."""
        self._transport.cancel(name)

    def delete(self, name: str) -> None:
        """DeleteOperation: forget the operation (it is not cancelled)."""
        self._transport.call(
            self._transport.operations.DeleteOperation,
            operations_pb2.DeleteOperationRequest(name=name),
        )

    def wait(self, name: str, timeout: float | None = None) -> operations_pb2.Operation:
        """Wait until the operation is done or `timeout` seconds pass (None: no
        limit), and return its latest state either way (check `.done`)."""
        future = self.follow(self.get(name))
        future.wait(timeout)
        return future.operation

    # -- API keys (admin role on the project) -------------------------------------

    def create_api_key(
        self,
        project: str,
        role: str,
        *,
        ttl: timedelta | None = None,
        expire_time: datetime | None = None,
    ) -> api_keys_pb2.ApiKey:
        """Mint a key bound to `project` with `role` (viewer, editor or admin).
        Its `key_string` (`lrk_<id>.<secret>`) is in this response only."""
        request = api_keys_pb2.CreateApiKeyRequest(
            parent=f"projects/{project}", role=api_keys_pb2.ApiKey.Role.Value(role.upper())
        )
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        if expire_time is not None:
            request.expire_time.FromDatetime(expire_time)
        try:
            key: api_keys_pb2.ApiKey = self._transport.api_keys.CreateApiKey(
                request, timeout=self._transport.timeout, metadata=self._transport.metadata
            )
        except grpc.RpcError as exc:  # not retried: a retry could mint a second key
            raise ServiceError.from_grpc(exc) from exc
        return key

    def list_api_keys(self, project: str) -> Iterator[api_keys_pb2.ApiKey]:
        """The project's keys, revoked ones too, without their secrets."""
        request = api_keys_pb2.ListApiKeysRequest(parent=f"projects/{project}")
        while True:
            response: api_keys_pb2.ListApiKeysResponse = self._transport.call(
                self._transport.api_keys.ListApiKeys, request
            )
            yield from response.api_keys
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def revoke_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        """DeleteApiKey: revoke key `name` (projects/P/apiKeys/ID); returns it revoked."""
        key: api_keys_pb2.ApiKey = self._transport.call(
            self._transport.api_keys.DeleteApiKey, api_keys_pb2.DeleteApiKeyRequest(name=name)
        )
        return key

    # -- Queues (reading: viewer; changing: admin) ---------------------------------

    def create_queue(
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
            queue: queues_pb2.Queue = self._transport.queues.CreateQueue(
                request, timeout=self._transport.timeout, metadata=self._transport.metadata
            )
        except grpc.RpcError as exc:  # not retried: a lost answer would say ALREADY_EXISTS
            raise ServiceError.from_grpc(exc) from exc
        return queue

    def get_queue(
        self, queue: str, *, project: str | None = None, stats: bool = False
    ) -> queues_pb2.Queue:
        """GetQueue: `queue` is an id (in `project`, default the client's) or a
        full name. `stats` asks for `Queue.stats` too (read_mask `stats`:
        its waiting and running jobs, counted up to the server's limit)."""
        name = queue_path(queue, project or self.project)
        got: queues_pb2.Queue = self._transport.call(
            self._transport.queues.GetQueue,
            queues_pb2.GetQueueRequest(name=name, read_mask=stats_mask(stats)),
        )
        return got

    def list_queues(
        self, project: str | None = None, *, stats: bool = False
    ) -> Iterator[queues_pb2.Queue]:
        """The project's queues by id, `default` included (every page, lazily);
        with `Queue.stats` when `stats` (see get_queue)."""
        target = project or self.project
        if not target:
            raise ValueError("listing queues needs a project")
        request = queues_pb2.ListQueuesRequest(
            parent=f"projects/{target}", read_mask=stats_mask(stats)
        )
        while True:
            response: queues_pb2.ListQueuesResponse = self._transport.call(
                self._transport.queues.ListQueues, request
            )
            yield from response.queues
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def list_dead_letters(
        self, project: str | None = None, *, page_size: int = 0
    ) -> Iterator[queues_pb2.DeadLetter]:
        """ListDeadLetters: the task messages given up on, newest first, of
        `project` (default the client's; `-` for every project the caller may
        see), every page lazily (`page_size`: per call, 0 for the server's)."""
        target = project or self.project
        if not target:
            raise ValueError("listing dead letters needs a project (or '-')")
        request = queues_pb2.ListDeadLettersRequest(
            parent=f"projects/{target}", page_size=page_size
        )
        while True:
            response: queues_pb2.ListDeadLettersResponse = self._transport.call(
                self._transport.queues.ListDeadLetters, request
            )
            yield from response.dead_letters
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def update_queue(
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
        updated: queues_pb2.Queue = self._transport.call(
            self._transport.queues.UpdateQueue, request
        )
        return updated

    def delete_queue(self, queue: str, *, project: str | None = None) -> None:
        """DeleteQueue (the default queue is reset to its defaults)."""
        name = queue_path(queue, project or self.project)
        self._transport.call(
            self._transport.queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=name)
        )

    def pause_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """PauseQueue: no new attempts start (within about a second); running ones finish."""
        name = queue_path(queue, project or self.project)
        paused: queues_pb2.Queue = self._transport.call(
            self._transport.queues.PauseQueue, queues_pb2.PauseQueueRequest(name=name)
        )
        return paused

    def resume_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """ResumeQueue: its waiting jobs are dispatched again."""
        name = queue_path(queue, project or self.project)
        resumed: queues_pb2.Queue = self._transport.call(
            self._transport.queues.ResumeQueue, queues_pb2.ResumeQueueRequest(name=name)
        )
        return resumed

    def purge_queue(self, queue: str, *, project: str | None = None) -> queues_pb2.Queue:
        """PurgeQueue: every queued job of the queue ends CANCELLED (code 1)."""
        name = queue_path(queue, project or self.project)
        purged: queues_pb2.Queue = self._transport.call(
            self._transport.queues.PurgeQueue, queues_pb2.PurgeQueueRequest(name=name)
        )
        return purged
