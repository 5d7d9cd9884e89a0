"""Pushing a filter down into a Firestore list query (`Filter.to_firestore`).

The list query is ordered by (create_time desc, __name__ desc). One equality
of the filter (`longrun_core.filtering.index_terms`) becomes a `where` on its
field, served by a composite index (field, create_time desc) declared in
firestore.indexes.json; the create_time bounds become range `where`s on the
order field, which need no other index. Only one equality is pushed: two
would need an index per combination. The rest of the filter is checked with
`Filter.matches`, and `exact` says whether there is a rest.

    done = B                  where done == B
    metadata.state = S        where state == S
    metadata.state != S       where state in [the four other states]
    metadata.task = "T"       where task == "T"           (no wildcard)
    labels.K = "V"            where label_pairs array-contains "K=V"
    metadata.create_time ...  where create_time >= / <= ...

`label_pairs` is a field the store writes beside `labels`: one "key=value"
string per label. (Label keys hold no '=', so the pair is unambiguous.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from longrun_core.clock import from_micros, to_micros
from longrun_core.filtering.index_terms import Equality, Indexed, IndexTerms

LABEL_PAIRS = "label_pairs"
_MIN_US = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_US = to_micros(datetime.max.replace(tzinfo=UTC))


def label_pair(key: str, value: str) -> str:
    return f"{key}={value}"


@dataclass(frozen=True, slots=True)
class FirestoreQuery:
    """Implements `longrun_core.google.firestore_store.FirestorePushdown`."""

    #: (field path, operator, value) for `FieldFilter`.
    wheres: tuple[tuple[str, str, Any], ...]
    exact: bool
    #: The filter can match nothing (an empty create_time range).
    matches_nothing: bool = False

    def apply(self, query: Any) -> Any:
        from google.cloud.firestore_v1.base_query import FieldFilter

        for path, op, value in self.wheres:
            query = query.where(filter=FieldFilter(path, op, value))
        return query


def to_firestore(terms: IndexTerms) -> FirestoreQuery:
    wheres: list[tuple[str, str, Any]] = []
    pushed = terms.equalities[:1]
    for equality in pushed:
        wheres.append(_where(equality))
    lo, hi = terms.create_lo_us, terms.create_hi_us
    nothing = (
        terms.empty_range or (lo is not None and lo > _MAX_US) or (hi is not None and hi < _MIN_US)
    )
    # A bound beyond what a timestamp can hold excludes nothing: dropped
    # rather than overflowing.
    if lo is not None and _MIN_US < lo <= _MAX_US:
        wheres.append(("create_time", ">=", from_micros(lo)))
    if hi is not None and _MIN_US <= hi < _MAX_US:
        wheres.append(("create_time", "<=", from_micros(hi)))
    exact = terms.complete and len(terms.equalities) == len(pushed)
    return FirestoreQuery(tuple(wheres), exact, matches_nothing=nothing)


def _where(e: Equality) -> tuple[str, str, Any]:
    if e.field is Indexed.LABEL:
        assert e.label_key is not None and isinstance(e.value, str)
        return (LABEL_PAIRS, "array_contains", label_pair(e.label_key, e.value))
    if e.field is Indexed.STATE:
        assert isinstance(e.value, tuple)
        states = [int(s) for s in e.value]
        return ("state", "==", states[0]) if len(states) == 1 else ("state", "in", states)
    return (e.field.value, "==", e.value)
