"""ListDeadLetters' attribution and paging (server/dead_letters.py) over a
fake queue and store: a dead letter is listed under its stored operation's
project only, names of projects the caller may not see are skipped without a
read, unattributable ones go to callers who see everything, one call reads
at most `scan` dead letters, and page tokens are bound to their parent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from longrun_core.access import ALL_PROJECTS, Permission, denied
from longrun_core.errors import InvalidArgument, NotFound, PermissionDenied
from longrun_core.model import OperationRecord
from longrun_core.queue import DeadLetter, TaskMessage, TaskQueue
from longrun_server.dead_letters import (
    DeadLetterLister,
    decode_token,
    encode_token,
    page_size_of,
    parse_dead_letters_parent,
)
from tests.contract.records import make_record

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class FakeQueue(TaskQueue):
    def __init__(self, letters: list[DeadLetter]) -> None:
        self.letters = sorted(letters, key=lambda d: d.order, reverse=True)
        self.asked: list[int] = []

    async def publish(self, message: TaskMessage) -> None:
        raise NotImplementedError

    async def receive(self, max_messages: int, timeout: float, *, claim: object = None) -> list:  # type: ignore[override, type-arg]
        raise NotImplementedError

    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        raise NotImplementedError

    async def read_dead_letters(
        self, limit: int, *, before: tuple[datetime, str] | None = None
    ) -> list[DeadLetter]:
        self.asked.append(limit)
        found = [d for d in self.letters if before is None or d.order < before]
        return found[:limit]


@dataclass
class FakeStore:
    records: dict[str, OperationRecord]
    reads: list[str] = field(default_factory=list)

    async def get(self, name: str) -> OperationRecord:
        self.reads.append(name)
        op_id = name.rsplit("/", 1)[1]
        rec = self.records.get(op_id)
        if rec is None or (name.startswith("projects/") and rec.name != name):
            raise NotFound(f"{name} not found")
        return rec


@dataclass
class Roles:
    projects: frozenset[str] | None

    def require(self, permission: Permission, project: str) -> None:
        if self.projects is not None and project not in self.projects:
            raise denied(permission, f"projects/{project}")

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        return self.projects


def letter(n: int, operation: str, reason: str = "poison") -> DeadLetter:
    return DeadLetter(
        TaskMessage(operation, "noop", 1),
        f"{reason} {n}",
        id=f"{n:012d}",
        dead_time=T0 + timedelta(seconds=n),
        deliveries=n,
    )


@pytest.fixture
def world() -> tuple[dict[str, OperationRecord], list[DeadLetter]]:
    a = make_record(project="alpha")
    b = make_record(project="beta")
    records = {a.id: a, b.id: b}
    letters = [
        letter(1, a.name),
        letter(2, b.name),
        letter(3, f"operations/{a.id}"),  # the legacy form: found by id
        letter(4, f"projects/beta/operations/{a.id}", "forged"),  # wrong project
        letter(5, "projects/alpha/operations/gone", "missing"),
        letter(6, "not a name", "garbage"),
    ]
    return records, letters


def lister(
    world: tuple[dict[str, OperationRecord], list[DeadLetter]],
    projects: frozenset[str] | None,
    scan: int = 100,
) -> tuple[DeadLetterLister, FakeQueue, FakeStore]:
    records, letters = world
    queue, store = FakeQueue(letters), FakeStore(records)
    return DeadLetterLister(queue, store, Roles(projects), scan=scan), queue, store  # type: ignore[arg-type]


async def test_each_dead_letter_is_listed_under_its_stored_operations_project(
    world: tuple[dict[str, OperationRecord], list[DeadLetter]],
) -> None:
    listing, _, _ = lister(world, ALL_PROJECTS)
    everything = await listing.page("-", 50, None)
    assert [(m.reason, m.name.split("/")[1]) for m in everything.letters] == [
        ("garbage 6", "-"),
        ("missing 5", "-"),
        ("forged 4", "-"),
        ("poison 3", "alpha"),
        ("poison 2", "beta"),
        ("poison 1", "alpha"),
    ]
    assert everything.next_cursor is None
    alpha = await listing.page("alpha", 50, None)
    assert [m.reason for m in alpha.letters] == ["poison 3", "poison 1"]
    a = next(r for r in world[0].values() if r.project == "alpha")
    assert {m.operation for m in alpha.letters} == {a.name}  # the stored name, even for legacy
    assert alpha.letters[0].queue == "projects/alpha/queues/default"
    assert alpha.letters[0].delivery_count == 3
    assert alpha.letters[0].dead_letter_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=3)


async def test_a_viewer_of_one_project_sees_its_own_and_reads_no_other_project(
    world: tuple[dict[str, OperationRecord], list[DeadLetter]],
) -> None:
    listing, _, store = lister(world, frozenset({"alpha"}))
    mine = await listing.page("-", 50, None)
    assert [m.reason for m in mine.letters] == ["poison 3", "poison 1"]
    # Names in beta (the real one and the forged one) were never read.
    assert not any(name.startswith("projects/beta/") for name in store.reads)
    with pytest.raises(PermissionDenied):
        await listing.page("beta", 50, None)
    nobody, _, none_read = lister(world, frozenset())
    assert (await nobody.page("-", 50, None)).letters == []
    assert none_read.reads == []


async def test_pages_follow_the_cursor_and_a_call_reads_at_most_scan(
    world: tuple[dict[str, OperationRecord], list[DeadLetter]],
) -> None:
    listing, queue, _ = lister(world, ALL_PROJECTS)
    first = await listing.page("-", 4, None)
    assert [m.reason for m in first.letters] == ["garbage 6", "missing 5", "forged 4", "poison 3"]
    assert first.next_cursor is not None
    rest = await listing.page("-", 4, first.next_cursor)
    assert [m.reason for m in rest.letters] == ["poison 2", "poison 1"]
    assert rest.next_cursor is None
    # With a scan of 2, alpha's page stops short (scanned 6 and 5, none alpha's)
    # and says where to go on.
    short, queue, _ = lister(world, ALL_PROJECTS, scan=2)
    page = await short.page("alpha", 50, None)
    assert page.letters == [] and page.next_cursor == world[1][4].order
    assert queue.asked == [2]
    after = await short.page("alpha", 50, page.next_cursor)
    assert [m.reason for m in after.letters] == ["poison 3"]


def test_tokens_are_bound_to_their_parent_and_bad_ones_refused() -> None:
    cursor = (T0, "000000000007")
    token = encode_token("projects/alpha", cursor)
    assert decode_token("projects/alpha", token) == cursor
    assert decode_token("projects/alpha", "") is None
    for parent, bad in (
        ("projects/beta", token),
        ("projects/alpha", "x"),
        ("projects/alpha", "e30"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            decode_token(parent, bad)
        assert caught.value.reason == "PAGE_TOKEN_INVALID"


def test_parents_and_page_sizes() -> None:
    assert parse_dead_letters_parent("projects/alpha") == "alpha"
    assert parse_dead_letters_parent("projects/-") == "-"
    for bad in ("alpha", "projects/", "projects/UPPER", "operations"):
        with pytest.raises(InvalidArgument):
            parse_dead_letters_parent(bad)
    assert (page_size_of(0), page_size_of(7), page_size_of(10_000)) == (50, 7, 200)
    with pytest.raises(InvalidArgument):
        page_size_of(-1)
