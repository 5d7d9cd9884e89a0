"""ListOperations on SQLite: the indexes the scan walks, the plan that picks
one, and the reader threads that run it off the event loop.

Indexes (created by `ensure_list_indexes` when a store starts; existing
databases are filled in once)
    operations_order        (create_us desc, id desc)          no driver
    operations_done_order   (done, create_us desc, id desc)    done = ...
    operations_state_order  (state, create_us desc, id desc)   metadata.state = ...
    operations_task_order   (task, create_us desc, id desc)    metadata.task = "..."
    operation_labels        (key, value, create_us desc, op_id desc), a table
                            kept by triggers on `operations`   labels.KEY = "..."
    operations_project_order (project, create_us desc, id desc) a project
                            constraint (made by `migrate` in sqlite/store.py)

Plan
    A filter's top-level equalities (`longrun_core.filtering.index_terms`)
    offer drivers; the first one with an index is walked, between the
    create_time bounds and after the page cursor, in list order, so no sort
    is needed. One *window* reads at most `limit` index entries: their keys,
    then (unless the driver and bounds decide the whole filter) the rows
    among them that pass the rest of the filter in SQL. The budget counts
    index entries, so a selective indexed filter reads only what matches, and
    a filter no index serves reads `limit` rows per window and no more.

    A list limited to some projects (the caller's visible ones, or the one
    its name asks for) walks `operations_project_order` instead, once per
    project: the window reads the next `limit` keys of each and keeps the
    newest `limit` of them all (a merge, so no sort of a whole project), then
    the rows among them that pass the filter. The filter's own equalities
    are then checked on those rows (SQL), not walked. A set of more than
    `MAX_MERGED_PROJECTS` projects is checked per row instead (`project IN
    (...)` on the ordinary walk).

Threads
    Windows run on `ScanReader`'s thread, with its own read-only connection
    (WAL readers never block the writer), never on the event loop's thread.
    The store lets one window run at a time (`scan_page`'s gate): windows of
    concurrent lists take turns, which scans as fast as more threads would
    (a window holds the GIL most of its time) and leaves the other calls
    their share. A window is short; between windows the caller may be
    cancelled, which ends the scan.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from longrun_core.clock import from_micros, to_micros
from longrun_core.filtering.evaluate import error_values
from longrun_core.filtering.index_terms import Equality, Indexed, IndexTerms
from longrun_core.model import State
from longrun_core.names import DEFAULT_PROJECT, operation_name
from longrun_core.sqlite.db import storage_error
from longrun_core.store import Cursor, Window

T = TypeVar("T")
R = TypeVar("R")

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS operations_done_order ON operations(done, create_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS operations_state_order "
    "ON operations(state, create_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS operations_task_order ON operations(task, create_us DESC, id DESC)",
)

# json_each cuts a value at its first NUL: an entry then holds a prefix of the
# real value. Lookups by a value without NUL still find every row that has it
# (and possibly some with NUL, which the per-row check drops).
_DROP_OLD_LABELS = """DELETE FROM operation_labels WHERE (key, value, create_us, op_id) IN
        (SELECT key, value, old.create_us, old.id FROM json_each(old.labels));"""
_ADD_NEW_LABELS = """INSERT OR IGNORE INTO operation_labels (key, value, create_us, op_id)
        SELECT key, value, new.create_us, new.id FROM json_each(new.labels);"""
_LABELS = (
    """CREATE TABLE operation_labels (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    create_us INTEGER NOT NULL,
    op_id TEXT NOT NULL,
    PRIMARY KEY (key, value, create_us DESC, op_id DESC)
) WITHOUT ROWID""",
    f"""CREATE TRIGGER operation_labels_insert AFTER INSERT ON operations
WHEN new.labels <> '{{}}' BEGIN {_ADD_NEW_LABELS} END""",
    f"""CREATE TRIGGER operation_labels_delete AFTER DELETE ON operations
WHEN old.labels <> '{{}}' BEGIN {_DROP_OLD_LABELS} END""",
    f"""CREATE TRIGGER operation_labels_update AFTER UPDATE OF labels, create_us, id ON operations
