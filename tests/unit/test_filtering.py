"""longrun_core.filtering: the AIP-160 ListOperations filter.

Example tests pin the grammar, each field, each error and the SQL shapes;
property tests check generated filters against a reference evaluation written
here (independently of the package), junk and broken filters against clean
INVALID_ARGUMENT errors, and the SQL translation against `matches` on a real
SQLite table.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from longrun_core.clock import to_micros
from longrun_core.errors import InvalidArgument
from longrun_core.filtering import MAX_DEPTH, MAX_LENGTH, MAX_TERMS, Filter, SqlFilter, parse_filter
from longrun_core.model import OperationRecord, State
from longrun_core.store import RecordFilter

T0 = datetime(2026, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def status(code: int, message: str = "boom") -> bytes:
    data: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return data


def make(
    op_id: str,
    *,
    task: str = "sleep",
    state: State = State.QUEUED,
    labels: Mapping[str, str] | None = None,
    attempt: int = 0,
    create: datetime = T0,
    end: datetime | None = None,
    error: bytes | None = None,
    **other: object,
) -> OperationRecord:
    rec = OperationRecord(
        id=op_id,
        task=task,
        params=b"",
        state=state,
        create_time=create,
        update_time=create,
        labels=dict(labels or {}),
        attempt=attempt,
        end_time=end,
        error=error,
    )
    return replace(rec, **other)  # type: ignore[arg-type]


def flt(text: str) -> Filter:
    f = parse_filter(text)
    assert f is not None
    return f


def matching(text: str, records: Iterable[OperationRecord]) -> set[str]:
    f = flt(text)
    return {r.id for r in records if f.matches(r)}


def rejection(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_filter(text)
    return info.value


# ---- a SQLite table with the store's schema, for the SQL translation ----

SCHEMA = """
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    task TEXT NOT NULL,
    state INTEGER NOT NULL,
    done INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    progress_percent INTEGER NOT NULL,
    progress_message TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    create_us INTEGER NOT NULL,
    update_us INTEGER NOT NULL,
    start_us INTEGER,
    end_us INTEGER,
    expire_us INTEGER,
    error_code INTEGER,
    labels TEXT NOT NULL
)
"""


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def table(records: Iterable[OperationRecord]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(SCHEMA)
    for r in records:
        code = None
        if r.done and r.error is not None:
            code = status_pb2.Status.FromString(r.error).code
        conn.execute(
            "INSERT INTO operations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.id,
                r.project,
                r.task,
                int(r.state),
                int(r.done),
                r.attempt,
                r.max_attempts,
                r.progress_percent,
                r.progress_message,
                int(r.cancel_requested),
                _us(r.create_time),
                _us(r.update_time),
                _us(r.start_time),
                _us(r.end_time),
                _us(r.expire_time),
                code,
                json.dumps(dict(r.labels), sort_keys=True),
            ),
        )
    return conn


def selected(conn: sqlite3.Connection, sql: SqlFilter) -> set[str]:
    where = "" if sql.where is None else f" WHERE {sql.where}"
    return {row[0] for row in conn.execute(f"SELECT id FROM operations{where}", sql.params)}


def check_sql(
    f: Filter, records: Sequence[OperationRecord], conn: sqlite3.Connection | None = None
) -> SqlFilter:
    """SQL never drops a match; SQL then `matches` is exact; `exact` is honest.
    `conn`: a table already holding `records`."""
    sql = f.to_sql()
    expected = {r.id for r in records if f.matches(r)}
    if conn is None:
        with closing(table(records)) as own:
            got = selected(own, sql)
    else:
        got = selected(conn, sql)
    assert expected <= got, (f.text, sql)
    by_id = {r.id: r for r in records}
    assert {i for i in got if f.matches(by_id[i])} == expected
    if sql.exact:
        assert got == expected, (f.text, sql)
    return sql


# ---- examples ----

RUNNING = make("run", task="sleep", state=State.RUNNING, labels={"env": "prod"}, attempt=1)
QUEUED = make("queue", task="resize", labels={"env": "dev", "tier": "gold"})
OK = make(
    "ok",
    task="sleepy",
    state=State.SUCCEEDED,
    attempt=2,
    end=T0 + timedelta(hours=1),
    create=T0 - timedelta(days=1),
)
FAILED = make(
    "bad",
    task="resize",
    state=State.FAILED,
    labels={"env": "prod"},
    attempt=3,
    end=T0 + timedelta(hours=2),
    error=status(5, "not found: bucket"),
    create=T0 + timedelta(seconds=1),
)
CANCELLED = make("stop", task="esleep", state=State.CANCELLED, error=status(1, "cancelled"), end=T0)
ALL = (RUNNING, QUEUED, OK, FAILED, CANCELLED)


def test_blank_filters_are_none() -> None:
    assert parse_filter("") is None
    assert parse_filter("  \n\t ") is None


def test_filter_is_a_record_filter() -> None:
    f: RecordFilter = flt("done = true")
    assert f.matches(OK)
    assert not f.matches(RUNNING)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = projects/default/operations/run", {"run"}),
        ('name = "projects/default/operations/run"', {"run"}),
        ('name = "projects/other/operations/run"', set()),
        ('name = "operations/run"', set()),  # names are full: the legacy form names none
        ('name = "run"', set()),
        ('name = "projects/default/operations/*o*"', {"ok", "stop"}),
        ('name = "projects/*/operations/run"', {"run"}),
        ('name != "projects/default/operations/run"', {"queue", "ok", "bad", "stop"}),
        ('name > "projects/default/operations/r"', {"run", "stop"}),
        ("name:*", {"run", "queue", "ok", "bad", "stop"}),
        ("done = true", {"ok", "bad", "stop"}),
        ("done:false", {"run", "queue"}),
        ("done != true", {"run", "queue"}),
        ("metadata.state = RUNNING", {"run"}),
        ("metadata.state = 4", {"bad"}),
        ("metadata.state != QUEUED", {"run", "ok", "bad", "stop"}),
        ("metadata.state:SUCCEEDED", {"ok"}),
        ("metadata.task = resize", {"queue", "bad"}),
        ('metadata.task = "sleep"', {"run"}),
        ('metadata.task < "s"', {"queue", "bad", "stop"}),
        ("metadata.attempt >= 2", {"ok", "bad"}),
        ("metadata.attempt < 1", {"queue", "stop"}),
        ("metadata.attempt = 1.0", {"run"}),
        ("metadata.attempt > 1.5", {"ok", "bad"}),
        ("metadata.attempt:*", {"run", "ok", "bad"}),
        ("metadata.max_attempts = 1", {"run", "queue", "ok", "bad", "stop"}),
        ('metadata.create_time < "2026-01-01T00:00:00Z"', {"ok"}),
        ('metadata.create_time >= "2026-01-01T00:00:00Z"', {"run", "queue", "bad", "stop"}),
        ('metadata.update_time > "2026-01-01T00:00:00.5Z"', {"bad"}),
        ('metadata.end_time = "2026-01-01T00:00:00Z"', {"stop"}),
        ('metadata.end_time != "2026-01-01T00:00:00Z"', {"ok", "bad"}),
        ("metadata.end_time:*", {"ok", "bad", "stop"}),
        ("labels.env = prod", {"run", "bad"}),
        ('metadata.labels.env = "prod"', {"run", "bad"}),
        ("labels.env != prod", {"queue"}),
        ("labels.env:*", {"run", "queue", "bad"}),
        ("labels:tier", {"queue"}),
        ("metadata.labels:tier", {"queue"}),
        ("labels:*", {"run", "queue", "bad"}),
        ("labels.tier:gold", {"queue"}),
        ("error:*", {"bad", "stop"}),
        ("error.code = 5", {"bad"}),
        ("error.code = NOT_FOUND", {"bad"}),
        ("error.code != 5", {"stop"}),
        ("error.code > 0", {"bad", "stop"}),
        ("error.code:*", {"bad", "stop"}),
        ('error.message = "not found*"', {"bad"}),
        ("error.message:*", {"bad", "stop"}),
        ("metadata.cancel_requested = false", {"run", "queue", "ok", "bad", "stop"}),
        ("metadata.progress_message:*", set()),
    ],
)
def test_each_field(text: str, expected: set[str]) -> None:
    assert matching(text, ALL) == expected
    check_sql(flt(text), ALL)


def test_missing_values_make_comparisons_false_but_not_true() -> None:
    # QUEUED has no error; RUNNING no end_time; OK no env label.
    assert matching("error.code != 5", [QUEUED]) == set()
    assert matching("NOT error.code = 5", [QUEUED]) == {"queue"}
    assert matching('metadata.end_time < "2100-01-01T00:00:00Z"', [RUNNING]) == set()
    assert matching("labels.env != prod", [OK]) == set()
    assert matching("-labels.env = prod", [OK]) == {"ok"}


def test_error_only_counts_when_done() -> None:
    running_with_error = make("x", state=State.RUNNING, error=status(13))
    assert matching("error:*", [running_with_error]) == set()
    assert matching("error.code = 13", [running_with_error]) == set()
    check_sql(flt("error:* OR error.code = 13"), [running_with_error])


# ---- precedence and the logical operators ----

A, B, C = "metadata.task = x", "labels.env = p", "metadata.attempt = 1"
TRUTH_TABLE = [
    make(f"{a}{b}{c}", task="x" if a else "y", labels={"env": "p" if b else "q"}, attempt=c)
    for a in (0, 1)
    for b in (0, 1)
    for c in (0, 1)
]


def truth(pred: Callable[[bool, bool, bool], bool]) -> set[str]:
    return {r.id for r in TRUTH_TABLE if pred(*(ch == "1" for ch in r.id))}


def test_or_binds_tighter_than_and() -> None:
    got = matching(f"{A} OR {B} AND {C}", TRUTH_TABLE)
    assert got == truth(lambda a, b, c: (a or b) and c)
    assert got != truth(lambda a, b, c: a or (b and c))
    assert flt(f"{A} OR {B} AND {C}").text == flt(f"({A} OR {B}) AND {C}").text
    assert matching(f"{C} AND {A} OR {B}", TRUTH_TABLE) == truth(lambda a, b, c: c and (a or b))


def test_juxtaposition_is_and_below_or() -> None:
    assert matching(f"{A} {B}", TRUTH_TABLE) == truth(lambda a, b, c: a and b)
    assert matching(f"{A} {B} OR {C}", TRUTH_TABLE) == truth(lambda a, b, c: a and (b or c))
    assert flt(f"{A} {B}").text == flt(f"{A} AND {B}").text


def test_parentheses_override() -> None:
    assert matching(f"{A} OR ({B} AND {C})", TRUTH_TABLE) == truth(lambda a, b, c: a or (b and c))


def test_not_and_minus() -> None:
    assert matching(f"NOT {A}", TRUTH_TABLE) == truth(lambda a, b, c: not a)
    assert matching(f"-{A}", TRUTH_TABLE) == truth(lambda a, b, c: not a)
    assert matching(f"-({A} OR {B})", TRUTH_TABLE) == truth(lambda a, b, c: not (a or b))
    assert matching(f"NOT ({A} OR {B}) {C}", TRUTH_TABLE) == truth(
        lambda a, b, c: not (a or b) and c
    )
    assert matching(f"NOT {A} OR {B}", TRUTH_TABLE) == truth(lambda a, b, c: (not a) or b)
    assert flt(f"-{A}").text == flt(f"NOT {A}").text == 'NOT metadata.task = "x"'
    assert flt("metadata.attempt > -1").matches(QUEUED)  # '-' in a value is a sign


def test_canonical_text_ignores_spelling() -> None:
    spellings = [
        "done:true labels:env  metadata.state=RUNNING",
        'done = true AND labels.env:* AND metadata.state = "RUNNING"',
        "(done = true)   AND (metadata.labels:env AND metadata.state = 2)",
    ]
    texts = {flt(s).text for s in spellings}
    assert texts == {"done = true AND labels.env:* AND metadata.state = RUNNING"}
    assert (
        flt('metadata.create_time > "2026-01-01T09:30:00.250+09:30"').text
        == 'metadata.create_time > "2026-01-01T00:00:00.25Z"'
    )
    assert (
        flt("(labels.a:x OR labels.c:y) labels.d:z").text
        == 'labels.a = "x" OR labels.c = "y" AND labels.d = "z"'
    )


def test_canonical_text_round_trips() -> None:
    for text in [
        f"({A} OR {B} AND {C}) OR NOT ({A} {B})",
        'metadata.task = "a\\*b*\\"q\\"\\n"',
        "-(labels:env OR error:*) metadata.attempt >= 1e3",
    ]:
        f = flt(text)
        assert flt(f.text).text == f.text
        for r in TRUTH_TABLE + list(ALL):
            assert flt(f.text).matches(r) == f.matches(r)


# ---- has, wildcards, timestamps ----


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("sleep", {"run"}),
        ("sle*", {"run", "ok"}),
        ("*eep", {"run", "stop"}),
        ("*lee*", {"run", "ok", "stop"}),
        ("s*y", {"ok"}),
        ("*", {"run", "queue", "ok", "bad", "stop"}),
        ("**e**p**", {"run", "ok", "stop"}),
        ("Sle*", set()),
    ],
)
def test_wildcards(pattern: str, expected: set[str]) -> None:
    assert matching(f'metadata.task = "{pattern}"', ALL) == expected
    assert matching(f"metadata.task = {pattern}", ALL) == expected
    assert matching(f"metadata.task:{pattern}", ALL) == expected
    everyone = {r.id for r in ALL}
    assert matching(f'metadata.task != "{pattern}"', ALL) == everyone - expected


def test_escaped_star_and_glob_characters_are_literal() -> None:
    records = [
        make("1", task="a*b"),
        make("2", task="axb"),
        make("3", task="a?b"),
        make("4", task="[a]b"),
        make("5", task="a[x]b"),
    ]
    assert matching('metadata.task = "a\\*b"', records) == {"1"}
    assert matching('metadata.task = "a*b"', records) == {"1", "2", "3", "5"}
    assert matching('metadata.task = "a?*"', records) == {"3"}
    assert matching('metadata.task = "[a]*"', records) == {"4"}
    assert matching('metadata.task = "*[x]*"', records) == {"5"}
    for text in ['metadata.task = "a?*"', 'metadata.task = "[a]*"', 'metadata.task = "*[x]*"']:
        check_sql(flt(text), records)


def test_labels_has_forms() -> None:
    records = [make("1", labels={"env": ""}), make("2", labels={"envx": "a"}), make("3")]
    assert matching("labels:env", records) == {"1"}
    assert matching("labels.env:*", records) == {"1"}
    assert matching('labels.env = "*"', records) == {"1"}
    assert matching('labels.env = ""', records) == {"1"}
    assert matching("labels:*", records) == {"1", "2"}
    check_sql(flt("labels:* AND NOT labels:env"), records)


def test_timestamp_precision_and_offsets() -> None:
    at = T0 + 5 * US
    records = [make("at", create=at), make("before", create=at - US), make("after", create=at + US)]
    ts = "2026-01-01T00:00:00.000005"
    assert matching(f'metadata.create_time = "{ts}Z"', records) == {"at"}
    assert matching(f'metadata.create_time = "{ts}000Z"', records) == {"at"}
    assert matching(f'metadata.create_time = "{ts}5Z"', records) == set()
    assert matching(f'metadata.create_time > "{ts}5Z"', records) == {"after"}
    assert matching(f'metadata.create_time >= "{ts}5Z"', records) == {"after"}
    assert matching(f'metadata.create_time < "{ts}5Z"', records) == {"at", "before"}
    assert matching(f'metadata.create_time <= "{ts}5Z"', records) == {"at", "before"}
    assert matching(f'metadata.create_time != "{ts}5Z"', records) == {"at", "before", "after"}
    assert matching('metadata.create_time = "2025-12-31T19:00:00.000005-05:00"', records) == {"at"}
    assert matching('metadata.create_time = "2026-01-01t00:00:00.000005z"', records) == {"at"}
    for op in ("=", "!=", "<", "<=", ">", ">="):
        for lit in (f"{ts}Z", f"{ts}5Z", f"{ts}999Z"):
            check_sql(flt(f'metadata.create_time {op} "{lit}"'), records)


# ---- errors ----


@pytest.mark.parametrize(
    ("text", "column", "why"),
    [
        ("metadata.colour = 1", 1, "unknown field 'metadata.colour'"),
        ("done = true AND metadata.colour = 1", 17, "known fields: name, done"),
        ("labels.bad!key = 1", 11, "unexpected '!'"),
        ("labels.a.b = 1", 8, "invalid label key 'a.b'"),
        ("metadata.labels.x%y = 1", 17, "invalid label key"),
        ('done = "yes"', 8, 'done is a bool, got "yes"'),
        ("done = 1", 8, "done is a bool"),
        ('metadata.attempt > "x"', 20, "metadata.attempt is a number"),
        ("metadata.attempt > 99999999999999999999", 20, "64-bit"),
        ("metadata.attempt > 1e999", 20, "out of range"),
        ("error.code = BOGUS", 14, "error.code is a number"),
        ("metadata.state = DONE", 18, "unknown metadata.state DONE"),
        ("metadata.state = 9", 18, "unknown metadata.state"),
        ("metadata.state = running", 18, "unknown metadata.state"),
        ("metadata.state > 1", 16, "operator '>' does not apply"),
        ("done < true", 6, "operator '<' does not apply"),
        ('metadata.create_time > "2026-13-01T00:00:00Z"', 24, "invalid timestamp"),
        ('metadata.create_time > "2026-01-01T00:00:00"', 24, "RFC 3339"),
        ('metadata.create_time > "2026-01-01"', 24, "RFC 3339"),
        ('metadata.create_time > "2026-01-01T00:00:00+05:60"', 24, "invalid timestamp"),
        ('metadata.create_time > "0001-01-01T00:00:00+01:00"', 24, "invalid timestamp"),
        ("metadata.create_time > 2026-01-01T00:00:00Z", 24, "timestamp"),
        ("metadata.end_time > 5", 21, "metadata.end_time is a timestamp"),
        ("metadata.attempt = 1*", 20, "cannot be a wildcard"),
        ('metadata.task > "a*"', 17, "wildcard"),
        ("labels = x", 1, "labels is a map"),
        ("labels:a*", 8, "invalid label key"),
        ("error = x", 1, "error is a message"),
        ("error:x", 7, "'error:' takes only '*'"),
        ('"done" = true', 1, "field name"),
        ("done", 1, "done is not a restriction"),
        ("sleep", 1, "free-text search is not supported"),
        ("done:true and done:false", 11, "and is not a restriction"),
        ("done =", 7, "expected a value after '='"),
        ("done = AND", 8, "expected a value after '='"),
        ("done = true = false", 13, "unexpected '='"),
        ("(done = true", 13, "expected ')' to close the '(' at column 1"),
        ("done = true)", 12, "this ')' closes nothing"),
        ("()", 1, "empty parentheses"),
        ("done = true AND", 16, "unexpected end of the filter"),
        ("AND done = true", 1, "unexpected 'AND'"),
        ("done = true OR OR done = false", 16, "unexpected 'OR'"),
        ("NOT", 4, "after NOT, found the end of the filter"),
        ("NOT NOT done = true", 5, "after NOT, found 'NOT'"),
        ("- done = true", 1, "'-' must be followed directly"),
        ("--done = true", 1, "'-' must be followed directly"),
        ('metadata.task = "abc', 17, "unterminated string"),
        ('metadata.task = "a\\qb"', 19, "unknown escape '\\q'"),
        ('metadata.task = "a\\u0000"', 19, "not allowed"),
        ('metadata.task = "a\\ud800"', 19, "not allowed"),
        ("metadata.task = a\x00b", 18, "NUL character"),
        ("metadata.task = a\udc00", 18, "surrogate"),
        ("done = true, done = false", 12, "functions are not supported"),
        ("done ! true", 6, "unexpected '!'"),
    ],
)
def test_errors_say_where_and_why(text: str, column: int, why: str) -> None:
    err = rejection(text)
    assert err.reason == "FILTER_INVALID"
    assert err.metadata == {"filter": text, "column": str(column)}
    assert err.message.startswith("filter: ")
    assert f"at column {column}" in err.message
    assert why in err.message


def test_error_metadata_truncates_long_filters() -> None:
    text = "done = true AND " * 60 + "bogus = 1"
    err = rejection(text)
    assert len(err.metadata["filter"]) == 200
    assert err.metadata["filter"].endswith("...")
    assert err.metadata["column"] == str(len(text) - 8)


def test_length_limit() -> None:
    ok = "metadata.task = " + "x" * (MAX_LENGTH - 16)
    assert len(ok) == MAX_LENGTH
    flt(ok)
    err = rejection(ok + "x")
    assert err.metadata["column"] == str(MAX_LENGTH + 1)
    assert "2001 characters" in err.message


def test_depth_limit() -> None:
    flt("(" * MAX_DEPTH + "done = true" + ")" * MAX_DEPTH)
    err = rejection("(" * (MAX_DEPTH + 1) + "done = true" + ")" * (MAX_DEPTH + 1))
    assert err.metadata["column"] == str(MAX_DEPTH + 1)
    assert "deeper than 32" in err.message


def test_terms_limit() -> None:
    term = "done:true"
    flt(" OR ".join([term] * MAX_TERMS))
    text = " OR ".join([term] * (MAX_TERMS + 1))
    err = rejection(text)
    assert err.metadata["column"] == str(MAX_TERMS * (len(term) + 4) + 1)
    assert "more than 100 restrictions" in err.message


# ---- SQL shapes ----


def test_sql_pushes_down_exactly_what_it_can() -> None:
    assert flt('name = "projects/p/operations/abc"').to_sql() == SqlFilter(
        "(project = ? AND id = ?)", ("p", "abc"), exact=True
    )
    full = "('projects/' || project || '/operations/' || id)"
    assert flt('name = "other/abc"').to_sql() == SqlFilter(f"{full} = ?", ("other/abc",), True)
    assert flt("name:*").to_sql() == SqlFilter(None, (), exact=True)
    assert flt("done = true metadata.state = RUNNING").to_sql() == SqlFilter(
        "done = ? AND state = ?", (1, 2), exact=True
    )
    prefix = flt('metadata.task = "sle*"').to_sql()
    assert prefix == SqlFilter("task GLOB ?", ("sle*",), exact=True)
    assert flt('labels.env = "p*"').to_sql().exact
    assert flt('name = "projects/p/operations/ab*"').to_sql().exact
    # error.message has no column: only the rest is pushed down.
    partial = flt('done = true AND error.message = "x"').to_sql()
    assert partial == SqlFilter("done = ?", (1,), exact=False)
    assert flt('NOT error.message = "x"').to_sql() == SqlFilter(None, (), exact=False)
    # Inner wildcards and label values are exact except on values with NUL.
    assert not flt('metadata.task = "*eep"').to_sql().exact
    assert not flt("labels.env = prod").to_sql().exact


def test_sql_never_interpolates_user_text() -> None:
    evil = "x' OR 1=1 --"
    sql = flt(f'metadata.task = "{evil}" OR labels.env = "{evil}*y"').to_sql()
    assert sql.where is not None and evil not in sql.where and "OR 1=1" not in sql.where


def test_wildcard_parts_do_not_overlap() -> None:
    records = [make("ab", task="ab"), make("abb", task="abb"), make("a", task="a")]
    assert matching('metadata.task = "a*b*b"', records) == {"abb"}
    assert matching('metadata.task = "a*a"', records) == set()
    assert matching('metadata.task = "*a*a*"', records) == set()


def test_prefix_patterns_on_missing_labels_under_not() -> None:
    records = [make("none"), make("p", labels={"env": "prod"}), make("q", labels={"env": "q"})]
    assert matching('NOT labels.env = "pr*"', records) == {"none", "q"}
    assert matching('labels.env != "pr*"', records) == {"q"}
    check_sql(flt('NOT labels.env = "pr*"'), records)
    check_sql(flt('NOT labels.env != "pr*"'), records)


def test_timestamps_at_the_epoch_are_present() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rec = make("e", state=State.SUCCEEDED, end=epoch)
    assert matching("metadata.end_time:*", [rec]) == {"e"}
    assert matching('metadata.end_time = "1970-01-01T00:00:00Z"', [rec]) == {"e"}


def test_sql_with_nul_in_values() -> None:
    records = [
        make("1", task="sl\x00eep", labels={"env": "pr\x00od"}),
        make("2", task="sl", labels={"env": "pr"}),
        make("3", task="sleep", labels={"env": "prod"}),
    ]
    for text in [
        'metadata.task = "sl*p"',
        'NOT metadata.task = "sl*p"',
        'metadata.task = "*p"',
        'metadata.task = "sl*"',
        "labels.env = pr",
        "NOT labels.env = pr",
        'labels.env = "pr*"',
        'labels.env = "*od"',
        'labels.env >= "pr"',
        "NOT labels.env != pr",
    ]:
        check_sql(flt(text), records)


# ---- property tests ----

PROPERTY = settings(max_examples=200, deadline=None)

TEXT_PIECES = ["", "sl", "eep", "pr", "od", "a", "é", "😀", "*", "?", "[", "\\", '"', " ", "\n"]
WORDISH = re.compile(r"[A-Za-z0-9_é]+")
LITERAL = st.lists(st.sampled_from([p for p in TEXT_PIECES if p != "*"]), max_size=2).map("".join)
#: A string value as pieces, "*" being a wildcard: exact, prefix, suffix, infix or any mix.
PIECES = st.one_of(
    LITERAL.map(lambda s: [s]),
    LITERAL.map(lambda s: [s, "*"]),
    LITERAL.map(lambda s: ["*", s]),
    LITERAL.map(lambda s: ["*", s, "*"]),
    st.lists(st.sampled_from(TEXT_PIECES), max_size=4),
)


@dataclass(frozen=True)
class Node:
    """A generated filter: its text, the reference truth, and its shape."""

    text: str
    truth: Callable[[OperationRecord], bool]
    kind: str = "leaf"  # leaf | and | or | not


def reference_error(r: OperationRecord) -> status_pb2.Status | None:
    if r.done and r.error is not None:
        return status_pb2.Status.FromString(r.error)
    return None


def ref_ns(value: datetime | None) -> int | None:
    return None if value is None else ((value - datetime(1970, 1, 1, tzinfo=UTC)) // US) * 1000


STRING_FIELDS: dict[str, Callable[[OperationRecord], str | None]] = {
    "name": lambda r: r.name,
    "metadata.task": lambda r: r.task,
    "metadata.progress_message": lambda r: r.progress_message,
    "labels.env": lambda r: r.labels.get("env"),
    "metadata.labels.env": lambda r: r.labels.get("env"),
    "labels.a-b": lambda r: r.labels.get("a-b"),
    "error.message": lambda r: None if (e := reference_error(r)) is None else e.message,
}
NUMBER_FIELDS: dict[str, Callable[[OperationRecord], int | None]] = {
    "metadata.attempt": lambda r: r.attempt,
    "metadata.max_attempts": lambda r: r.max_attempts,
    "metadata.progress_percent": lambda r: r.progress_percent,
    "error.code": lambda r: None if (e := reference_error(r)) is None else e.code,
}
BOOL_FIELDS: dict[str, Callable[[OperationRecord], bool]] = {
    "done": lambda r: r.done,
    "metadata.cancel_requested": lambda r: r.cancel_requested,
}
TIME_FIELDS: dict[str, Callable[[OperationRecord], datetime | None]] = {
    "metadata.create_time": lambda r: r.create_time,
    "metadata.update_time": lambda r: r.update_time,
    "metadata.start_time": lambda r: r.start_time,
    "metadata.end_time": lambda r: r.end_time,
    "metadata.expire_time": lambda r: r.expire_time,
}
COMPARE: dict[str, Callable[[object, object], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}


def quote(pieces: Sequence[str]) -> str:
    """A quoted string whose unescaped stars are the `*` pieces."""
    out = []
    for p in pieces:
        if p == "*":
            out.append("*")
        else:
            out.append(p.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*"))
    return '"' + "".join(out) + '"'


def glob_matches(pieces: Sequence[str], value: str) -> bool:
    regex = "".join(".*" if p == "*" else re.escape(p) for p in pieces)
    return re.fullmatch(regex, value, re.DOTALL) is not None


@st.composite
def string_leaf(draw: st.DrawFn) -> Node:
    path = draw(st.sampled_from(sorted(STRING_FIELDS)))
    get = STRING_FIELDS[path]
    pieces = draw(PIECES)
    if path == "name" and draw(st.booleans()):
        pieces = [draw(st.sampled_from(["projects/default/operations/", "projects/*/"])), *pieces]
    wild = "*" in pieces
    op = draw(st.sampled_from(["=", "!=", ":"] if wild else ["=", "!=", ":", "<", "<=", ">"]))
    if op == ":" and wild and all(p in ("*", "") for p in pieces):
        op = "="  # `field:*` is presence, tested by presence_leaf
    literal = "".join(pieces)
    bare = (not wild and WORDISH.fullmatch(literal)) or (
        wild and all(p == "*" or WORDISH.fullmatch(p) for p in pieces)
    )
    value = (
        literal if bare and literal not in ("AND", "OR", "NOT") and draw(st.booleans()) else None
    )
    sep = ":" if op == ":" else f" {op} "
    text = f"{path}{sep}{value if value is not None else quote(pieces)}"

    def truth(r: OperationRecord) -> bool:
        actual = get(r)
        if actual is None:
            return False
        if op in ("=", ":"):
            return glob_matches(pieces, actual)
        if op == "!=":
            return not glob_matches(pieces, actual)
        return COMPARE[op](actual, literal)

    return Node(text, truth)


@st.composite
def number_leaf(draw: st.DrawFn) -> Node:
    path = draw(st.sampled_from(sorted(NUMBER_FIELDS)))
    get = NUMBER_FIELDS[path]
    op = draw(st.sampled_from(sorted(COMPARE)))
    literal, value = draw(
        st.sampled_from(
            [("0", 0), ("1", 1), ("-1", -1), ("2", 2), ("1.5", 1.5), ("5", 5), ("1e1", 10.0)]
            + ([("NOT_FOUND", 5), ("CANCELLED", 1)] if path == "error.code" else [])
        )
    )

    def truth(r: OperationRecord) -> bool:
        actual = get(r)
        return actual is not None and COMPARE[op](actual, value)

    return Node(f"{path} {op} {literal}", truth)


@st.composite
def bool_leaf(draw: st.DrawFn) -> Node:
    path = draw(st.sampled_from(sorted(BOOL_FIELDS)))
    op = draw(st.sampled_from(["=", "!=", ":"]))
    value = draw(st.booleans())
    text = f"{path}{op}{str(value).lower()}" if op == ":" else f"{path} {op} {str(value).lower()}"
    ne = op == "!="
    return Node(text, lambda r: (BOOL_FIELDS[path](r) == value) != ne)


@st.composite
def state_leaf(draw: st.DrawFn) -> Node:
    state = draw(st.sampled_from(list(State)))
    op = draw(st.sampled_from(["=", "!=", ":"]))
    spelled = draw(st.sampled_from([state.name, str(int(state)), f'"{state.name}"']))
    ne = op == "!="
    return Node(f"metadata.state {op} {spelled}", lambda r: (r.state == state) != ne)


INSTANTS_US = [-1_000_000, -1, 0, 1, 999, 1000, 1001]


@st.composite
def time_leaf(draw: st.DrawFn) -> Node:
    path = draw(st.sampled_from(sorted(TIME_FIELDS)))
    get = TIME_FIELDS[path]
    op = draw(st.sampled_from(sorted(COMPARE)))
    utc = T0 + draw(st.sampled_from(INSTANTS_US)) * US
    extra_ns = draw(st.sampled_from([0, 0, 1, 500, 999]))
    offset = timedelta(minutes=draw(st.sampled_from([0, 330, -480])))
    local = utc.astimezone(timezone(offset))
    nanos = (ref_ns(utc) or 0) + extra_ns
    fraction = f"{local.microsecond * 1000 + extra_ns:09d}"
    if draw(st.booleans()):
        fraction = fraction.rstrip("0")
    zone = "Z" if not offset and draw(st.booleans()) else local.strftime("%z")
    zone = zone if zone == "Z" else zone[:3] + ":" + zone[3:]
    stamp = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + zone

    def truth(r: OperationRecord) -> bool:
        actual = ref_ns(get(r))
        return actual is not None and COMPARE[op](actual, nanos)

    return Node(f'{path} {op} "{stamp}"', truth)


PRESENCE: dict[str, Callable[[OperationRecord], bool]] = {
    "name": lambda r: True,
    "done": lambda r: r.done,
    "metadata.state": lambda r: True,
    "metadata.task": lambda r: r.task != "",
    "metadata.attempt": lambda r: r.attempt != 0,
    "metadata.cancel_requested": lambda r: r.cancel_requested,
    "metadata.end_time": lambda r: r.end_time is not None,
    "metadata.start_time": lambda r: r.start_time is not None,
    "metadata.create_time": lambda r: True,
    "labels": lambda r: len(r.labels) > 0,
    "labels.env": lambda r: "env" in r.labels,
    "metadata.labels.a-b": lambda r: "a-b" in r.labels,
    "error": lambda r: reference_error(r) is not None,
    "error.code": lambda r: (e := reference_error(r)) is not None and e.code != 0,
    "error.message": lambda r: (e := reference_error(r)) is not None and e.message != "",
}


@st.composite
def presence_leaf(draw: st.DrawFn) -> Node:
    if draw(st.booleans()):
        key = draw(st.sampled_from(["env", "a-b", "tier"]))
        prefix = draw(st.sampled_from(["labels", "metadata.labels"]))
        return Node(f"{prefix}:{key}", lambda r: key in r.labels)
    path = draw(st.sampled_from(sorted(PRESENCE)))
    star = draw(st.sampled_from(["*", '"*"']))
    return Node(f"{path}:{star}", PRESENCE[path])


def leaves() -> st.SearchStrategy[Node]:
    return st.one_of(
        string_leaf(), number_leaf(), bool_leaf(), state_leaf(), time_leaf(), presence_leaf()
    )


def paren(node: Node, pad: str) -> Node:
    return Node(f"({pad}{node.text}{pad})", node.truth)


@st.composite
def and_node(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> Node:
    parts = draw(st.lists(children, min_size=2, max_size=3))
    text = parts[0].text
    for part in parts[1:]:
        text += draw(st.sampled_from([" AND ", " ", "\n AND\t", "  "])) + part.text
    return Node(text, lambda r: all(p.truth(r) for p in parts), "and")


@st.composite
def or_node(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> Node:
    parts = draw(st.lists(children, min_size=2, max_size=3))
    wrapped = [paren(p, draw(st.sampled_from(["", " "]))) if p.kind == "and" else p for p in parts]
    text = draw(st.sampled_from([" OR ", "  OR\n"])).join(p.text for p in wrapped)
    return Node(text, lambda r: any(p.truth(r) for p in parts), "or")


@st.composite
def not_node(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> Node:
    child = draw(children)
    if child.kind != "leaf":
        child = paren(child, draw(st.sampled_from(["", " "])))
    word = draw(st.sampled_from(["NOT ", "-", "NOT  "]))
    return Node(word + child.text, lambda r: not child.truth(r), "not")


@st.composite
def paren_node(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> Node:
    return paren(draw(children), draw(st.sampled_from(["", " "])))


def filters() -> st.SearchStrategy[Node]:
    return st.recursive(
        leaves(),
        lambda children: st.one_of(
            and_node(children), or_node(children), not_node(children), paren_node(children)
        ),
        max_leaves=8,
    )


TASKS = ["sleep", "sl", "", "a*b", "sl\x00eep", "é😀", "pr"]
LABEL_KEYS = ["env", "a-b", "tier", "x.y"]
LABEL_VALUES = ["prod", "pr", "", "pr*od", "pr\x00od", "é", "😀", '"q"', "\\"]
ERRORS = [None, None, *(status(c, m) for c in (0, 1, 5, 13) for m in ("", "boom", "sl*eep", "pr"))]
MESSAGES = ["", "sleep", "pr"]


def pool_record(i: int) -> OperationRecord:
    """A deterministic spread of records, checked in every example."""
    rng = random.Random(i)

    def when() -> datetime:
        return T0 + rng.choice(INSTANTS_US) * US

    def maybe_when() -> datetime | None:
        return rng.choice([None, when()])

    def text() -> str:
        return "".join(rng.choice("ab*?[\x00é😀\n ") for _ in range(rng.randint(0, 3)))

    return OperationRecord(
        id=rng.choice(["p", "a", "*", "é", "a?["]) + str(i) + rng.choice(["", "\x00b"]),
        task=rng.choice([*TASKS, text()]),
        params=b"",
        state=rng.choice(list(State)),
        create_time=when(),
        update_time=when(),
        labels={
            k: rng.choice([*LABEL_VALUES, text()])
            for k in rng.sample(LABEL_KEYS, rng.randint(0, 3))
        },
        start_time=maybe_when(),
        end_time=maybe_when(),
        expire_time=maybe_when(),
        attempt=rng.randint(0, 3),
        max_attempts=rng.randint(1, 3),
        progress_percent=rng.choice([0, 5, 100]),
        progress_message=rng.choice(MESSAGES),
        cancel_requested=rng.random() < 0.3,
        error=rng.choice(ERRORS),
    )


POOL = [pool_record(i) for i in range(40)]
#: The POOL plus a few records from hypothesis-chosen seeds.
RECORDS = st.lists(st.integers(min_value=len(POOL)), max_size=4, unique=True).map(
    lambda seeds: [pool_record(seed) for seed in seeds] + POOL
)


WILDCARD_VALUES = [
    "".join(chars) for n in range(4) for chars in itertools.product("ab\x00", repeat=n)
] + ["?", "[", "]", "a?b", "[a]", "*", "a*"]
WILDCARD_RECORDS = [
    make(f"v{i}", task=v, labels={"env": v}) for i, v in enumerate(WILDCARD_VALUES)
] + [make("none")]


@pytest.fixture(scope="module")
def wildcard_table() -> Iterator[sqlite3.Connection]:
    with closing(table(WILDCARD_RECORDS)) as conn:
        yield conn


@PROPERTY
@given(pieces=st.lists(st.sampled_from(["a", "b", "ab", "?", "[", "]", "*", ""]), max_size=5))
def test_wildcard_matching_agrees_with_a_regex(
    wildcard_table: sqlite3.Connection, pieces: list[str]
) -> None:
    for path in ("metadata.task", "labels.env"):
        text = f"{path} = {quote(pieces)}"
        expected = {
            r.id
            for r in WILDCARD_RECORDS
            if (v := r.labels.get("env") if path == "labels.env" else r.task) is not None
            and glob_matches(pieces, v)
        }
        assert matching(text, WILDCARD_RECORDS) == expected, text
        for variant in (text, f"NOT {text}", text.replace(" = ", " != ")):
            check_sql(flt(variant), WILDCARD_RECORDS, wildcard_table)


@PROPERTY
@given(node=filters(), recs=RECORDS)
def test_generated_filters_match_the_reference(node: Node, recs: list[OperationRecord]) -> None:
    f = flt(node.text)
    again = flt(f.text)
    assert again.text == f.text
    for r in recs:
        assert f.matches(r) == node.truth(r), (node.text, f.text, r)
        assert again.matches(r) == node.truth(r)


@PROPERTY
@given(node=filters(), recs=RECORDS)
def test_sql_agrees_with_matches(node: Node, recs: list[OperationRecord]) -> None:
    check_sql(flt(node.text), recs)


def parses_or_rejects(text: str) -> Filter | None:
    """Either a filter (usable end to end) or a clean INVALID_ARGUMENT."""
    try:
        f = parse_filter(text)
    except InvalidArgument as err:
        assert err.reason == "FILTER_INVALID"
        column = int(err.metadata["column"])
        assert 1 <= column <= len(text) + 1
        assert err.message.startswith("filter: ")
        assert f"at column {column}" in err.message
        return None
    if f is not None:
        assert flt(f.text).text == f.text
        check_sql(f, SAMPLE)
    return f


SAMPLE = [*ALL, make("n", task="sl\x00eep", labels={"env": "p\x00"})]
JUNK = [
    "(", ")", "AND", "OR", "NOT", "-", "=", "!=", "<", ">=", ":", "*", '"', "'", "\\", "!", ",",
    "done", "labels", "labels.env", "metadata.state", "metadata.create_time", "error",
    "error.code", "name", "true", "RUNNING", "3", "-1", "1.5", '"2026-01-01T00:00:00Z"',
    '"x*"', "sl*", "\\u00", "\x00", "metadata.colour", "é", "\t", "labels:env",
]  # fmt: skip


@PROPERTY
@given(
    text=st.lists(st.sampled_from(JUNK), max_size=12).map(" ".join)
    | st.lists(st.sampled_from(JUNK), max_size=12).map("".join)
    | st.text(max_size=40)
)
def test_junk_never_raises_anything_else(text: str) -> None:
    parses_or_rejects(text)


@PROPERTY
@given(node=filters(), data=st.data())
def test_truncations_never_raise_anything_else(node: Node, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(node.text)))
    parses_or_rejects(node.text[:cut])


@PROPERTY
@given(node=filters(), damage=st.integers(0, 5))
def test_broken_filters_are_rejected_where_they_break(node: Node, damage: int) -> None:
    t = node.text
    broken, column, why = [
        (f"{t} AND metadata.colour = 1", len(t) + 6, "unknown field"),
        (f"({t}", len(t) + 2, "expected ')'"),
        (f"{t})", len(t) + 1, "closes nothing"),
        (f"{t} AND", len(t) + 5, "expected a restriction"),
        (f"{t} = 1", len(t) + 2, "unexpected '='"),
        (f"NOT NOT {t}", 5, "after NOT"),
    ][damage]
    err = rejection(broken)
    assert err.metadata["column"] == str(column), (broken, err.message)
    assert why in err.message
