"""ListOperations pages bounded in bytes as well as in count.

AIP-158 lets a page hold fewer results than `page_size` (only an empty
`next_page_token` says the list is over). A page here ends early, with a
token, once its operations would pass a byte budget derived from the
server's max send message size, so a list of big operations comes back in
more, smaller pages instead of failing with RESOURCE_EXHAUSTED for every
client. The records behind a page are loaded from the store in batches
sized by a load budget, so a page of 1,000 operations with 256 KiB params
never holds all of them in memory at once.

A single operation too big to send in any message (a result stored before
the result limit existed, or by a worker with a larger one) is listed as a
stand-in carrying its name and metadata and an `error` that says why
(`oversized_stand_in`), so it cannot make every page that holds it fail;
GetOperation answers FAILED_PRECONDITION for it (`check_sendable`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun_core.errors import DOMAIN, FailedPrecondition
from longrun_core.model import OperationRecord
from longrun_core.store import Cursor, ListPage

#: Bytes a response needs besides its operations (next_page_token and its
#: framing): an operation fits a message if it and this fit.
RESPONSE_RESERVE = 1024

ListRecords = Callable[[int, Cursor | None], Awaitable[ListPage]]
#: An operation's view and its serialized size.
ViewOf = Callable[[OperationRecord], tuple[operations_pb2.Operation, int]]


@dataclass(frozen=True)
class PageLimits:
    #: Serialized bytes of the operations of one page.
    max_bytes: int
    #: The server's max send message size.
    max_message_bytes: int
    #: Approximate bytes of records one store call may load.
    load_bytes: int = 16 * 1024 * 1024
    #: Records asked for in the first store call (the default page size, so a
    #: default page of small operations is one call).
    first_batch: int = 50
    #: Store calls one page may make before it ends early with a token.
    max_store_calls: int = 64


@dataclass(frozen=True)
class Page:
    operations: list[operations_pb2.Operation]
    #: Where the next page starts; None at the end of the list.
    next_cursor: Cursor | None


def framed_size(message_bytes: int) -> int:
    """Bytes of a length-delimited field (tag, length, body) of this size."""
    return 1 + _varint_size(message_bytes) + message_bytes


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


async def fill_page(
    list_records: ListRecords,
    view_of: ViewOf,
    *,
    page_size: int,
    after: Cursor | None,
    limits: PageLimits,
) -> Page:
    """Up to `page_size` operations after `after` whose framed sizes add up
    to at most `limits.max_bytes` (the first one always goes in, so every
    page makes progress). A store page that comes back short but with a
    cursor (the store's scan budget ran out) ends this page there too."""
    operations: list[operations_pb2.Operation] = []
    used = 0
    cursor = after
    batch = min(page_size, limits.first_batch)
    for _ in range(limits.max_store_calls):
        page = await list_records(batch, cursor)
        loaded = 0
        for rec in page.records:
            loaded += rec.approx_bytes()
            op, op_bytes = view_of(rec)
            size = framed_size(op_bytes)
            if size + RESPONSE_RESERVE > limits.max_message_bytes:
                op = oversized_stand_in(rec, op_bytes, limits.max_message_bytes)
                size = framed_size(op.ByteSize())
            if operations and used + size > limits.max_bytes:
                return Page(operations, cursor)
            operations.append(op)
            used += size
            cursor = Cursor.after(rec)
            if len(operations) == page_size:
                more = rec is not page.records[-1] or page.next_cursor is not None
                return Page(operations, cursor if more else None)
        if page.next_cursor is None:
            return Page(operations, None)
        if len(page.records) < batch:
            return Page(operations, page.next_cursor)  # the store's budget ran out
        cursor = page.next_cursor
        average = max(loaded // max(len(page.records), 1), 1)
        batch = max(1, min(page_size - len(operations), limits.load_bytes // average))
    return Page(operations, cursor)


def check_sendable(op: operations_pb2.Operation, size: int, max_message_bytes: int) -> None:
    """FAILED_PRECONDITION for an operation of `size` bytes, larger than the
    max send size (gRPC would fail the call with RESOURCE_EXHAUSTED, which
    reads as "retry later" though no retry can help)."""
    if size > max_message_bytes:
        raise FailedPrecondition(
            _too_large_message(op.name, size, max_message_bytes),
            reason="OPERATION_TOO_LARGE",
            metadata={"name": op.name, "size": str(size), "limit": str(max_message_bytes)},
        )


def oversized_stand_in(
    rec: OperationRecord, size: int, max_message_bytes: int
) -> operations_pb2.Operation:
    """What a list shows for an operation too big to send: its name, done and
    metadata, and as `error` a FAILED_PRECONDITION saying so. The stored
    operation is not changed."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="OPERATION_TOO_LARGE",
            domain=DOMAIN,
            metadata={"name": rec.name, "size": str(size), "limit": str(max_message_bytes)},
        )
    )
    op = operations_pb2.Operation(name=rec.name, done=rec.done)
    op.metadata.Pack(rec.metadata())
    if not rec.done:  # cannot happen: only an outcome can be this big
        return op
    op.error.CopyFrom(
        status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION,
            message=_too_large_message(rec.name, size, max_message_bytes),
            details=[info],
        )
    )
    return op


def _too_large_message(name: str, size: int, limit: int) -> str:
    return (
        f"operation {name} is {size} bytes serialized, more than the {limit} this server "
        "sends in one message (--max-send-message-bytes); its stored outcome is kept "
        "but cannot be shown here"
    )