BEGIN {_DROP_OLD_LABELS} {_ADD_NEW_LABELS} END""",
    """INSERT OR IGNORE INTO operation_labels (key, value, create_us, op_id)
    SELECT j.key, j.value, o.create_us, o.id FROM operations AS o, json_each(o.labels) AS j
    WHERE o.labels <> '{}'""",
)


_OBJECTS = frozenset(
    {
        "operations_done_order",
        "operations_state_order",
        "operations_task_order",
        "operation_labels",
        "operation_labels_insert",
        "operation_labels_delete",
        "operation_labels_update",
    }
)


def ensure_list_indexes(conn: sqlite3.Connection) -> None:
    """Create the list indexes and the label table (filled from the
    operations already stored) unless they exist. Safe to run from several
    processes at once (one write transaction), and a database that has them
    all is only read."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if present >= _OBJECTS:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _INDEXES:
            conn.execute(statement)
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'operation_labels'"
        ).fetchone()
        if exists is None:
            for statement in _LABELS:
                conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """How one list query reads the table (see the module docstring)."""

    #: What the walk reads: `table` in `index` order (None: the table's own
    #: key order), the row's id in `id_column`, restricted by `driver_sql`.
    table: str
    index: str | None
    id_column: str
    driver_sql: str | None
    driver_params: tuple[object, ...]
    #: Inclusive create_us bounds of the walk.
    create_lo_us: int | None
    create_hi_us: int | None
    #: The rest of the filter in SQL (None: nothing), and whether SQL decides it.
    where: str | None
    where_params: tuple[object, ...]
    #: The driver and the bounds decide the whole filter: one query per window.
    window_exact: bool
    #: SQL decides the whole filter (else `Filter.matches` checks each row).
    exact: bool
    #: Walk `index` once per project (driver `project = ?`) and merge.
    projects: tuple[str, ...] | None = None


#: Projects a list walks one by one at most; a larger set is checked per row.
MAX_MERGED_PROJECTS = 32


def make_plan(
    terms: IndexTerms | None,
    where: str | None,
    where_params: tuple[object, ...],
    exact: bool,
    projects: frozenset[str] | None = None,
) -> ScanPlan:
    lo = terms.create_lo_us if terms is not None else None
    hi = terms.create_hi_us if terms is not None else None
    if projects is not None and len(projects) <= MAX_MERGED_PROJECTS:
        return ScanPlan(
            table="operations",
            index="operations_project_order",
            id_column="id",
            driver_sql="project = ?",
            driver_params=(),
            create_lo_us=lo,
            create_hi_us=hi,
            where=where,
            where_params=where_params,
            # The walk decides the filter when the filter is only create_time bounds.
            window_exact=len(projects) == 1
            and exact
            and (where is None or (terms is not None and terms.complete and not terms.equalities)),
            exact=exact,
            projects=tuple(sorted(projects)),
        )
    if projects is not None:
        within = f"project IN ({', '.join(['?'] * len(projects))})"
        where = within if where is None else f"({where}) AND {within}"
        where_params = (*where_params, *sorted(projects))
    driver = _driver(terms) if terms is not None else None
    # The walk alone (driver and bounds) decides the filter: no per-row check.
    decided = exact and (
        where is None
        or (terms is not None and terms.complete and all(e is driver for e in terms.equalities))
    )
    if driver is not None and driver.field is Indexed.LABEL:
        return ScanPlan(
            table="operation_labels",
            index=None,
            id_column="op_id",
            driver_sql="key = ? AND value = ?",
            driver_params=(driver.label_key, driver.value),
            create_lo_us=lo,
            create_hi_us=hi,
            where=where,
            where_params=where_params,
            window_exact=False,  # entries hold values cut at a NUL
            exact=exact,
        )
    index: str = "operations_order"
    driver_sql: str | None = None
    driver_params: tuple[object, ...] = ()
    if driver is not None:
        index, driver_sql, driver_params = _DRIVERS[driver.field](driver)
    return ScanPlan(
        table="operations",
        index=index,
        id_column="id",
        driver_sql=driver_sql,
        driver_params=driver_params,
        create_lo_us=lo,
        create_hi_us=hi,
        where=where,
        where_params=where_params,
        window_exact=decided,
        exact=exact,
    )


def _driver(terms: IndexTerms) -> Equality | None:
    for equality in terms.equalities:
        if equality.field is Indexed.STATE and not (
            isinstance(equality.value, tuple) and len(equality.value) == 1
        ):
            continue  # several states would need a merge of index ranges
        return equality
    return None


