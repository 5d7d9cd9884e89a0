from __future__ import annotations

from dataclasses import replace

from longrun_core.model import State
from longrun_server.views import OperationViews
from tests.contract.records import make_record


def test_a_view_is_built_once_per_version() -> None:
    views = OperationViews()
    rec = replace(make_record(), version=1)
    first = views.of(rec)
    assert views.of(rec) is first
    assert (views.hits, views.misses) == (1, 1)
    newer = replace(rec, version=2, state=State.RUNNING, attempt=1)
    second = views.of(newer)
    assert second is not first
    assert second == newer.to_operation()
    assert views.misses == 2


def test_views_are_evicted_least_recently_used_first() -> None:
    views = OperationViews(capacity=2)
    a, b, c = (replace(make_record(), version=1) for _ in range(3))
    view_a = views.of(a)
    views.of(b)
    assert views.of(a) is view_a  # a is now the most recent
    views.of(c)  # evicts b
    assert views.of(a) is view_a
    misses = views.misses
    views.of(b)
    assert views.misses == misses + 1
