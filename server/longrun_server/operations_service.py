"""google.longrunning.Operations over an OperationStore.

Authorization (longrun_core.access): an RPC on a full name
`projects/{p}/operations/{id}` asks `access.require(permission, p)` before
it reads anything, so a caller without the permission gets the same
PERMISSION_DENIED whether or not the operation exists (AIP-211). A legacy
name `operations/{id}` names no project: the record is read first and the
permission required on its project; an absent one is NOT_FOUND only for a
caller who may see every project, PERMISSION_DENIED otherwise (the same
error a present one of another project gets). ListOperations lists the
project its name gives (`projects/{p}`), or every project the caller holds
LIST on (`operations` or empty)."""

from __future__ import annotations

import time
from datetime import timedelta

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, empty_pb2

from longrun_core import transitions
from longrun_core.access import Access, AllowAll, Permission, denied
from longrun_core.clock import Clock
from longrun_core.errors import InvalidArgument, NotFound, PermissionDenied, Unimplemented
from longrun_core.filtering import MAX_LENGTH as MAX_FILTER_LENGTH
from longrun_core.filtering import Filter, parse_filter
from longrun_core.model import OperationRecord
from longrun_core.names import parse_list_name, parse_operation_name
from longrun_core.settings import DEFAULT_MESSAGE_BYTES, PAGE_HEADROOM_BYTES
from longrun_core.stamped_cache import DEFAULT_MAX_BYTES
from longrun_core.store import (
    DEFAULT_SCAN_ROWS,
    Cursor,
    ListPage,
    OperationStore,
    PageTokens,
    ScanBudget,
)
from longrun_server.pages import PageLimits, check_sendable, fill_page
from longrun_server.status import rpc_errors
from longrun_server.views import OperationViews

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class OperationsService(operations_pb2_grpc.OperationsServicer):
    def __init__(
        self,
        store: OperationStore,
        *,
        clock: Clock,
        tokens: PageTokens,
        retention: timedelta,
        max_wait: float,
        page_limits: PageLimits | None = None,
        view_cache_bytes: int = DEFAULT_MAX_BYTES,
        list_scan_budget: int = DEFAULT_SCAN_ROWS,
        access: Access | None = None,
    ) -> None:
        self.store = store
        self.access: Access = access or AllowAll()
        self.clock = clock
        self.tokens = tokens
        self.retention = retention
        self.max_wait = max_wait
        self.list_scan_budget = list_scan_budget
        self.page_limits = page_limits or PageLimits(
            max_bytes=DEFAULT_MESSAGE_BYTES - PAGE_HEADROOM_BYTES,
            max_message_bytes=DEFAULT_MESSAGE_BYTES,
        )
        self.views = OperationViews(max_bytes=view_cache_bytes)

    def sendable_view(self, rec: OperationRecord) -> operations_pb2.Operation:
        """The caller's view of `rec`; FAILED_PRECONDITION if it is too big to send."""
        op, size = self.views.sized(rec)
        check_sendable(op, size, self.page_limits.max_message_bytes)
        return op

    async def authorized(self, name: str, permission: Permission) -> OperationRecord:
        """The record `name` names, once the caller may `permission` on its
        project (see the module docstring for the order of the checks)."""
        parsed = parse_operation_name(name)
        if parsed.project is not None:
            self.access.require(permission, parsed.project)
            return await self.store.get(name)
        try:
            rec = await self.store.get(name)
        except NotFound:
            if self.access.visible_projects(permission) is None:
                raise
            raise denied(permission, name) from None
        try:
            self.access.require(permission, rec.project)
        except PermissionDenied:
            raise denied(permission, name) from None
        return rec

    async def authorized_name(self, name: str, permission: Permission) -> str:
        """The full name `name` stands for, once the caller may `permission` on
        its project. A full name is checked without reading the record (the
        caller reads it next, and an absent one is NOT_FOUND there, after the
        same check); a legacy name is resolved through `authorized`."""
        parsed = parse_operation_name(name)
        if parsed.project is not None:
            self.access.require(permission, parsed.project)
            return name
        return (await self.authorized(name, permission)).name

    @rpc_errors
    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return self.sendable_view(await self.authorized(request.name, Permission.GET))

    @rpc_errors
    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.ListOperationsResponse:
        project = parse_list_name(request.name)
        if request.return_partial_success:
            raise Unimplemented(
                "return_partial_success is not supported: every list is complete",
                reason="PARTIAL_SUCCESS_UNSUPPORTED",
            )
        if request.page_size < 0:
            raise InvalidArgument(
                f"page_size must not be negative, got {request.page_size}",
                reason="PAGE_SIZE_NEGATIVE",
            )
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        flt = parse_list_filter(request.filter)
        if project is not None:
            self.access.require(Permission.LIST, project)
            projects: frozenset[str] | None = frozenset({project})
        else:
            projects = self.access.visible_projects(Permission.LIST)
        # A token pages one list: one project, or every visible one ("*"; who
        # may see what is asked again on every page), with one filter.
        binding = token_binding(project, flt.text if flt is not None else "")
        after = self.tokens.decode(request.page_token, binding) if request.page_token else None
        if projects is not None and not projects:
            return operations_pb2.ListOperationsResponse()  # the caller may see no project
        # The scan reads at most the budget, across every store call the page
        # makes, and answers before the caller's deadline, with a shorter page
        # and a token when either runs out; a caller that goes away cancels
        # this coroutine, which stops the scan.
        deadline = answer_by(context.time_remaining())
        spent = 0

        async def batch(size: int, cursor: Cursor | None) -> ListPage:
            nonlocal spent
            left = self.list_scan_budget - spent
            if left <= 0:
                return ListPage([], cursor)
            got = await self.store.list(
                page_size=size,
                after=cursor,
                flt=flt,
                budget=ScanBudget(left, deadline=deadline),
                projects=projects,
            )
            spent += got.scanned
            return got

        page = await fill_page(
            batch,
            self.views.sized,
            page_size=page_size,
            after=after,
            limits=self.page_limits,
        )
        response = operations_pb2.ListOperationsResponse(operations=page.operations)
        if page.next_cursor is not None:
            response.next_page_token = self.tokens.encode(page.next_cursor, binding)
        return response

    @rpc_errors
    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        rec = await self.authorized(request.name, Permission.DELETE)
        await self.store.delete(rec.name)
        return empty_pb2.Empty()

    @rpc_errors
    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        """Best effort and idempotent: a queued operation ends CANCELLED at once,
        a running one is asked to stop, a finished one is left as it is (OK)."""
        rec = await self.authorized(request.name, Permission.CANCEL)
        await self.store.update(
            rec.name,
            lambda r: transitions.request_cancel(r, now=self.clock.now(), retention=self.retention),
        )
        return empty_pb2.Empty()

    @rpc_errors
    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        """Return as soon as the operation is done, or its latest state when the
        shorter of `timeout` and the RPC deadline (minus a margin) runs out. A
        timeout longer than the server's max wait is clamped to it."""
        name = await self.authorized_name(request.name, Permission.WAIT)
        budget = self.max_wait
        if request.HasField("timeout"):
            budget = min(budget, wait_timeout(request.timeout))
        remaining_rpc = context.time_remaining()
        if remaining_rpc is not None:
            # Answer before the caller's deadline so it gets the state, not DEADLINE_EXCEEDED.
            budget = min(budget, max(remaining_rpc - min(0.05, remaining_rpc / 10), 0.0))
        loop_time = time.monotonic()
        deadline = loop_time + budget
        async with self.store.watch_record(name) as (watch, rec):
            while not rec.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if await watch.changed(left):
                    rec = await self.store.get(name)
        return self.sendable_view(rec)


