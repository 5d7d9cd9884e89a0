"""ListOperations pages bounded in bytes (server/longrun_server/pages.py),
against an in-memory list that behaves like OperationStore.list."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2

from longrun_core.errors import FailedPrecondition
from longrun_core.model import OperationRecord, State, pack
from longrun_core.store import Cursor, ListPage
from longrun_server.pages import (
    RESPONSE_RESERVE,
    PageLimits,
    check_sendable,
    fill_page,
    framed_size,
)
from tests.contract.records import make_record

KIB = 1024


def done_record(result_bytes: int, params_bytes: int = 10) -> OperationRecord:
    return replace(
        make_record(),
        state=State.SUCCEEDED,
        attempt=1,
        params=b"\x0a" * params_bytes,
        response=pack(struct_pb2.Value(string_value="x" * result_bytes)),
        version=3,
    )


@dataclass
class FakeList:
    """Newest first; `short_after` makes the store's scan budget run out."""

    records: list[OperationRecord]
    calls: list[int] = field(default_factory=list)
    short_after: int | None = None

    def __post_init__(self) -> None:
        self.records.sort(key=lambda r: (r.create_time, r.id), reverse=True)

    async def __call__(self, size: int, cursor: Cursor | None) -> ListPage:
        self.calls.append(size)
        rest = [r for r in self.records if cursor is None or (r.create_time, r.id) < _key(cursor)]
        if self.short_after is not None and size > self.short_after:
            page = rest[: self.short_after]
            return ListPage(page, Cursor.after(page[-1]) if page else cursor)
        page = rest[:size]
        more = len(rest) > size
        return ListPage(page, Cursor.after(page[-1]) if more else None)


def _key(cursor: Cursor) -> tuple[object, str]:
    return (cursor.create_time, cursor.id)


def view(rec: OperationRecord) -> tuple[operations_pb2.Operation, int]:
    op = rec.to_operation()
    return op, op.ByteSize()


LIMITS = PageLimits(max_bytes=1000 * KIB, max_message_bytes=1100 * KIB)


async def walk(
    source: FakeList, page_size: int, limits: PageLimits = LIMITS
) -> list[list[operations_pb2.Operation]]:
    pages = []
    cursor = None
    while True:
        page = await fill_page(source, view, page_size=page_size, after=cursor, limits=limits)
        pages.append(page.operations)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_framed_size_is_what_protobuf_counts() -> None:
    for size in (0, 1, 127, 128, 16_383, 16_384, 3 * 1024 * 1024):
        op = operations_pb2.Operation(name="x" * size)
        framed = framed_size(op.ByteSize())
        assert operations_pb2.ListOperationsResponse(operations=[op]).ByteSize() == framed


async def test_a_page_of_big_operations_ends_early_below_the_byte_budget() -> None:
    source = FakeList([done_record(250 * KIB) for _ in range(20)])
    page = await fill_page(source, view, page_size=50, after=None, limits=LIMITS)
    assert len(page.operations) == 3  # a fourth would pass 1000 KiB
    size = operations_pb2.ListOperationsResponse(operations=page.operations).ByteSize()
    assert size <= LIMITS.max_bytes
    assert page.next_cursor == Cursor.after(source.records[2])


async def test_every_operation_is_listed_once_across_byte_bounded_pages() -> None:
    source = FakeList([done_record(120 * KIB * (i % 3)) for i in range(40)])
    pages = await walk(source, page_size=50)
    names = [op.name for page in pages for op in page]
    assert names == [r.name for r in source.records]
    assert len(pages) > 1
    for page in pages:
        assert operations_pb2.ListOperationsResponse(operations=page).ByteSize() <= 1000 * KIB


async def test_small_operations_fill_the_page_size_in_one_store_call() -> None:
    source = FakeList([make_record() for _ in range(120)])
    page = await fill_page(source, view, page_size=50, after=None, limits=LIMITS)
    assert len(page.operations) == 50
    assert source.calls == [50]
    assert page.next_cursor == Cursor.after(source.records[49])