def _state(e: Equality) -> tuple[str, str, tuple[object, ...]]:
    assert isinstance(e.value, tuple)
    return "operations_state_order", "state = ?", (int(e.value[0]),)


_DRIVERS: dict[Indexed, Callable[[Equality], tuple[str, str, tuple[object, ...]]]] = {
    Indexed.DONE: lambda e: ("operations_done_order", "done = ?", (int(bool(e.value)),)),
    Indexed.STATE: _state,
    Indexed.TASK: lambda e: ("operations_task_order", "task = ?", (e.value,)),
}


def read_window(
    conn: sqlite3.Connection,
    plan: ScanPlan,
    after: Cursor | None,
    limit: int,
    want: int,
    columns: str,
    convert: Callable[[tuple[Any, ...]], R],
) -> Window[R]:
    """One window of the scan (runs on a reader thread): `convert` of each
    row (`create_us, id, <columns>`) the query could not rule out."""
    clauses: list[str] = []
    args: list[object] = []
    if plan.driver_sql is not None:
        clauses.append(plan.driver_sql)
        if plan.projects is None:
            args.extend(plan.driver_params)
        else:
            args.append(plan.projects[0])  # replaced per project below
    start = _start(after, plan.create_hi_us)
    if start is not None:
        # A row value, so SQLite seeks the index instead of scanning it.
        clauses.append(f"(create_us, {plan.id_column}) < (?, ?)")
        args.extend(start)
    if plan.create_lo_us is not None:
        clauses.append("create_us >= ?")
        args.append(plan.create_lo_us)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    indexed = f" INDEXED BY {plan.index}" if plan.index else ""
    order = f" ORDER BY create_us DESC, {plan.id_column} DESC LIMIT ?"
    if plan.projects is not None and len(plan.projects) > 1:
        keys_sql = f"SELECT create_us, id FROM operations{indexed}{where}{order}"
        conn.execute("BEGIN")  # one snapshot for every project's keys and their rows
        try:
            # The newest `limit` keys of all the projects: each walk is in list
            # order, so the first `limit` of each hold them.
            keys = heapq.nlargest(
                limit,
                (
                    key
                    for project in plan.projects
                    for key in conn.execute(keys_sql, (project, *args[1:], limit)).fetchall()
                ),
            )
            rows = _rows(conn, plan, [k[1] for k in keys], want, columns) if keys else []
        finally:
            conn.execute("COMMIT")
        return Window([convert(r) for r in rows], len(keys), _last(keys), len(keys) < limit)
    if plan.window_exact:
        take = min(limit, want)
        rows = conn.execute(
            f"SELECT create_us, id, {columns} FROM operations{indexed}{where}{order}",
            (*args, take),
        ).fetchall()
        return Window([convert(r) for r in rows], len(rows), _last(rows), len(rows) < take)
    conn.execute("BEGIN")  # one snapshot for the keys and their rows
    try:
        keys = conn.execute(
            f"SELECT create_us, {plan.id_column} FROM {plan.table}{indexed}{where}{order}",
            (*args, limit),
        ).fetchall()
        rows = _rows(conn, plan, [k[1] for k in keys], want, columns) if keys else []
    finally:
        conn.execute("COMMIT")
    return Window([convert(r) for r in rows], len(keys), _last(keys), len(keys) < limit)


def _last(rows: Sequence[tuple[Any, ...]]) -> Cursor | None:
    return Cursor(from_micros(rows[-1][0]), rows[-1][1]) if rows else None


def _rows(
    conn: sqlite3.Connection, plan: ScanPlan, ids: Sequence[str], want: int, columns: str
) -> list[tuple[Any, ...]]:
    """The rows among `ids` that pass the SQL part of the filter, in list
    order (at most `want` when SQL decides the filter). Ids are bound one by
    one: an id may hold a NUL, which JSON or string functions would cut."""
    # CROSS JOIN keeps the id list outside, so each id is one primary-key
    # lookup (SQLite might otherwise walk an index the filter names).
    keys = ", ".join(["(?)"] * len(ids))
    sql = (
        f"WITH scan_keys(key_id) AS (VALUES {keys}) SELECT create_us, id, {columns} "
        "FROM scan_keys CROSS JOIN operations ON operations.id = scan_keys.key_id"
    )
    args: list[object] = list(ids)
    if plan.where:
        sql += f" WHERE ({plan.where})"
        args.extend(plan.where_params)
    sql += " ORDER BY create_us DESC, id DESC"
    if plan.exact:
        sql += " LIMIT ?"
        args.append(want)
    return conn.execute(sql, args).fetchall()


