"""`scan_page`, the list scan every store runs: paging invariants under a
row budget (AIP-158 short pages), the deadline, and cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrun_core.model import OperationRecord
from longrun_core.store import (
    Cursor,
    ListPage,
    ScanBudget,
    Window,
    as_records,
    scan_page,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    position: Cursor
    matches: bool


@dataclass
class Table:
    """Rows in list order (newest first) and a count of the rows read."""

    rows: list[Row]
    scanned: int = 0
    windows: list[int] = field(default_factory=list)

    async def fetch(self, cursor: Cursor | None, limit: int, want: int) -> Window[Row]:
        """A non-exact window: `limit` rows after the cursor, all returned."""
        assert limit >= 1
        start = 0 if cursor is None else self._after(cursor)
        got = self.rows[start : start + limit]
        self.scanned += len(got)
        self.windows.append(len(got))
        await asyncio.sleep(0)
        last = got[-1].position if got else None
        return Window(got, len(got), last, at_end=start + limit >= len(self.rows))

    async def fetch_exact(self, cursor: Cursor | None, limit: int, want: int) -> Window[Row]:
        """An exact window: the matching rows only (as an index would give),
        each counted as read, at most min(limit, want)."""
        start = 0 if cursor is None else self._after(cursor)
        matching = [r for r in self.rows[start:] if r.matches]
        take = min(limit, want)
        got = matching[:take]
        self.scanned += len(got)
        last = got[-1].position if got else None
        return Window(got, len(got), last, at_end=len(got) < take)

    def _after(self, cursor: Cursor) -> int:
        key = (cursor.create_time, cursor.id)
        for i, row in enumerate(self.rows):
            if (row.position.create_time, row.position.id) < key:
                return i
        return len(self.rows)


def make_table(matches: Sequence[bool], ties: Sequence[bool]) -> Table:
    rows: list[Row] = []
    when = T0
    for i, (hit, tie) in enumerate(zip(matches, ties, strict=True)):
        if not (tie and rows):
            when = when - timedelta(microseconds=1)
        rows.append(Row(Cursor(when, f"id{1000 - i:04d}"), hit))
    return Table(rows)


def records_of(rows: Sequence[Row]) -> list[OperationRecord]:
    return [
        OperationRecord(
            id=r.position.id,
            task="t",
            params=b"",
            state=1,  # type: ignore[arg-type]
            create_time=r.position.create_time,
            update_time=r.position.create_time,
        )
        for r in rows
    ]


async def complete(rows: Sequence[Row]) -> Sequence[OperationRecord]:
    return records_of(rows)


async def walk(
    table: Table, page_size: int, budget: int, window: int, *, exact: bool
) -> tuple[list[str], list[ListPage]]:
    seen: list[str] = []
    pages: list[ListPage] = []
    cursor: Cursor | None = None
    for _ in range(10_000):
        before = table.scanned
        page = await scan_page(
            table.fetch_exact if exact else table.fetch,
            page_size=page_size,
            after=cursor,
            budget=ScanBudget(budget),
            position=lambda r: r.position,
            complete=complete,
            keep=None if exact else (lambda r: r.matches),
            window=window,
        )
        assert table.scanned - before <= budget, "a page read more rows than its budget"
        assert len(page.records) <= page_size
        pages.append(page)
        seen += [r.id for r in page.records]
        if page.next_cursor is None:
            return seen, pages
        cursor = page.next_cursor
    raise AssertionError("the walk did not end")


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40),
    page_size=st.integers(1, 6),
    budget=st.integers(1, 12),
    window=st.integers(1, 7),
    exact=st.booleans(),
)
async def test_budget_limited_walk_yields_every_match_once_in_order(
    data: list[tuple[bool, bool]], page_size: int, budget: int, window: int, exact: bool
) -> None:
    table = make_table([m for m, _ in data], [t for _, t in data])
    seen, pages = await walk(table, page_size, budget, window, exact=exact)
    assert seen == [r.position.id for r in table.rows if r.matches]
    for page in pages[:-1]:
        # A short page is one whose scan ran out of budget.
        assert len(page.records) == page_size or page.next_cursor is not None
    if not exact:
        # Each row is read once, but for the rest of a window after a full
        # page's last record, which the next page reads again.
        assert table.scanned <= len(table.rows) + (len(pages) - 1) * window


async def test_a_spent_budget_ends_the_page_just_after_the_last_row_read() -> None:
    table = make_table([False] * 25 + [True] * 3, [False] * 28)
    page = await scan_page(
        table.fetch,
        page_size=2,
        after=None,
        budget=ScanBudget(10),
        position=lambda r: r.position,
        complete=complete,
        keep=lambda r: r.matches,
        window=4,
    )
    assert page.records == []
    assert table.scanned == 10
    assert table.windows == [4, 4, 2]  # windows of at most 4, then what is left of 10
    assert page.next_cursor == table.rows[9].position


async def test_a_full_page_stops_the_scan_at_its_last_record() -> None:
    table = make_table([False, True, False, True, True, False], [False] * 6)
    page = await scan_page(
        table.fetch,
        page_size=2,
        after=None,
        budget=ScanBudget(100),
        position=lambda r: r.position,
        complete=complete,
        keep=lambda r: r.matches,
        window=3,
    )
    assert [r.id for r in page.records] == [table.rows[1].position.id, table.rows[3].position.id]
    assert page.next_cursor == table.rows[3].position
    assert table.scanned == 6  # two windows of 3


async def test_a_passed_deadline_answers_after_one_window() -> None:
    table = make_table([False] * 50, [False] * 50)
    page = await scan_page(
        table.fetch,
        page_size=1,
        after=None,
        budget=ScanBudget(1000, deadline=time.monotonic() - 1),
        position=lambda r: r.position,
        complete=complete,
        keep=lambda r: r.matches,
        window=5,
    )
    assert page.records == [] and page.next_cursor == table.rows[4].position
    assert table.windows == [5]


async def test_cancelling_the_caller_stops_the_scan() -> None:
    reads = 0
    gate = asyncio.Event()

    async def endless(cursor: Cursor | None, limit: int, want: int) -> Window[Row]:
        nonlocal reads
        reads += 1
        if reads == 3:
            gate.set()
        await asyncio.sleep(0.001)
        when = T0 - timedelta(seconds=reads)
        rows = [Row(Cursor(when - timedelta(microseconds=i), "x"), False) for i in range(limit)]
        return Window(rows, limit, rows[-1].position, at_end=False)

    scan = asyncio.create_task(
        scan_page(
            endless,
            page_size=1,
            after=None,
            budget=ScanBudget(10**9),
            position=lambda r: r.position,
            complete=complete,
            keep=lambda r: r.matches,
        )
    )
    await gate.wait()
    scan.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scan
    stopped_at = reads
    await asyncio.sleep(0.05)
    assert reads == stopped_at, "the scan went on after its caller left"


async def test_as_records_is_the_complete_of_exact_scans() -> None:
    recs = records_of(make_table([True], [False]).rows)
    assert await as_records(recs) is recs


def test_a_budget_allows_at_least_one_row() -> None:
    with pytest.raises(ValueError):
        ScanBudget(0)


async def test_windows_start_small_and_grow_to_the_window_size() -> None:
    table = make_table([False] * 2000, [False] * 2000)
    await scan_page(
        table.fetch,
        page_size=1,
        after=None,
        budget=ScanBudget(1500),
        position=lambda r: r.position,
        complete=complete,
        keep=lambda r: r.matches,
        window=500,
    )
    assert table.windows == [32, 128, 500, 500, 340]


async def test_a_shared_gate_lets_one_window_run_at_a_time() -> None:
    gate = asyncio.Semaphore(1)
    running = 0
    most = 0

    class Counting(Table):
        async def fetch(self, cursor: Cursor | None, limit: int, want: int) -> Window[Row]:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await asyncio.sleep(0.001)
                return await super().fetch(cursor, limit, want)
            finally:
                running -= 1

    tables = [Counting(make_table([False] * 200, [False] * 200).rows) for _ in range(4)]
    pages = await asyncio.gather(
        *(
            scan_page(
                t.fetch,
                page_size=1,
                after=None,
                budget=ScanBudget(200),
                position=lambda r: r.position,
                complete=complete,
                keep=lambda r: r.matches,
                window=10,
                gate=gate,
            )
            for t in tables
        )
    )
    assert all(p.records == [] and p.next_cursor is None for p in pages)
    assert all(t.scanned == 200 for t in tables)
    assert most == 1