async def test_the_last_page_has_no_cursor() -> None:
    source = FakeList([make_record() for _ in range(50)])
    page = await fill_page(source, view, page_size=50, after=None, limits=LIMITS)
    assert len(page.operations) == 50
    assert page.next_cursor is None
    assert (await walk(FakeList([]), 10)) == [[]]


async def test_one_operation_above_the_budget_still_makes_a_page_of_its_own() -> None:
    """Progress: the first operation always goes in if it can be sent at all."""
    limits = PageLimits(max_bytes=100 * KIB, max_message_bytes=1100 * KIB)
    source = FakeList([done_record(300 * KIB), done_record(1)])
    pages = await walk(source, page_size=10, limits=limits)
    assert [len(p) for p in pages] == [1, 1]


async def test_records_are_loaded_in_batches_sized_by_the_load_budget() -> None:
    """A page of 1,000 asked for over records of ~256 KiB params loads them a
    few at a time, not a thousand at once."""
    limits = PageLimits(
        max_bytes=1000 * KIB, max_message_bytes=1100 * KIB, load_bytes=1024 * KIB, first_batch=4
    )
    source = FakeList([done_record(10, params_bytes=256 * KIB) for _ in range(30)])
    page = await fill_page(source, view, page_size=1000, after=None, limits=limits)
    assert len(page.operations) == 30
    assert source.calls[0] == 4
    assert max(source.calls) <= 4  # 1 MiB / ~257 KiB per record
    assert page.next_cursor is None


async def test_a_short_store_page_with_a_cursor_ends_the_page_there() -> None:
    """The store's own scan budget ran out: no second call, its cursor is ours."""
    source = FakeList([make_record() for _ in range(30)], short_after=7)
    page = await fill_page(source, view, page_size=20, after=None, limits=LIMITS)
    assert len(page.operations) == 7
    assert source.calls == [20]
    assert page.next_cursor == Cursor.after(source.records[6])


async def test_store_calls_per_page_are_bounded() -> None:
    limits = PageLimits(
        max_bytes=1000 * KIB,
        max_message_bytes=1100 * KIB,
        load_bytes=1,
        first_batch=1,
        max_store_calls=5,
    )
    source = FakeList([make_record() for _ in range(30)])
    page = await fill_page(source, view, page_size=20, after=None, limits=limits)
    assert len(source.calls) == 5
    assert len(page.operations) == 5
    assert page.next_cursor == Cursor.after(source.records[4])


async def test_an_operation_too_big_to_send_is_listed_as_a_stand_in() -> None:
    big = done_record(1200 * KIB)
    small = done_record(10)
    source = FakeList([big, small])
    pages = await walk(source, page_size=10)
    ops = [op for page in pages for op in page]
    assert [op.name for op in ops] == [r.name for r in source.records]
    (stand_in,) = [op for op in ops if op.name == big.name]
    assert stand_in.done
    assert stand_in.WhichOneof("result") == "error"
    assert stand_in.error.code == code_pb2.FAILED_PRECONDITION
    info = error_details_pb2.ErrorInfo()
    assert stand_in.error.details[0].Unpack(info)
    assert info.reason == "OPERATION_TOO_LARGE"
    assert int(info.metadata["size"]) > 1200 * KIB
    assert info.metadata["limit"] == str(1100 * KIB)
    assert stand_in.metadata == big.to_operation().metadata
    assert stand_in.ByteSize() + RESPONSE_RESERVE < 1100 * KIB


def test_getting_an_operation_too_big_to_send_is_failed_precondition() -> None:
    op = done_record(2000 * KIB).to_operation()
    with pytest.raises(FailedPrecondition) as info:
        check_sendable(op, op.ByteSize(), 1100 * KIB)
    assert info.value.reason == "OPERATION_TOO_LARGE"
    assert info.value.metadata["size"] == str(op.ByteSize())
    assert "--max-send-message-bytes" in info.value.message
    small = done_record(10).to_operation()
    check_sendable(small, small.ByteSize(), 1100 * KIB)  # fits: no error