#: The largest Duration.seconds protobuf defines (10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000


def wait_timeout(timeout: duration_pb2.Duration) -> float:
    """WaitOperation's timeout in seconds. Negative, or outside the range
    google.protobuf.Duration defines, is INVALID_ARGUMENT (no timedelta
    conversion, which overflows on such values); the caller clamps it to the
    server's max wait."""
    seconds, nanos = timeout.seconds, timeout.nanos
    if seconds < 0 or nanos < 0:
        raise InvalidArgument("timeout must not be negative", reason="TIMEOUT_NEGATIVE")
    if seconds > MAX_DURATION_SECONDS or nanos > 999_999_999:
        raise InvalidArgument(
            f"timeout is not a valid google.protobuf.Duration (seconds {seconds}, nanos "
            f"{nanos}): seconds must be at most {MAX_DURATION_SECONDS} and nanos at most "
            "999999999; any timeout beyond the server's max wait is treated as the max wait",
            reason="TIMEOUT_INVALID",
            metadata={"seconds": str(seconds), "nanos": str(nanos)},
        )
    return seconds + nanos / 1e9


def answer_by(time_remaining: float | None) -> float | None:
    """The monotonic instant a list scan stops to answer a caller with
    `time_remaining` seconds left: a fifth of it (at most 0.1 s) earlier."""
    if time_remaining is None:
        return None
    return time.monotonic() + time_remaining - min(0.1, max(time_remaining, 0.0) / 5)


def parse_list_filter(text: str) -> Filter | None:
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument(
            f"filter is {len(text)} characters; at most {MAX_FILTER_LENGTH} are allowed",
            reason="FILTER_TOO_LONG",
        )
    return parse_filter(text)


def token_binding(project: str | None, filter_text: str) -> str:
    """What a page token is bound to: one project's list (None: every visible
    project, "*") with one filter."""
    return f"{project or '*'}\n{filter_text}"
