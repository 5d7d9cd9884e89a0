"""The OperationStore contract for projects: every operation belongs to one;
a full name of another project names nothing; request ids are unique per
project; a list limited to projects holds exactly their operations."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from longrun_core import transitions
from longrun_core.errors import AlreadyExists, NotFound
from longrun_core.filtering import parse_filter
from longrun_core.model import OperationRecord
from longrun_core.names import DEFAULT_PROJECT, operation_name
from longrun_core.store import Cursor, OperationStore, RecordFilter, ScanBudget, request_fingerprint
from tests.contract.records import make_record


def in_project(project: str, **changes: object) -> OperationRecord:
    return make_record(project=project, **changes)


def other_name(rec: OperationRecord, project: str = "elsewhere") -> str:
    return operation_name(project, rec.id)


async def test_project_and_creator_round_trip(store: OperationStore) -> None:
    rec = in_project("acme", creator="user:alice@example.com")
    await store.create(rec)
    got = await store.get(rec.name)
    assert (got.project, got.creator) == ("acme", "user:alice@example.com")
    assert got.name == f"projects/acme/operations/{rec.id}"
    assert got.to_operation().name == got.name
    plain = make_record()
    await store.create(plain)
    assert (await store.get(plain.name)).project == DEFAULT_PROJECT


async def test_a_legacy_name_resolves_by_id(store: OperationStore) -> None:
    rec = in_project("acme")
    await store.create(rec)
    legacy = f"operations/{rec.id}"
    assert (await store.get(legacy)).name == rec.name
    updated = await store.update(legacy, lambda r: replace(r, progress_percent=9))
    assert updated.progress_percent == 9
    assert (await store.get(rec.name)).progress_percent == 9
    await store.delete(legacy)
    with pytest.raises(NotFound):
        await store.get(rec.name)


async def test_a_full_name_of_another_project_is_not_found_for_every_verb(
    store: OperationStore,
) -> None:
    rec = in_project("acme")
    await store.create(rec)
    wrong = other_name(rec)
    with pytest.raises(NotFound) as info:
        await store.get(wrong)
    assert info.value.metadata == {"name": wrong}
    with pytest.raises(NotFound):
        await store.update(wrong, lambda r: replace(r, progress_percent=50))
    with pytest.raises(NotFound):
        await store.delete(wrong)
    with pytest.raises(NotFound):
        async with store.watch(wrong):
            pass
    for absent_or_wrong in (wrong, operation_name("acme", "0" * 32)):
        with pytest.raises(NotFound) as info:
            async with store.watch_record(absent_or_wrong):
                pass
        assert info.value.metadata == {"name": absent_or_wrong}
    # Nothing changed, nothing deleted.
    got = await store.get(rec.name)
    assert (got.progress_percent, got.version) == (0, 1)


async def test_a_waiter_by_either_name_wakes_on_a_write_by_the_other(store: OperationStore) -> None:
    rec = in_project("acme")
    await store.create(rec)
    legacy = f"operations/{rec.id}"
    for watched, written in ((legacy, rec.name), (rec.name, legacy)):
        async with store.watch(watched) as watch:
            writer = asyncio.create_task(
                store.update(written, lambda r: replace(r, progress_percent=r.progress_percent + 1))
            )
            assert await watch.changed(10.0), (watched, written)
            await writer
    assert (await store.get(rec.name)).progress_percent == 2


def _with_request_id(rec: OperationRecord, request_id: str) -> OperationRecord:
    fp = request_fingerprint(rec.task, rec.params, dict(rec.labels))
    return replace(rec, request_id=request_id, request_hash=fp)


async def test_a_request_id_is_unique_per_project(store: OperationStore) -> None:
    rid = "3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b0c"
    a = _with_request_id(in_project("alpha"), rid)
    b = _with_request_id(in_project("beta"), rid)
    assert (await store.create(a)).created
    second = await store.create(b)
    assert second.created, "another project may reuse a request id"
    assert second.record.name == b.name
    # Within a project the id still deduplicates (same content) or conflicts.
    again = await store.create(replace(a, id=make_record().id))
    assert not again.created and again.record.name == a.name
    with pytest.raises(AlreadyExists):
        await store.create(_with_request_id(in_project("beta", task="sleep"), rid))
    # Deleting one project's operation frees its request id there only.
    await store.delete(a.name)
    fresh = replace(a, id=make_record().id)
    assert (await store.create(fresh)).created
    beta_again = await store.create(replace(b, id=make_record().id))
    assert not beta_again.created and beta_again.record.name == b.name


async def test_racing_creates_of_one_request_id_in_two_projects(store: OperationStore) -> None:
    rid = "7c6b5a49-3827-4165-9f8e-7d6c5b4a3928"
    base = _with_request_id(make_record(), rid)  # one request, sent to two projects
    racers = [
        replace(base, id=make_record().id, project=project)
        for project in ("alpha", "beta", "alpha", "beta", "alpha", "beta")
    ]
    results = await asyncio.gather(*(store.create(r) for r in racers))
    winners = {r.record.project: r.record.name for r in results if r.created}
    assert sorted(winners) == ["alpha", "beta"]
    assert sum(r.created for r in results) == 2
    for r in results:
        assert r.record.name == winners[r.record.project]


async def _walk(
    store: OperationStore,
    page_size: int,
    *,
    projects: frozenset[str] | None,
    flt: RecordFilter | None = None,
    budget: int | None = None,
) -> list[str]:
    names: list[str] = []
    cursor: Cursor | None = None
    for _ in range(1000):
        page = await store.list(
            page_size=page_size,
            after=cursor,
            flt=flt,
            projects=projects,
            budget=None if budget is None else ScanBudget(budget),
        )
        assert len(page.records) <= page_size
        names += [r.name for r in page.records]
        if page.next_cursor is None:
            return names
        cursor = page.next_cursor
    raise AssertionError("the walk did not end")


def _newest_first(recs: list[OperationRecord]) -> list[str]:
    return [r.name for r in sorted(recs, key=lambda r: (r.create_time, r.id), reverse=True)]


async def _seed(store: OperationStore) -> list[OperationRecord]:
    projects = ["alpha", "beta", "gamma", "alpha", "alpha", "beta"] * 3
    recs = [
        in_project(p, task="sleep" if i % 2 else "noop", labels={"n": str(i % 3)})
        for i, p in enumerate(projects)
    ]
    # Same create_time across projects: the id still orders them.
    recs.append(in_project("gamma", create_time=recs[4].create_time, task="noop"))
    for rec in recs:
        await store.create(rec)
    return recs


@pytest.mark.parametrize("page_size", [1, 2, 5, 50])
async def test_list_one_project_or_a_set_pages_exactly_their_operations(
    store: OperationStore, page_size: int
) -> None:
    recs = await _seed(store)
    for projects in ({"alpha"}, {"gamma"}, {"alpha", "beta"}, {"alpha", "beta", "gamma"}):
        got = await _walk(store, page_size, projects=frozenset(projects))
        assert got == _newest_first([r for r in recs if r.project in projects]), projects
    assert await _walk(store, page_size, projects=None) == _newest_first(recs)
    assert await _walk(store, page_size, projects=frozenset({"nobody"})) == []
    empty = await store.list(page_size=page_size, after=None, projects=frozenset())
    assert (list(empty.records), empty.next_cursor) == ([], None)


@pytest.mark.parametrize(
    "text",
    [
        'metadata.task = "sleep"',
        "done = false",
        "metadata.state = QUEUED",
        "metadata.state != RUNNING",
        'labels.n = "1"',
        'labels.n = "1" AND metadata.task = "sleep"',
        'metadata.progress_message = ""',
        'name = "projects/alpha/operations/*"',
    ],
)
async def test_list_projects_combined_with_a_filter(store: OperationStore, text: str) -> None:
    recs = await _seed(store)
    flt = parse_filter(text)
    assert flt is not None
    for projects in ({"alpha"}, {"beta", "gamma"}, None):
        want = _newest_first(
            [r for r in recs if (projects is None or r.project in projects) and flt.matches(r)]
        )
        scope = None if projects is None else frozenset(projects)
        assert await _walk(store, 2, projects=scope, flt=flt) == want, (text, projects)


async def test_list_projects_within_a_scan_budget_resumes_without_loss(
    store: OperationStore,
) -> None:
    recs = await _seed(store)
    for projects in ({"alpha"}, {"alpha", "gamma"}):
        want = _newest_first([r for r in recs if r.project in projects])
        assert await _walk(store, 3, projects=frozenset(projects), budget=2) == want


async def test_a_project_list_reads_only_that_projects_operations(store: OperationStore) -> None:
    """Pushed down: with other projects' operations interleaved, a page of one
    project is found within a budget that counts only its own rows."""
    mine = []
    for i in range(40):
        await store.create(in_project("noisy"))
        if i % 4 == 0:
            rec = in_project("quiet")
            await store.create(rec)
            mine.append(rec)
    page = await store.list(
        page_size=len(mine), after=None, projects=frozenset({"quiet"}), budget=ScanBudget(11)
    )
    assert [r.name for r in page.records] == _newest_first(mine)
    both = await store.list(
        page_size=20, after=None, projects=frozenset({"quiet", "other"}), budget=ScanBudget(11)
    )
    assert [r.name for r in both.records] == _newest_first(mine)


async def test_a_large_set_of_projects_lists_exactly_theirs(store: OperationStore) -> None:
    """More projects than one query names at once (checked per record)."""
    projects = [f"p{i:02d}" for i in range(40)]
    recs = [in_project(p) for p in projects for _ in range(2)]
    for rec in recs:
        await store.create(rec)
    await store.create(in_project("outsider"))
    got = await _walk(store, 7, projects=frozenset(projects))
    assert got == _newest_first(recs)


async def test_count_open_counts_a_creators_unfinished_operations_up_to_a_limit(
    store: OperationStore,
) -> None:
    alice, bob = "user:alice@example.com", "key:0123456789abcdef"
    mine = [in_project("acme", creator=alice) for _ in range(4)]
    for rec in [*mine, in_project("acme", creator=bob), in_project("other", creator=alice)]:
        await store.create(rec)
    await store.create(make_record())  # no creator (made without authentication)
    assert await store.count_open(alice, 100) == 5  # across projects
    assert await store.count_open(alice, 3) == 3  # stops at the limit
    assert await store.count_open(bob, 100) == 1
    assert await store.count_open("user:nobody@example.com", 100) == 0
    assert await store.count_open(alice, 0) == 0
    await store.update(
        mine[0].name,
        lambda r: transitions.request_cancel(r, now=r.update_time, retention=timedelta(days=1)),
    )
    assert (await store.get(mine[0].name)).done
    assert await store.count_open(alice, 100) == 4  # a finished one no longer counts
    await store.delete(mine[1].name)
    assert await store.count_open(alice, 100) == 3
