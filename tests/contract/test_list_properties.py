"""Property tests of ListOperations paging (AIP-158) on every store, and of
filter parity between the embedded and the Google store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longrun_core.filtering import Filter, parse_filter
from longrun_core.model import OperationRecord, State
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import Cursor, OperationStore, ScanBudget
from tests.contract.records import make_record
from tests.unit.test_filtering import Node, filters, pool_record


def fixture_ok(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


async def _walk(
    store: OperationStore,
    flt: Filter | None,
    page_size: int,
    between_pages: list[int],
    run: str,
    budget: ScanBudget | None = None,
    projects: frozenset[str] | None = None,
) -> list[str]:
    seen: list[str] = []
    cursor: Cursor | None = None
    page_no = 0
    while True:
        page = await store.list(
            page_size=page_size, after=cursor, flt=flt, budget=budget, projects=projects
        )
        assert len(page.records) <= page_size
        seen += [r.name for r in page.records]
        # Operations created during the walk (they are newer than all the others).
        for _ in range(between_pages[page_no] if page_no < len(between_pages) else 0):
            await store.create(make_record(labels={"run": run}))
        page_no += 1
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


@fixture_ok(12)
@given(
    count=st.integers(0, 14),
    page_size=st.integers(1, 6),
    ties=st.lists(st.booleans(), min_size=14, max_size=14),
    between_pages=st.lists(st.integers(0, 2), max_size=5),
)
async def test_walk_yields_every_record_once_in_order_despite_inserts(
    store: OperationStore,
    count: int,
    page_size: int,
    ties: list[bool],
    between_pages: list[int],
) -> None:
    run = uuid.uuid4().hex[:12]
    records: list[OperationRecord] = []
    for i in range(count):
        rec = make_record(labels={"run": run})
        if ties[i] and records:  # same create_time as the previous one: the id breaks ties
            rec = replace(rec, create_time=records[-1].create_time)
        records.append(rec)
    for rec in records:
        await store.create(rec)
    flt = parse_filter(f'labels.run = "{run}"')
    seen = await _walk(store, flt, page_size, between_pages, run)
    assert len(seen) == len(set(seen)), "an operation appeared twice"
    expected = [r.name for r in sorted(records, key=lambda r: (r.create_time, r.id), reverse=True)]
    assert [n for n in seen if n in set(expected)] == expected


@pytest.fixture
async def store_pair(tmp_path: Path) -> AsyncIterator[tuple[OperationStore, OperationStore]]:
    """The embedded and the Firestore store, holding the same records."""
    from tests.contract.google_backends import make_firestore_store, require_emulators

    require_emulators()
    sqlite_store = SqliteOperationStore(SqliteBackend(tmp_path / "parity.db"))
    await sqlite_store.start()
    firestore_store = await make_firestore_store()
    records = [pool_record(i) for i in range(40)]
    for i, rec in enumerate(records):
        rec = replace(rec, id=f"parity{i:03d}")
        await sqlite_store.create(rec)
        await firestore_store.create(rec)
    try:
        yield sqlite_store, firestore_store
    finally:
        await firestore_store.close()
        await sqlite_store.close()


@pytest.mark.google
@fixture_ok(40)
@given(node=filters(), page_size=st.integers(1, 9))
async def test_same_filter_same_results_on_embedded_and_google(
    store_pair: tuple[OperationStore, OperationStore], node: Node, page_size: int
) -> None:
    flt = parse_filter(node.text)
    embedded, google = store_pair
    on_sqlite = await _walk(embedded, flt, page_size, [], "")
    on_firestore = await _walk(google, flt, page_size, [], "")
    assert on_sqlite == on_firestore, node.text


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def pool_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OperationStore]:
    """A store holding the filter tests' pool of 40 records."""
    store: OperationStore
    if request.param == "sqlite":
        store = SqliteOperationStore(SqliteBackend(tmp_path / "pool.db"))
        await store.start()
    else:
        from tests.contract.google_backends import make_firestore_store, require_emulators

        require_emulators()
        store = await make_firestore_store()
    for i in range(40):
        await store.create(replace(pool_record(i), id=f"pool{i:03d}"))
    try:
        yield store
    finally:
        await store.close()


@fixture_ok(40)
@given(node=filters(), page_size=st.integers(1, 5), rows=st.integers(1, 7))
async def test_budget_limited_pages_walk_to_the_same_result(
    pool_store: OperationStore, node: Node, page_size: int, rows: int
) -> None:
    """A budget of a few rows makes pages short or empty; walking their
    tokens still yields every match once, in order (AIP-158)."""
    flt = parse_filter(node.text)
    pool = [replace(pool_record(i), id=f"pool{i:03d}") for i in range(40)]
    expected = [
        r.name
        for r in sorted(pool, key=lambda r: (r.create_time, r.id), reverse=True)
        if flt is None or flt.matches(r)
    ]
    assert await _walk(pool_store, flt, page_size, [], "", ScanBudget(rows)) == expected, node.text