#: The columns each filter `attr` (longrun_core.filtering.fields) is read from.
_ATTR_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("id", "project"),
    "done": ("state",),
    "state": ("state",),
    "task": ("task",),
    "attempt": ("attempt",),
    "max_attempts": ("max_attempts",),
    "progress_percent": ("progress_percent",),
    "progress_message": ("progress_message",),
    "cancel_requested": ("cancel_requested",),
    "create_time": ("create_us",),
    "update_time": ("update_us",),
    "start_time": ("start_us",),
    "end_time": ("end_us",),
    "expire_time": ("expire_us",),
    "labels": ("labels",),
    "error": ("state", "error"),
    "error_code": ("state", "error"),
    "error_message": ("state", "error"),
}
_TIME_COLUMNS = {
    "create_time": "create_us",
    "update_time": "update_us",
    "start_time": "start_us",
    "end_time": "end_us",
    "expire_time": "expire_us",
}
_ERROR_ATTRS = {"error": 0, "error_code": 1, "error_message": 2}


def value_columns(attrs: frozenset[str]) -> tuple[str, ...]:
    """The columns to read for a filter that reads `attrs` (after create_us, id)."""
    return tuple(sorted({c for a in attrs for c in _ATTR_COLUMNS[a]}))


class RowValues:
    """A filter's `Values` (longrun_core.filtering.evaluate) of one row read
    as `create_us, id, <value_columns>`, converted only as the filter asks."""

    __slots__ = ("_at", "_error", "_row")

    def __init__(self, row: tuple[Any, ...], at: dict[str, int]) -> None:
        self._row = row
        self._at = at
        self._error: tuple[Any, Any, Any] | None = None

    def get(self, attr: str) -> Any:
        row, at = self._row, self._at
        if attr in _TIME_COLUMNS:
            us = row[at[_TIME_COLUMNS[attr]]]
            return None if us is None else us * 1000
        if attr in _ERROR_ATTRS:
            if self._error is None:
                done = State(row[at["state"]]).done
                self._error = error_values(done, row[at["error"]])
            return self._error[_ERROR_ATTRS[attr]]
        if attr == "name":
            return operation_name(row[at["project"]] or DEFAULT_PROJECT, row[1])
        if attr == "done":
            return State(row[at["state"]]).done
        if attr == "state":
            return State(row[at["state"]])
        if attr == "labels":
            return json.loads(row[at["labels"]])
        if attr == "cancel_requested":
            return bool(row[at["cancel_requested"]])
        return row[at[attr]]


def row_values(columns: Sequence[str]) -> Callable[[tuple[Any, ...]], RowValues]:
    """The `RowValues` of rows read as `create_us, id, <columns>`."""
    at = {c: i + 2 for i, c in enumerate(columns)}
    return lambda row: RowValues(row, at)


def _start(after: Cursor | None, hi_us: int | None) -> tuple[int, str] | None:
    """The exclusive start of the walk: the cursor, or just above the upper
    bound when that comes first (`create_us <= hi` is `(create_us, id) <
    (hi + 1, '')`, as no id is empty)."""
    start = None if after is None else (to_micros(after.create_time), after.id)
    if hi_us is not None and (start is None or (hi_us + 1, "") < start):
        return (hi_us + 1, "")
    return start


class ScanReader:
    """Threads for list scans, each with its own read-only connection to the
    database file. Their number bounds how many windows run at once; the
    other scans wait their turn between windows."""

    def __init__(
        self, path: Path, threads: int = 1, check_file: Callable[[], None] | None = None
    ) -> None:
        self.path = path
        #: Raises when the path no longer names the database this process
        #: opened (Database.check_file): a scan never reads a replacement.
        self.check_file = check_file or (lambda: None)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlite-scan")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        self.check_file()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(self._connection()))
        except sqlite3.Error as exc:
            # The same mapping as every other store call (sqlite/db.py).
            mapped = storage_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
