"""The operation store seam.

An `OperationStore` keeps one record per operation. Every state change goes
through `update`, a compare-and-set loop around a pure transition from
`longrun_core.transitions`, so concurrent and repeated (redelivered) changes are safe:

* Redelivery: transitions are idempotent or fenced, so applying the same
  change twice writes once, and a stale worker's write is rejected.
* Conflict: two writers never both win; the loser re-reads and re-applies its
  transition to the fresh record (at most `max_conflicts` times, then `Aborted`).
* Crash: a write is atomic and durable once the call returns; a crash before
  that leaves the previous version intact.
* Versions: every write stores `version + 1`, and nothing else changes it.
  Leases rest on this (below).

Leases and clocks: no process decides that another's lease has ended by
reading that process's timestamps with its own wall clock (machines' clocks
may be minutes apart). A lease holder renews by writing, so the version
advances; an observer (the sweeper, or a worker given a duplicate message)
takes a lease back only after seeing, through `leased` or `get`, the same
version for the record's `lease_duration` on its own monotonic clock
(`longrun_core.leases`). `lease_expire_time` is the holder's estimate and
decides nothing. `store_time` exposes the store's own clock so that
processes can detect and log a skewed clock of their own.

Adapters implement the primitives (`_read`, `_insert`, `_replace_if_version`,
...) and inherit the loop. The contract suite (tests/contract) runs against
every adapter.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from longrun_core.model import OperationRecord, State, evolve
from longrun_core.names import OperationName, operation_name, parse_operation_name, watch_key
from longrun_core.settings import DEFAULT_LIST_SCAN_BUDGET
from longrun_core.watch import WatchHub

if TYPE_CHECKING:
    from longrun_core.transitions import SlotRequest

#: What a list scan checks the filter on (a record, a row, a document).
R = TypeVar("R")


class RecordFilter(Protocol):
    """A parsed ListOperations filter. Adapters push down what they can and
    call `matches` for the rest."""

    def matches(self, rec: OperationRecord) -> bool: ...


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position in the list order (newest first: create_time desc, id desc)."""

    create_time: datetime
    id: str

    @staticmethod
    def after(rec: OperationRecord) -> Cursor:
        return Cursor(rec.create_time, rec.id)


@dataclass(frozen=True, slots=True)
class ListPage:
    records: Sequence[OperationRecord]
    #: Where the next page starts; None at the end of the list.
    next_cursor: Cursor | None
    #: Stored rows the call read to make the page (counted against a
    #: ScanBudget; a caller that makes several calls for one answer spends
    #: one budget across them).
    scanned: int = 0


@dataclass(frozen=True, slots=True)
class CreateResult:
    record: OperationRecord
    #: False when `request_id` matched an existing operation, which is returned.
    created: bool
    #: True when the store also enqueued the operation's task message in the
    #: same write (a store whose queue shares its transactions); the caller
    #: publishes it otherwise.
    enqueued: bool = False


class Watch(Protocol):
    async def changed(self, timeout: float) -> bool:
        """Wait until the operation may have changed since the last call (or
        since the watch began); False at the timeout."""
        ...


@dataclass(frozen=True)
class QueueReady:
    """`OperationStore.ready_by_queue`'s answer for one queue id."""

    queue: str
    ready: int
    oldest_ready_since: datetime


