"""How the SQLite store plans a list scan (sqlite/list_scan.py)."""

from __future__ import annotations

import sqlite3

import pytest

from longrun_core.filtering import parse_filter
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.list_scan import ScanPlan, ensure_list_indexes, make_plan


def plan(text: str) -> ScanPlan:
    flt = parse_filter(text)
    assert flt is not None
    sql = flt.to_sql()
    return make_plan(flt.index_terms(), sql.where, tuple(sql.params), bool(sql.exact))


@pytest.mark.parametrize(
    ("text", "index", "driver", "window_exact", "exact"),
    [
        ("done = true", "operations_done_order", "done = ?", True, True),
        ("metadata.state = FAILED", "operations_state_order", "state = ?", True, True),
        ('metadata.task = "t"', "operations_task_order", "task = ?", True, True),
        # != on state has no single index range: the table in list order.
        ("metadata.state != FAILED", "operations_order", None, False, True),
        ('metadata.create_time > "2026-01-01T00:00:00Z"', "operations_order", None, True, True),
        (
            'metadata.task = "t" AND metadata.attempt = 2',
            "operations_task_order",
            "task = ?",
            False,
            True,
        ),
        ('metadata.task = "t" AND done = true', "operations_task_order", "task = ?", False, True),
        ('error.message = "x"', "operations_order", None, False, False),
        ('labels.env = "prod"', None, "key = ? AND value = ?", False, False),
    ],
)
def test_the_driver_and_whether_the_walk_decides_the_filter(
    text: str, index: str | None, driver: str | None, window_exact: bool, exact: bool
) -> None:
    got = plan(text)
    assert (got.index, got.driver_sql, got.window_exact, got.exact) == (
        index,
        driver,
        window_exact,
        exact,
    )


def test_without_index_terms_the_sql_filter_is_checked_per_row() -> None:
    got = make_plan(None, "attempt = ?", (2,), exact=True)
    assert got.where == "attempt = ?" and not got.window_exact
    assert make_plan(None, None, (), exact=True).window_exact


@pytest.mark.parametrize(
    "text",
    [
        "done = true",
        "metadata.state = FAILED",
        'metadata.task = "t"',
        'labels.env = "prod"',
        'metadata.create_time > "2026-01-01T00:00:00Z"',
    ],
)
def test_every_walk_seeks_its_index(text: str) -> None:
    """EXPLAIN QUERY PLAN of the window's key query: a SEARCH of the driver's
    index with the cursor as a range, never a SCAN of the table."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    ensure_list_indexes(conn)
    got = plan(text)
    clauses = [c for c in (got.driver_sql, f"(create_us, {got.id_column}) < (?, ?)") if c]
    indexed = f" INDEXED BY {got.index}" if got.index else ""
    sql = (
        f"SELECT create_us, {got.id_column} FROM {got.table}{indexed} WHERE "
        + " AND ".join(clauses)
        + f" ORDER BY create_us DESC, {got.id_column} DESC LIMIT 10"
    )
    detail = " ".join(
        row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?"))
    )
    assert detail.startswith("SEARCH"), detail
    assert "TEMP B-TREE" not in detail, detail
