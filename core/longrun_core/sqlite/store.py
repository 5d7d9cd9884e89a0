"""SQLite operation store (see longrun_core.store for the guarantees)."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from google.rpc import status_pb2

from longrun_core import transitions
from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import AlreadyExists
from longrun_core.filtering.index_terms import IndexTerms
from longrun_core.model import (
    OperationRecord,
    State,
    WaitReason,
    attempts_from_text,
    attempts_to_text,
    evolve,
)
from longrun_core.names import DEFAULT_PROJECT, parse_operation_name, watch_key
from longrun_core.observability.trace_context import current_traceparent
from longrun_core.queue import TaskMessage, Transition
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.db import transaction
from longrun_core.sqlite.list_scan import (
    ScanPlan,
    ScanReader,
    ensure_list_indexes,
    make_plan,
    read_window,
    row_values,
    value_columns,
)
from longrun_core.sqlite.queues import migrate as migrate_queues
from longrun_core.sqlite.queues import read_bucket, write_bucket
from longrun_core.stamped_cache import DEFAULT_MAX_BYTES, StampedCache
from longrun_core.store import (
    CreateResult,
    Cursor,
    ListPage,
    OperationStore,
    QueueReady,
    RecordFilter,
    ScanBudget,
    Window,
    as_records,
    check_duplicate,
    in_project,
    is_scheduled_ahead,
    next_version,
    not_found,
    scan_page,
    watch_key_of,
)
from longrun_core.transitions import (
    ConcurrencyLimited,
    SlotRequest,
    over_limit,
    rate_step,
)
from longrun_core.watch import WatchHub

if TYPE_CHECKING:
    from longrun_core.sqlite.queue import SqliteTaskQueue

_TIME_FIELDS = {
    "create_time": "create_us",
    "update_time": "update_us",
    "start_time": "start_us",
    "end_time": "end_us",
    "lease_expire_time": "lease_expire_us",
    "dispatch_due_time": "dispatch_due_us",
    "run_after": "run_after_us",
    "schedule_time": "schedule_us",
    "expire_time": "expire_us",
    "rate_token_time": "rate_token_us",
}
#: Durations, kept as whole microseconds.
_DURATION_FIELDS = {"lease_duration": "lease_us", "dispatch_deadline": "dispatch_deadline_us"}
_COLUMN_OF = _TIME_FIELDS | _DURATION_FIELDS
_MICRO = timedelta(microseconds=1)
#: Columns added to `operations` after its first release (db.SCHEMA has the
#: rest): `migrate` adds them to an older database file.
ADDED_COLUMNS = {
    "lease_us": "INTEGER",
    "releases": "INTEGER NOT NULL DEFAULT 0",
    # Rows stored before operations had a project belong to the default one.
    "project": f"TEXT NOT NULL DEFAULT '{DEFAULT_PROJECT}'",
    "creator": "TEXT",
    # Queues (issue 12): rows from before ran in their project's default queue.
    "queue": "TEXT NOT NULL DEFAULT 'default'",
    "schedule_us": "INTEGER",
    "dispatch_deadline_us": "INTEGER",
    "concurrency_key": "TEXT",
    "wait_reason": "INTEGER NOT NULL DEFAULT 0",
    # Tracing (issue 14): the CreateJob's and the first attempt's traceparent.
    "trace": "TEXT",
    "first_attempt_trace": "TEXT",
    "rate_token_us": "INTEGER",
    # The attempts history (model.attempts_to_text: compact JSON; NULL: none).
    "attempts": "TEXT",
}
#: Indexes on added columns, created by `migrate` once the columns exist.
#: A request id is unique within its project (the old index made it unique
#: across all of them, and is dropped); listing one project walks
#: `operations_project_order` (see longrun_core.sqlite.list_scan).
ADDED_INDEXES = (
    "DROP INDEX IF EXISTS operations_request_id",
    "CREATE UNIQUE INDEX IF NOT EXISTS operations_project_request_id "
    "ON operations(project, request_id) WHERE request_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS operations_project_order "
    "ON operations(project, create_us DESC, id DESC)",
    # The open-operations quota counts a creator's unfinished operations.
    "CREATE INDEX IF NOT EXISTS operations_creator_open "
    "ON operations(creator) WHERE done = 0 AND creator IS NOT NULL",
    # A queue's QUEUED operations (Purge, Resume): not done ones only.
    "CREATE INDEX IF NOT EXISTS operations_queue_waiting "
    "ON operations(project, queue, state) WHERE done = 0",
)
_FIELDS = [f.name for f in fields(OperationRecord)]
COLUMNS = [_COLUMN_OF.get(n, n) for n in _FIELDS] + ["done", "error_code"]
_COLUMNS = ", ".join(COLUMNS[: len(_FIELDS)])
_SELECT = f"SELECT {_COLUMNS} FROM operations"
#: The columns of `_SELECT` without the payloads a filter never reads (a list
#: scan checks these light records and reads the full rows of those it keeps).
_LIGHT_COLUMNS = ", ".join(
    {"params": "X'' AS params", "response": "NULL AS response"}.get(c, c)
    for c in COLUMNS[: len(_FIELDS)]
)


def to_row(rec: OperationRecord) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(rec, name)
        if name in _TIME_FIELDS:
            row[_TIME_FIELDS[name]] = None if value is None else to_micros(value)
        elif name in _DURATION_FIELDS:
            row[_DURATION_FIELDS[name]] = None if value is None else value // _MICRO
        elif name == "labels":
            row["labels"] = json.dumps(dict(value), sort_keys=True)
        elif name == "attempts":
            row["attempts"] = attempts_to_text(value)
        elif name in ("state", "cancel_requested", "wait_reason"):
            row[name] = int(value)
        else:
            row[name] = value
    row["done"] = int(rec.done)
    row["error_code"] = (
        status_pb2.Status.FromString(rec.error).code if rec.done and rec.error is not None else None
    )
    return row


def from_row(row: sqlite3.Row | tuple[Any, ...]) -> OperationRecord:
    values: dict[str, Any] = {}
    for name, value in zip(_FIELDS, row, strict=False):
        if name in _TIME_FIELDS:
            values[name] = None if value is None else from_micros(value)
        elif name in _DURATION_FIELDS:
            values[name] = None if value is None else timedelta(microseconds=value)
        elif name == "labels":
            values[name] = json.loads(value)
        elif name == "attempts":
            values[name] = attempts_from_text(value)
        elif name == "state":
            values[name] = State(value)
        elif name == "wait_reason":
            values[name] = WaitReason(value)
        elif name == "cancel_requested":
            values[name] = bool(value)
        else:
            values[name] = value
    return OperationRecord(**values)


_INSERT = (
    f"INSERT INTO operations ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
)
_UPDATE = (
    "UPDATE operations SET "
    + ", ".join(f"{c} = :{c}" for c in COLUMNS if c != "id")
    + " WHERE id = :id AND version = :expected_version"
)


@functools.lru_cache(maxsize=256)
def _update_columns(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = :{c}" for c in columns)
    return f"UPDATE operations SET {sets} WHERE id = :id AND version = :expected_version"


def _changed_columns(previous: OperationRecord, new: OperationRecord) -> tuple[str, ...]:
    """The columns `new` changes. Setting only those spares SQLite the index
    entries of the others (it rewrites the entries of every indexed column a
    SET names, changed or not): a third less to commit."""
    columns = [
        _COLUMN_OF.get(name, name)
        for name in _FIELDS
        if getattr(new, name) != getattr(previous, name)
    ]
    if new.state != previous.state or new.error != previous.error:
        columns += ["done", "error_code"]
    return tuple(columns)


def write_if_version(
    conn: sqlite3.Connection,
    rec: OperationRecord,
    expected_version: int,
    previous: OperationRecord | None = None,
) -> bool:
    params = to_row(rec) | {"expected_version": expected_version}
    sql = _UPDATE if previous is None else _update_columns(_changed_columns(previous, rec))
    return bool(conn.execute(sql, params).rowcount == 1)


def read_current(conn: sqlite3.Connection, name: str) -> OperationRecord:
    """The stored record of operation `name`; NotFound if absent."""
    parsed = parse_operation_name(name)
    row = conn.execute(f"{_SELECT} WHERE id = ?", (parsed.id,)).fetchone()
    if row is None:
        raise not_found(name)
    current = from_row(row)
    if not in_project(current, parsed):
        raise not_found(name)
    return current


def apply(
    conn: sqlite3.Connection, name: str, transition: Transition
) -> tuple[OperationRecord, bool]:
    """`OperationStore.update` inside a write transaction the caller holds (so
    nobody can write in between: no compare-and-set loop). Returns (record,
    whether it was written). NotFound if absent; exceptions from `transition`
    propagate, leaving the transaction for the caller to roll back."""
    current = read_current(conn, name)
    new = next_version(current, transition)
    if new is None:
        return current, False
    if not write_if_version(conn, new, current.version, current):
        raise RuntimeError(f"{name} changed inside a write transaction")  # cannot happen
    return new, True


def count_running(
    conn: sqlite3.Connection, request: SlotRequest, *, exclude: str
) -> tuple[int, int]:
    """(attempts of the request's queue, of those with its key) RUNNING, other
    than operation `exclude` (the index operations_queue_waiting holds the
    queue's open ones). A RUNNING record holds its slot until it leaves
    RUNNING: a crashed holder's lease is lost only when an observer has seen
    it silent for the whole lease (longrun_core.leases), not by comparing
    clocks, so no clock skew between workers can free a live holder's slot."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(concurrency_key = ?), 0) FROM operations "
        "WHERE project = ? AND queue = ? AND state = ? AND done = 0 AND id != ?",
        (request.key, request.project, request.queue, int(State.RUNNING), exclude),
    ).fetchone()
    return int(row[0]), int(row[1])


def limited(request: SlotRequest, full: str, in_queue: int, with_key: int) -> ConcurrencyLimited:
    if full == "queue":
        text = f"queue {request.queue!r} has {in_queue} of {request.queue_limit} attempts running"
    else:
        text = (
            f"concurrency key {request.key!r} of queue {request.queue!r} has {with_key} of "
            f"{request.key_limit} attempts running"
        )
    return ConcurrencyLimited(text, full=full)


def migrate(conn: sqlite3.Connection) -> None:
    """Add the `ADDED_COLUMNS` an older database lacks (another process may
    be adding them at the same moment), then the `ADDED_INDEXES`. A database
    that has them all is only read."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(operations)")}
    for column, decl in ADDED_COLUMNS.items():
        if column in have:
            continue
        try:
            conn.execute(f"ALTER TABLE operations ADD COLUMN {column} {decl}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    if (
        "operations_request_id" in indexes
        or not {
            "operations_project_request_id",
            "operations_project_order",
            "operations_creator_open",
            "operations_queue_waiting",
        }
        <= indexes
    ):
        for statement in ADDED_INDEXES:
            conn.execute(statement)


def _database_now(conn: sqlite3.Connection) -> datetime:
    row = conn.execute("SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)")
    return from_micros(int(row.fetchone()[0]) * 1000)


_SELECT_KEY = "SELECT version, update_us FROM operations WHERE id = ?"
_VERSION = _FIELDS.index("version")
_UPDATE_US = _FIELDS.index("update_time")


class RecordCache:
    """Records by (id, version, update time): a row converted before is not
    converted again (`from_row` costs more than the indexed read). Records are
    immutable and every write bumps the version and sets the update time, so
    a hit is never stale (the update time tells apart an operation deleted
    and stored again under its id)."""

    def __init__(self, capacity: int = 4096, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._records: StampedCache[OperationRecord] = StampedCache(capacity, max_bytes)

    def get(self, op_id: str, version: int, update_us: int) -> OperationRecord | None:
        """The cached record of `op_id` if it is at this version and update time."""
        return self._records.get(op_id, (version, update_us))

    def of(self, row: tuple[Any, ...]) -> OperationRecord:
        """The record of a full row (`_SELECT`'s columns), converted at most once."""
        cached = self.get(row[0], row[_VERSION], row[_UPDATE_US])
        if cached is not None:
            return cached
        rec = from_row(row)
        self.put(rec)
        return rec

    def put(self, rec: OperationRecord) -> None:
        """Remember a record this process wrote (its row is what `to_row` gives)."""
        self._records.put(
            rec.id, (rec.version, to_micros(rec.update_time)), rec, rec.approx_bytes()
        )


class SqliteOperationStore(OperationStore):
    def __init__(
        self,
        backend: SqliteBackend,
        hub: WatchHub | None = None,
        *,
        cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(hub or WatchHub())
        self.backend = backend
        self._records = RecordCache(max_bytes=cache_bytes)
        #: One list-scan window at a time, on one reader thread: the windows
        #: of concurrent lists take turns. More would not scan faster (every
        #: window holds the GIL most of its time) and would slow other calls.
        self._reader = ScanReader(
            backend.db.path, threads=1, check_file=lambda: backend.db.check_file(report=False)
        )
        self._scan_gate = asyncio.Semaphore(1)
        #: The queue in the same file, once `SqliteTaskQueue.attach` paired them:
        #: `create` then enqueues the task message in the same transaction.
        self.outbox: SqliteTaskQueue | None = None
        backend.on_operation_changed(self.hub.notify)
        backend.on_missed(self.hub.notify_all)

    async def start(self) -> None:
        await self.backend.start()
        await self.backend.db.call(migrate)
        await self.backend.db.call(migrate_queues)
        await self.backend.db.call(ensure_list_indexes)

    async def close(self) -> None:
        await self._reader.close()
        await self.backend.close()

    async def on_written(self, name: str) -> None:
        key = watch_key_of(name)
        self.hub.notify(key)
        self.backend.operation_written(key)

    async def _read(self, op_id: str) -> OperationRecord | None:
        records = self._records

        def read(conn: sqlite3.Connection) -> OperationRecord | None:
            # The version and update time first: polled operations are mostly
            # unchanged, and then the cached record is the answer.
            key = conn.execute(_SELECT_KEY, (op_id,)).fetchone()
            if key is None:
                return None
            cached = records.get(op_id, key[0], key[1])
            if cached is not None:
                return cached
            row = conn.execute(f"{_SELECT} WHERE id = ?", (op_id,)).fetchone()
            return None if row is None else records.of(row)

        return await self.backend.db.read(read)

    async def _insert(self, rec: OperationRecord) -> CreateResult:
        row = to_row(rec)
        # A job scheduled ahead gets no message now: the sweeper publishes it
        # at its dispatch_due_time (its schedule time).
        outbox = None if is_scheduled_ahead(rec) else self.outbox
        # Taken here: the database thread does not see this task's trace context.
        message = TaskMessage(rec.name, rec.task, rec.attempt, rec.trace or current_traceparent())

        def insert_and_enqueue(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT, row)
            if outbox is not None:
                outbox.insert(conn, message)

        def insert(conn: sqlite3.Connection) -> OperationRecord | None:
            try:
                if outbox is None:
                    conn.execute(_INSERT, row)
                else:
                    transaction(conn, insert_and_enqueue)
                return None
            except sqlite3.IntegrityError as exc:
                if rec.request_id is not None and "request_id" in str(exc):
                    found = conn.execute(
                        f"{_SELECT} WHERE project = ? AND request_id = ?",
                        (rec.project, rec.request_id),
                    ).fetchone()
                    if found is not None:
                        return from_row(found)
                if "operations.id" not in str(exc):
                    raise  # not a duplicate: some other constraint failed
                raise AlreadyExists(
                    f"operation {rec.name!r} already exists", metadata={"name": rec.name}
                ) from exc

        existing = await self.backend.db.call(insert)
        if existing is not None:
            return check_duplicate(existing, rec)
        self._records.put(rec)
        await self.on_written(rec.name)
        if outbox is not None:
            outbox.written()
        return CreateResult(rec, created=True, enqueued=outbox is not None)

    async def _replace_if_version(
        self,
        rec: OperationRecord,
        expected_version: int,
        *,
        previous: OperationRecord | None = None,
    ) -> bool:
        written = await self.backend.db.call(
            lambda c: write_if_version(c, rec, expected_version, previous)
        )
        if written:
            self._records.put(rec)
        return written

    async def claim_slot(
        self, name: str, transition: Transition, request: SlotRequest
    ) -> OperationRecord:
        """The claim, the count of running attempts and the rate token in one
        BEGIN IMMEDIATE transaction: no other writer (worker process or
        server) can start an attempt in between, so the count is exact and
        the bucket is read and moved on by one claim at a time. The
        concurrency check comes first: a claim refused for it takes no token.
        A claim that must wait for a token reserves it and writes the record
        waiting (RATE_LIMITED) in the same transaction, then raises
        RateLimited."""

        def claim(
            conn: sqlite3.Connection,
        ) -> tuple[OperationRecord, bool, transitions.RateLimited | None]:
            current = read_current(conn, name)
            new = next_version(current, transition)
            if new is None:
                return current, False, None
            wait: transitions.RateLimited | None = None
            if new.state is State.RUNNING:
                if request.concurrency:
                    in_queue, with_key = count_running(conn, request, exclude=new.id)
                    full = over_limit(request, in_queue, with_key)
                    if full is not None:  # raised inside: the transaction rolls back
                        raise limited(request, full, in_queue, with_key)
                if request.rate is not None:
                    tat, start_tat = read_bucket(conn, request.project, request.queue)
                    step = rate_step(current, new, request, tat, start_tat)
                    write_bucket(conn, request.project, request.queue, step.tat, step.start_tat)
                    new = evolve(step.record, version=current.version + 1)
                    wait = step.wait
            if not write_if_version(conn, new, current.version, current):
                raise RuntimeError(f"{name} changed inside a write transaction")  # cannot happen
            return new, True, wait

        rec, written, wait = await self.backend.db.call(lambda c: transaction(c, claim))
        if written:
            self._records.put(rec)
            await self.on_written(rec.name)
        if wait is not None:
            raise wait
        return rec

    async def _delete(self, op_id: str, *, project: str | None = None) -> bool:
        sql = "DELETE FROM operations WHERE id = ?"
        args: tuple[str, ...] = (op_id,)
        if project is not None:
            sql, args = sql + " AND project = ?", (op_id, project)
        count = await self.backend.db.call(lambda c: c.execute(sql, args).rowcount)
        return bool(count == 1)

    async def list(
        self,
        *,
        page_size: int,
        after: Cursor | None,
        flt: RecordFilter | None = None,
        budget: ScanBudget | None = None,
        projects: frozenset[str] | None = None,
    ) -> ListPage:
        """See `OperationStore.list`; the plan and the indexes are described in
        `longrun_core.sqlite.list_scan`."""
        if projects is not None and not projects:
            return ListPage([], None)  # no project: nothing to list
        plan = _plan(flt, projects)
        if plan is None:
            return ListPage([], None)  # the filter matches nothing
        budget = budget or ScanBudget()
        if plan.exact or flt is None:
            return await scan_page(
                self._windows(plan, _COLUMNS, _record_of),
                page_size=page_size,
                after=after,
                budget=budget,
                position=Cursor.after,
                complete=as_records,
                gate=self._scan_gate,
            )
        keep: Callable[[tuple[Any, ...]], bool]
        matches_values = getattr(flt, "matches_values", None)
        attrs: frozenset[str] | None = getattr(flt, "attrs", None)
        if matches_values is not None and attrs is not None:
            # Only the columns the filter reads, checked without building records.
            value_cols = value_columns(attrs) or ("state",)
            columns = ", ".join(value_cols)
            values = row_values(value_cols)
            keep = lambda row: bool(matches_values(values(row)))  # noqa: E731
        else:
            columns = _LIGHT_COLUMNS
            keep = lambda row: flt.matches(_record_of(row))  # noqa: E731
        return await scan_page(
            self._windows(plan, columns, _identity),
            page_size=page_size,
            after=after,
            budget=budget,
            position=_row_position,
            complete=functools.partial(self._complete, flt),
            keep=keep,
            gate=self._scan_gate,
        )

    def _windows(
        self, plan: ScanPlan, columns: str, convert: Callable[[tuple[Any, ...]], R]
    ) -> Callable[[Cursor | None, int, int], Awaitable[Window[R]]]:
        reader = self._reader

        async def fetch(cursor: Cursor | None, limit: int, want: int) -> Window[R]:
            return await reader.run(
                lambda conn: read_window(conn, plan, cursor, limit, want, columns, convert)
            )

        return fetch

    async def _complete(
        self, flt: RecordFilter, rows: Sequence[tuple[Any, ...]]
    ) -> Sequence[OperationRecord]:
        """The full records of the rows a scan kept, in their order; one that
        changed meanwhile and no longer matches (or is gone) is left out."""
        ids = [row[1] for row in rows]
        sql = f"{_SELECT} WHERE id IN ({', '.join(['?'] * len(ids))})"
        found = await self._reader.run(lambda conn: conn.execute(sql, ids).fetchall())
        by_id = {rec.id: rec for rec in map(from_row, found)}
        return [by_id[i] for i in ids if i in by_id and flt.matches(by_id[i])]

    async def due_for_dispatch(self, now: datetime, limit: int) -> Sequence[OperationRecord]:
        us = to_micros(now)
        rows = await self.backend.db.call(
            lambda c: c.execute(
                f"{_SELECT} WHERE dispatch_due_us <= ? AND state = ? "
                "ORDER BY dispatch_due_us LIMIT ?",
                (us, int(State.QUEUED), limit),
            ).fetchall()
        )
        return [from_row(r) for r in rows]

    async def count_open(self, creator: str, limit: int) -> int:
        if limit <= 0:
            return 0
        row = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT count(*) FROM (SELECT 1 FROM operations "
                "WHERE creator = ? AND done = 0 AND creator IS NOT NULL LIMIT ?)",
                (creator, limit),
            ).fetchone()
        )
        return int(row[0])

    async def count_in_queue(self, project: str, queue: str, state: State, limit: int) -> int:
        if limit <= 0:
            return 0
        row = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT count(*) FROM (SELECT 1 FROM operations "
                "INDEXED BY operations_queue_waiting "
                "WHERE project = ? AND queue = ? AND state = ? AND done = 0 LIMIT ?)",
                (project, queue, int(state), limit),
            ).fetchone()
        )
        return int(row[0])

    async def ready_by_queue(self, now: datetime, limit: int) -> Sequence[QueueReady]:
        if limit <= 0:
            return []
        # The walk of the not-done rows (operations_queue_waiting), at most `limit` QUEUED ones.
        rows = await self.backend.db.call(
            lambda c: c.execute(
                "SELECT queue, count(*), MIN(since) FROM ("
                "SELECT queue, COALESCE(run_after_us, create_us) AS since FROM operations "
                "WHERE done = 0 AND state = ? LIMIT ?) WHERE since <= ? GROUP BY queue",
                (int(State.QUEUED), limit, to_micros(now)),
            ).fetchall()
        )
        return [QueueReady(str(q), int(n), from_micros(int(since))) for q, n, since in rows]

    async def queued_in(
        self, project: str, queue: str, *, after: str = "", limit: int = 500
    ) -> Sequence[OperationRecord]:
        rows = await self.backend.db.call(
            lambda c: c.execute(
                f"{_SELECT} WHERE project = ? AND queue = ? AND state = ? AND done = 0 "
                "AND id > ? ORDER BY id LIMIT ?",
                (project, queue, int(State.QUEUED), after, limit),
            ).fetchall()
        )
        return [self._records.of(r) for r in rows]

    async def leased(self, limit: int) -> Sequence[OperationRecord]:
        # Only RUNNING records hold a lease_expire_us: the partial index
        # operations_lease_expire holds exactly them.
        rows = await self.backend.db.call(
            lambda c: c.execute(
                f"{_SELECT} WHERE lease_expire_us IS NOT NULL AND state = ? "
                "ORDER BY lease_expire_us LIMIT ?",
                (int(State.RUNNING), limit),
            ).fetchall()
        )
        return [self._records.of(r) for r in rows]

    async def store_time(self) -> datetime | None:
        """SQLite has no clock of its own: this is the host's clock as the
        database engine reads it, which every process sharing the file (one
        host: WAL needs shared memory) also reads, whatever `Clock` it was
        given."""
        now: datetime = await self.backend.db.read(_database_now)
        return now

    async def delete_expired(self, now: datetime, limit: int) -> int:
        us = to_micros(now)

        def purge(conn: sqlite3.Connection) -> list[str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM operations WHERE expire_us <= ? LIMIT ?", (us, limit)
                )
            ]
            conn.executemany(
                "DELETE FROM operations WHERE id = ? AND expire_us <= ?", [(i, us) for i in ids]
            )
            return ids

        ids = await self.backend.db.call(purge)
        for op_id in ids:
            await self.on_written(watch_key(op_id))
        return len(ids)


def _plan(flt: RecordFilter | None, projects: frozenset[str] | None) -> ScanPlan | None:
    """How to scan for `flt` within `projects`; None when it can match nothing."""
    if flt is None:
        return make_plan(None, None, (), exact=True, projects=projects)
    to_sql = getattr(flt, "to_sql", None)
    get_terms = getattr(flt, "index_terms", None)
    if to_sql is None:  # a filter that only knows `matches`
        return make_plan(None, None, (), exact=False, projects=projects)
    sql = to_sql()
    terms: IndexTerms | None = get_terms() if get_terms is not None else None
    if sql.where == "0" or (terms is not None and terms.empty_range):
        return None
    return make_plan(terms, sql.where, tuple(sql.params), exact=bool(sql.exact), projects=projects)


R = TypeVar("R")


def _record_of(row: tuple[Any, ...]) -> OperationRecord:
    """The record of a row read as `create_us, id, <_COLUMNS or _LIGHT_COLUMNS>`."""
    return from_row(row[2:])


def _identity(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


def _row_position(row: tuple[Any, ...]) -> Cursor:
    return Cursor(from_micros(row[0]), row[1])
