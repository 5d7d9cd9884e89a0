"""What of a filter the list indexes serve (filtering/index_terms.py), its
Firestore pushdown, and that firestore.indexes.json declares an index for
every query the pushdown can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings

from longrun_core.clock import to_micros
from longrun_core.filtering import parse_filter
from longrun_core.filtering.firestore import FirestoreQuery
from longrun_core.filtering.index_terms import Equality, Indexed, IndexTerms
from longrun_core.model import State
from tests.unit.test_filtering import POOL, T0, Node, filters

ROOT = Path(__file__).resolve().parents[2]


def terms(text: str) -> IndexTerms:
    flt = parse_filter(text)
    assert flt is not None
    return flt.index_terms()


@pytest.mark.parametrize(
    ("text", "equalities", "complete"),
    [
        ("done = true", [Equality(Indexed.DONE, True)], True),
        ("done != true", [Equality(Indexed.DONE, False)], True),
        ("NOT done:*", [Equality(Indexed.DONE, False)], True),
        ("metadata.state = FAILED", [Equality(Indexed.STATE, (State.FAILED,))], True),
        (
            "metadata.state != RUNNING",
            [Equality(Indexed.STATE, tuple(s for s in State if s is not State.RUNNING))],
            True,
        ),
        ('metadata.task = "resize"', [Equality(Indexed.TASK, "resize")], True),
        ('metadata.task = "res*"', [], False),
        ('labels.env = "prod"', [Equality(Indexed.LABEL, "prod", "env")], True),
        ('metadata.labels.env:"prod"', [Equality(Indexed.LABEL, "prod", "env")], True),
        ('labels.env != "prod"', [], False),
        ('error.message = "x"', [], False),
        ("done = true OR metadata.attempt = 2", [], False),
        (
            'done = false AND labels.env = "prod" AND metadata.task = "t" AND error.code = 5',
            [
                Equality(Indexed.LABEL, "prod", "env"),
                Equality(Indexed.TASK, "t"),
                Equality(Indexed.DONE, False),
            ],
            False,
        ),
    ],
)
def test_equalities_come_from_top_level_conjuncts(
    text: str, equalities: list[Equality], complete: bool
) -> None:
    got = terms(text)
    assert list(got.equalities) == equalities
    assert got.complete is complete


@pytest.mark.parametrize(
    ("text", "lo", "hi"),
    [
        ('metadata.create_time >= "2026-01-01T00:00:00.000001Z"', 1, None),
        ('metadata.create_time > "2026-01-01T00:00:00.000001Z"', 2, None),
        ('metadata.create_time > "2026-01-01T00:00:00.0000015Z"', 2, None),
        ('metadata.create_time >= "2026-01-01T00:00:00.0000015Z"', 2, None),
        ('metadata.create_time < "2026-01-01T00:00:00.000001Z"', None, 0),
        ('metadata.create_time < "2026-01-01T00:00:00.0000015Z"', None, 1),
        ('metadata.create_time <= "2026-01-01T00:00:00.0000015Z"', None, 1),
        ('metadata.create_time = "2026-01-01T00:00:00.000001Z"', 1, 1),
        (
            'metadata.create_time > "2026-01-01T00:00:00Z" '
            'AND metadata.create_time <= "2026-01-01T00:00:00.000003Z"',
            1,
            3,
        ),
    ],
)
def test_create_time_bounds_in_microseconds(text: str, lo: int | None, hi: int | None) -> None:
    base = to_micros(T0)
    got = terms(text)
    assert got.create_lo_us == (None if lo is None else base + lo)
    assert got.create_hi_us == (None if hi is None else base + hi)
    assert got.complete


def test_a_sub_microsecond_equality_matches_nothing() -> None:
    got = terms('metadata.create_time = "2026-01-01T00:00:00.0000015Z"')
    assert got.empty_range


@settings(max_examples=300, deadline=None)
@given(node=filters())
def test_terms_never_exclude_a_matching_record(node: Node) -> None:
    """Every record the filter matches satisfies each equality and bound: an
    index walk on them (what both stores do) loses nothing."""
    flt = parse_filter(node.text)
    assert flt is not None
    got = flt.index_terms()
    for rec in POOL:
        if not flt.matches(rec):
            continue
        us = to_micros(rec.create_time)
        assert got.create_lo_us is None or got.create_lo_us <= us, node.text
        assert got.create_hi_us is None or us <= got.create_hi_us, node.text
        for e in got.equalities:
            if e.field is Indexed.DONE:
                assert rec.done == e.value, node.text
            elif e.field is Indexed.STATE:
                assert isinstance(e.value, tuple) and rec.state in e.value, node.text
            elif e.field is Indexed.TASK:
                assert rec.task == e.value, node.text
            else:
                assert rec.labels.get(str(e.label_key)) == e.value, node.text


# ---- Firestore ----


def _declared_indexes() -> set[tuple[tuple[str, str], ...]]:
    data = json.loads((ROOT / "firestore.indexes.json").read_text())
    out = set()
    for index in data["indexes"]:
        if index["collectionGroup"] == "operations":
            out.add(
                tuple(
                    (f["fieldPath"], f.get("order") or f.get("arrayConfig", ""))
                    for f in index["fields"]
                )
            )
    return out


@pytest.mark.parametrize(
    ("text", "where", "exact"),
    [
        ("done = true", [("done", "==", True)], True),
        ("metadata.state = FAILED", [("state", "==", 4)], True),
        ("metadata.state != RUNNING", [("state", "in", [1, 3, 4, 5])], True),
        ('metadata.task = "t"', [("task", "==", "t")], True),
        ('labels.env = "prod"', [("label_pairs", "array_contains", "env=prod")], True),
        (
            'labels.env = "prod" AND done = true',
            [("label_pairs", "array_contains", "env=prod")],
            False,
        ),
        ('error.message = "x"', [], False),
    ],
)
def test_to_firestore_pushes_one_equality(
    text: str, where: list[tuple[str, str, object]], exact: bool
) -> None:
    flt = parse_filter(text)
    assert flt is not None
    query = flt.to_firestore()
    assert list(query.wheres) == where
    assert query.exact is exact


def test_every_pushed_down_query_has_its_composite_index() -> None:
    """The list query orders by (create_time desc, __name__ desc); an
    equality on another field needs (field, create_time desc, __name__ desc)."""
    declared = _declared_indexes()
    texts = [
        "done = true",
        "metadata.state = FAILED",
        "metadata.state != FAILED",
        'metadata.task = "t"',
        'labels.env = "prod"',
        'labels.env = "prod" AND metadata.create_time > "2026-01-01T00:00:00Z"',
    ]
    for text in texts:
        flt = parse_filter(text)
        assert flt is not None
        for path, op, _ in flt.to_firestore().wheres:
            if path == "create_time":
                continue  # the order field itself: no other index
            first = (path, "CONTAINS" if op == "array_contains" else "ASCENDING")
            needed = (first, ("create_time", "DESCENDING"), ("__name__", "DESCENDING"))
            assert needed in declared, f"{text}: firestore.indexes.json lacks {needed}"


def test_create_time_bounds_at_the_ends_of_timestamps() -> None:
    def pushdown(text: str) -> FirestoreQuery:
        flt = parse_filter(text)
        assert flt is not None
        return flt.to_firestore()

    assert pushdown('metadata.create_time < "0001-01-01T00:00:00Z"').matches_nothing
    everything = pushdown('metadata.create_time >= "0001-01-01T00:00:00Z"')
    assert everything.wheres == () and not everything.matches_nothing
    later = pushdown('metadata.create_time >= "0001-01-01T00:00:00.000001Z"')
    assert [w[:2] for w in later.wheres] == [("create_time", ">=")]