class OperationStore(abc.ABC):
    max_conflicts = 50

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub

    # ---- the verbs callers use ----

    async def create(self, rec: OperationRecord) -> CreateResult:
        """Store a new operation. If `rec.request_id` is set and an operation
        of the same project with that request id exists, return it instead
        (created=False); two racing creates with one request id in one project
        store exactly one operation (another project may reuse the request
        id). An existing id raises AlreadyExists."""
        return await self._insert(evolve(rec, version=1))

    async def get(self, name: str) -> OperationRecord:
        """The current record; NotFound if it does not exist (or was deleted),
        or if `name` is a full name whose project is not the record's. A
        legacy `operations/{id}` name resolves by id alone."""
        parsed = parse_operation_name(name)
        rec = await self._read(parsed.id)
        if rec is None or not in_project(rec, parsed):
            raise not_found(name)
        return rec

    async def update(
        self,
        name: str,
        transition: Callable[[OperationRecord], OperationRecord | None],
    ) -> OperationRecord:
        """Apply `transition` to the current record and write the result if
        the record did not change meanwhile; on conflict, re-read and re-apply.
        Returns the stored record (unchanged when `transition` returns None).
        Exceptions from `transition` propagate; NotFound if absent."""
        for _ in range(self.max_conflicts):
            current = await self.get(name)
            new = next_version(current, transition)
            if new is None:
                return current
            if await self._replace_if_version(new, current.version, previous=current):
                await self.on_written(current.name)
                return new
            await asyncio.sleep(0)
        raise Aborted(f"operation {name!r} changed concurrently too often; retry")

    async def claim_slot(
        self,
        name: str,
        transition: Callable[[OperationRecord], OperationRecord | None],
        request: SlotRequest,
    ) -> OperationRecord:
        """`update` with `transition` (a claim admitted past its slot check),
        guarded by the concurrency limits of `request`: if the result is
        RUNNING, the other attempts of its queue (and of its concurrency key)
        that are RUNNING are counted in the same atomic step, and when a limit
        is reached nothing is written and ConcurrencyLimited is raised. A
        finished attempt's slot comes back at once (it is not RUNNING); a
        crashed holder's when its lease is found lost (the dispatcher's lease
        check or a redelivery's claim takes the record out of RUNNING).
        When `request.rate` is set, the same step takes a token from the
        queue's rate bucket kept in the store, after the concurrency check
        (`transitions.rate_step`, longrun_core.rate_bucket): a claim with no
        token now writes the record waiting RATE_LIMITED with a token
        reserved for later and the bucket moved on, then raises RateLimited
        (reserved); with none within the horizon it writes nothing and
        raises RateLimited (not reserved). Guarantees in
        tests/contract/test_rate_limits.py.
        Adapters that cannot guard the count raise FailedPrecondition (their
        queue store refuses limits, so this is not reached)."""
        raise FailedPrecondition(
            f"{type(self).__name__} does not enforce queue concurrency limits",
            reason="QUEUE_LIMITS_UNSUPPORTED",
        )

    async def release_slot(self, ended: OperationRecord, request: SlotRequest) -> None:
        """Attempt `ended.attempt` of `ended` is over: give back the slots it
        took under `request` now, if the store keeps slots apart from the
        records (Firestore). Frees nothing while the stored record still runs
        that attempt. Best effort: a slot not given back here is found free
        by the next claim that needs it. SQLite counts records: nothing to do."""
        return None

    async def delete(self, name: str) -> None:
        """Remove the operation; NotFound if absent. A later update by a worker
        finds nothing and cannot bring it back."""
        parsed = parse_operation_name(name)
        if not await self._delete(parsed.id, project=parsed.project):
            raise not_found(name)
        await self.on_written(name)

    @asynccontextmanager
    async def watch(self, name: str) -> AsyncIterator[Watch]:
        """Change notifications for one operation; one underlying watch per
        operation is shared by all its waiters and released after the last.
        A full name of another project than the operation's is NotFound (a
        legacy name, or one of an absent operation, is watched as it is)."""
        parsed = parse_operation_name(name)
        if parsed.project is not None:
            rec = await self._read(parsed.id)
            if rec is not None and not in_project(rec, parsed):
                raise not_found(name)
        async with self.hub.subscribe(parsed.watch_key) as sub:
            yield sub

    @asynccontextmanager
    async def watch_record(self, name: str) -> AsyncIterator[tuple[Watch, OperationRecord]]:
        """`watch` together with the record as read after the watch began, so
        a change after that read is signalled on the watch: one read where
        `watch` then `get` take two (WaitOperation's path). NotFound as `get`
        (absent, or a full name of another project than the record's)."""
        parsed = parse_operation_name(name)
        async with self.hub.subscribe(parsed.watch_key) as sub:
            yield sub, await self.get(name)

    # ---- primitives for adapters ----

    @abc.abstractmethod
    async def _read(self, op_id: str) -> OperationRecord | None: ...

    @abc.abstractmethod
    async def _insert(self, rec: OperationRecord) -> CreateResult: ...

    @abc.abstractmethod
    async def _replace_if_version(
        self,
        rec: OperationRecord,
        expected_version: int,
        *,
        previous: OperationRecord | None = None,
    ) -> bool:
        """Write `rec` only if the stored version is `expected_version`.
        `previous`, when given, is the stored record `rec` was made from (an
        adapter may then write only the fields that changed)."""

    @abc.abstractmethod
    async def _delete(self, op_id: str, *, project: str | None = None) -> bool:
        """Delete the record `op_id` (only if it belongs to `project`, when
        given); False if there is no such record."""

    @abc.abstractmethod
    async def list(
        self,
        *,
        page_size: int,
        after: Cursor | None,
        flt: RecordFilter | None = None,
        budget: ScanBudget | None = None,
        projects: frozenset[str] | None = None,
    ) -> ListPage:
        """Up to `page_size` matching records of `projects` (None: every
        project; an empty set: none), newest first, starting after `after`.
        The project constraint is pushed down (an index walk per project, not
        a scan of every record). Records created after the walk began may or may not appear;
        none appears twice and none present for the whole walk is skipped.

        The call reads at most `budget` (default `ScanBudget()`) and never on
        the event loop's thread: when the budget runs out first, the page is
        shorter (possibly empty) and `next_cursor` resumes just after the last
        row read. Cancelling the call stops the scan."""

    @abc.abstractmethod
    async def due_for_dispatch(self, now: datetime, limit: int) -> Sequence[OperationRecord]:
        """Up to `limit` QUEUED records whose `dispatch_due_time` is at or
        before `now`, earliest due first (an index walk over due records
        only): the sweeper publishes them (or, due a little ahead, sets
        timers for them)."""

    @abc.abstractmethod
    async def queued_in(
        self, project: str, queue: str, *, after: str = "", limit: int = 500
    ) -> Sequence[OperationRecord]:
        """Up to `limit` QUEUED records of `queue` in `project` whose id is
        above `after`, by id (an index walk, not a scan): PurgeQueue and
        ResumeQueue go through them."""

    @abc.abstractmethod
    async def count_in_queue(self, project: str, queue: str, state: State, limit: int) -> int:
        """How many records of `queue` in `project` are in `state` (QUEUED or
        RUNNING), counting at most `limit` (QueueStats: an indexed COUNT, a
        count aggregation; never a read of the records)."""

    @abc.abstractmethod
    async def leased(self, limit: int) -> Sequence[OperationRecord]:
        """Up to `limit` RUNNING records, earliest `lease_expire_time` first
        (those most likely lost, if there are more): the sweeper watches their
        versions to find lost leases (see the module docstring)."""

    async def store_time(self) -> datetime | None:
        """The store's own clock, as near as this process can tell (None if
        it cannot), to detect a skewed local clock. Never used to judge a
        lease."""
        return None

    @abc.abstractmethod
    async def count_open(self, creator: str, limit: int) -> int:
        """How many unfinished operations `creator` (a principal id) made,
        counting at most `limit` (the open-operations quota's question; an
        index walk, never a scan of every record)."""

    @abc.abstractmethod
    async def ready_by_queue(self, now: datetime, limit: int) -> Sequence[QueueReady]:
        """The QUEUED operations that may run at `now` (no `run_after`, or one
        passed), grouped by queue id (projects together): how many, and since
        when the longest-waiting one may run (its `run_after`, else its
        `create_time`). Reads at most `limit` QUEUED records (an index walk,
        never a scan of every record): what the per-queue depth gauges show."""

    @abc.abstractmethod
    async def delete_expired(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` finished records whose `expire_time` has passed."""

    def max_outcome_bytes(self, rec: OperationRecord) -> int | None:
        """The largest serialized response or error this store can keep for
        `rec` (a document store's size limit less the rest of the record);
        None when the store sets no limit of its own. Workers store no
        bigger outcome (they fail the operation with RESULT_TOO_LARGE)."""
        return None

    async def on_written(self, name: str) -> None:
        """Hook after a successful write to the operation `name` (any accepted
        form; see `watch_key_of`): the SQLite store notifies other processes."""

    async def start(self) -> None:
        """Open connections and start change feeds."""

    async def close(self) -> None:
        """Release connections and watches."""


def next_version(
    current: OperationRecord, transition: Callable[[OperationRecord], OperationRecord | None]
) -> OperationRecord | None:
    """What `transition` makes of `current`, at the next version; None when it
    changes nothing (no write needed)."""
    new = transition(current)
    if new is None or new == current:
        return None
    return evolve(new, version=current.version + 1)


def is_scheduled_ahead(rec: OperationRecord) -> bool:
    """A new record whose first attempt may not start yet (CreateJob
    schedule_time): nobody publishes it before its dispatch_due_time."""
    return rec.run_after is not None and rec.run_after > rec.create_time


def not_found(name: str) -> NotFound:
    return NotFound(f"operation {name!r} not found", metadata={"name": name})


#: Rows a list call may scan unless configured otherwise (`--list-scan-budget`).
DEFAULT_SCAN_ROWS = DEFAULT_LIST_SCAN_BUDGET
#: Rows one window of a scan reads at most (one short query off the event loop).
SCAN_WINDOW = 500
#: Rows the first window of a scan reads at least (later windows grow to SCAN_WINDOW).
FIRST_WINDOW = 32
#: Records `Filter.matches` checks between two yields to the event loop.
MATCH_CHUNK = 64


@dataclass(frozen=True, slots=True)
class ScanBudget:
    """How much one list call may read: at most `rows` stored rows (entries
    of the index the scan walks, whether they match or not), and no new
    window after `deadline` (a `time.monotonic()` instant). A page cut short
    by either holds what was found so far plus a cursor just after the last
    row read (AIP-158 allows short, even empty, pages)."""

    rows: int = DEFAULT_SCAN_ROWS
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"a scan budget must allow at least 1 row, got {self.rows}")

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass(frozen=True, slots=True)
class Window(Generic[R]):
    """What one read of a list scan found."""

    #: The rows of the window the query could not rule out, in list order:
    #: records, or whatever cheaper form the adapter checks the rest of the
    #: filter on (see `scan_page`). At most `want` of them when exact.
    records: Sequence[R]
    #: How many rows the window read (matching or not).
    scanned: int
    #: The position of the last row read; None if none was.
    last: Cursor | None
    #: True when nothing is left after `last`.
    at_end: bool


async def scan_page(
    fetch: Callable[[Cursor | None, int, int], Awaitable[Window[R]]],
    *,
    page_size: int,
    after: Cursor | None,
    budget: ScanBudget,
    position: Callable[[R], Cursor],
    complete: Callable[[Sequence[R]], Awaitable[Sequence[OperationRecord]]],
    keep: Callable[[R], bool] | None = None,
    window: int = SCAN_WINDOW,
    gate: asyncio.Semaphore | None = None,
) -> ListPage:
    """One page of a list scan.

    `fetch(cursor, limit, want)` reads the next window after `cursor`: at
    most `limit` rows, returning those its query could not rule out (at most
    `want` when the query is exact, i.e. `keep` is None). `keep` checks the
    rest of the filter on each, on the event loop, yielding between chunks;
    `complete` turns the kept ones into the page's records (reading their
    full rows; it drops any that changed and no longer match).

    `gate`, shared by the store's scans, bounds how many windows (a read and
    the checks of its rows) run at once: scans take turns window by window,
    and the rest of the server keeps the CPU (and the GIL) it needs.

    The page ends at the last record kept, so rows the filter dropped never
    shift the next page. The scan stops when the page is full, the list
    ends, or the budget is spent; then the page ends just after the last row
    read. Every await is a cancellation point: a caller that goes away stops
    the scan after the window in progress."""
    kept: list[R] = []
    cursor = after
    scanned = 0
    # Small windows first (a page of 1 rarely needs 500 rows), then larger.
    size = min(window, max(2 * page_size + 2, FIRST_WINDOW))
    while True:
        async with gate or contextlib.nullcontext():
            got = await fetch(cursor, min(size, budget.rows - scanned), page_size - len(kept) + 1)
            scanned += got.scanned
            size = min(window, size * 4)
            full = await _keep(got, kept, page_size, keep)
        if full is not None:
            at = position(got.records[full])
            more = full + 1 < len(got.records) or not got.at_end or at != got.last
            return ListPage(await complete(kept), at if more else None, scanned)
        if got.at_end or got.last is None:
            return ListPage(await complete(kept) if kept else [], None, scanned)
        cursor = got.last
        if scanned >= budget.rows or budget.expired():
            return ListPage(await complete(kept) if kept else [], cursor, scanned)


async def _keep(
    got: Window[R], kept: list[R], page_size: int, keep: Callable[[R], bool] | None
) -> int | None:
    """Add what `keep` keeps of the window to `kept`; the index of the row
    that filled the page, if one did."""
    for i, row in enumerate(got.records):
        if keep is not None:
            if i and i % MATCH_CHUNK == 0:
                await asyncio.sleep(0)  # let other calls run between chunks
            if not keep(row):
                continue
        kept.append(row)
        if len(kept) == page_size:
            return i
    return None


async def as_records(records: Sequence[OperationRecord]) -> Sequence[OperationRecord]:
    """`complete` for a scan whose windows hold full records already."""
    return records


def in_project(rec: OperationRecord, parsed: OperationName) -> bool:
    """Whether `parsed` names `rec`: a legacy name (no project) names it by
    id; a full name only within the record's own project."""
    return parsed.project is None or parsed.project == rec.project


def watch_key_of(name: str) -> str:
    """The key change notifications for operation `name` go by, whatever
    form of the name it is."""
    return watch_key(parse_operation_name(name).id)


def request_fingerprint(task: str, params: bytes, labels: dict[str, str]) -> str:
    """What makes two CreateJob requests with one request_id 'the same'."""
    blob = json.dumps([task, params.hex(), sorted(labels.items())]).encode()
    return hashlib.sha256(blob).hexdigest()


def check_duplicate(existing: OperationRecord, new: OperationRecord) -> CreateResult:
    if existing.request_hash != new.request_hash:
        raise AlreadyExists(
            f"request_id {new.request_id!r} was already used by {existing.name} with different "
            "content; use a new request_id for a different request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": new.request_id or "", "operation": existing.name},
        )
    return CreateResult(existing, created=False)


class PageTokens:
    """Opaque, URL-safe, HMAC-signed page tokens bound to the query they page.

    A token carries only a position; it grants nothing (every page is still
    served under the caller's own request)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, cursor: Cursor, binding: str) -> str:
        body = json.dumps(
            [to_micros(cursor.create_time), cursor.id, _digest(binding)], separators=(",", ":")
        ).encode()
        sig = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(sig + body).decode().rstrip("=")

    def decode(self, token: str, binding: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sig, body = raw[:16], raw[16:]
            if not hmac.compare_digest(
                sig, hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
            ):
                raise ValueError("bad signature")
            ts, op_id, bound = json.loads(body)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                "page_token is not a token this server issued; pass the next_page_token of the "
                "previous response unchanged, or none for the first page",
                reason="PAGE_TOKEN_INVALID",
            ) from exc
        if bound != _digest(binding):
            raise InvalidArgument(
                "page_token was issued for a different filter or collection; keep the request "
                "parameters the same while paging",
                reason="PAGE_TOKEN_MISMATCH",
            )
        return Cursor(from_micros(int(ts)), str(op_id))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = [
    "CreateResult",
    "Cursor",
    "ListPage",
    "OperationStore",
    "PageTokens",
    "RecordFilter",
    "ScanBudget",
    "Watch",
    "Window",
    "in_project",
    "operation_name",
    "watch_key_of",
]