#: The projects of the pool's records (record i is in PROJECTS[i % 3]).
PROJECTS = ("p-a", "p-b", "p-c")


def project_pool() -> list[OperationRecord]:
    return [replace(pool_record(i), id=f"pp{i:03d}", project=PROJECTS[i % 3]) for i in range(40)]


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def project_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OperationStore]:
    """A store holding the pool of 40 records spread over three projects."""
    store: OperationStore
    if request.param == "sqlite":
        store = SqliteOperationStore(SqliteBackend(tmp_path / "projects.db"))
        await store.start()
    else:
        from tests.contract.google_backends import make_firestore_store, require_emulators

        require_emulators()
        store = await make_firestore_store()
    for rec in project_pool():
        await store.create(rec)
    try:
        yield store
    finally:
        await store.close()


@fixture_ok(40)
@given(
    node=filters(),
    page_size=st.integers(1, 5),
    rows=st.integers(1, 9),
    scope=st.one_of(st.none(), st.frozensets(st.sampled_from([*PROJECTS, "p-none"]), max_size=4)),
)
async def test_project_limited_walks_yield_exactly_those_projects_matches(
    project_store: OperationStore,
    node: Node,
    page_size: int,
    rows: int,
    scope: frozenset[str] | None,
) -> None:
    """Any filter, any set of projects (none, one, several, all), any budget:
    the walk yields every match of those projects once, in order."""
    flt = parse_filter(node.text)
    expected = [
        r.name
        for r in sorted(project_pool(), key=lambda r: (r.create_time, r.id), reverse=True)
        if (scope is None or r.project in scope) and (flt is None or flt.matches(r))
    ]
    got = await _walk(project_store, flt, page_size, [], "", ScanBudget(rows), scope)
    assert got == expected, (node.text, scope)


async def test_a_filter_no_index_serves_reads_only_its_budget(store: OperationStore) -> None:
    """error.message is in no index: with a budget of 10 rows, pages of 1 over
    35 operations whose only match is the oldest come back empty, each with
    a token 10 rows further, until the scan reaches it."""
    run = uuid.uuid4().hex[:12]
    error = status_pb2.Status(code=13, message="needle").SerializeToString()
    target = make_record(labels={"run": run}, state=State.FAILED, error=error)
    await store.create(target)
    for _ in range(34):
        await store.create(make_record(labels={"run": run}))
    flt = parse_filter(f'labels.run = "{run}" AND error.message = "needle"')
    sizes: list[int] = []
    found: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await store.list(page_size=1, after=cursor, flt=flt, budget=ScanBudget(10))
        sizes.append(len(page.records))
        found += [r.name for r in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert found == [target.name]
    assert sizes == [0, 0, 0, 1]


@pytest.mark.parametrize(
    "text",
    [
        'labels.pick = "yes" AND labels.run = "{run}"',
        'labels.pick = "yes" AND metadata.task != "other"',
        'metadata.task = "{run}"',
        'metadata.task = "{run}" AND metadata.state = FAILED',
        'metadata.task = "{run}" AND done = true',
    ],
)
async def test_an_indexed_filter_reads_only_its_matches(store: OperationStore, text: str) -> None:
    """Three matches among 40 newer operations that do not match: with a
    budget of 4 rows the whole answer is one page without a token, because
    the scan walks an index of the filter's field, not the table."""
    run = uuid.uuid4().hex[:12]
    error = status_pb2.Status(code=13, message="boom").SerializeToString()
    picked = [
        make_record(task=run, labels={"run": run, "pick": "yes"}, state=State.FAILED, error=error)
        for _ in range(3)
    ]
    for rec in picked:
        await store.create(rec)
    for i in range(40):
        await store.create(make_record(task=f"{run}x" if i % 2 else "noop", labels={"run": run}))
    flt = parse_filter(text.format(run=run))
    page = await store.list(page_size=5, after=None, flt=flt, budget=ScanBudget(4))
    assert [r.name for r in page.records] == [r.name for r in reversed(picked)]
    assert page.next_cursor is None


async def test_a_create_time_range_reads_only_rows_inside_it(store: OperationStore) -> None:
    run = uuid.uuid4().hex[:12]
    recs = [make_record(labels={"run": run}) for _ in range(30)]
    for rec in recs:
        await store.create(rec)
    lo, hi = recs[10].create_time, recs[12].create_time
    flt = parse_filter(
        f'metadata.create_time >= "{lo.isoformat()}" AND metadata.create_time <= "{hi.isoformat()}"'
    )
    page = await store.list(page_size=10, after=None, flt=flt, budget=ScanBudget(4))
    assert [r.name for r in page.records] == [r.name for r in reversed(recs[10:13])]
    assert page.next_cursor is None
