"""The cap on `queue` label values: counters keep the first N queue ids they
meet (`default` always among them), gauges the N deepest queues; the rest
are `_other`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from longrun_core.observability.queue_labels import OTHER_QUEUES, QueueLabels, top_queues
from longrun_core.store import QueueReady

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_counters_keep_the_first_queues_met_and_default() -> None:
    labels = QueueLabels(3)
    assert [labels(q) for q in ("emails", "default", "reports", "thumbs", "emails")] == [
        "emails",
        "default",
        "reports",
        OTHER_QUEUES,
        "emails",
    ]
    assert labels("default") == "default"
    one = QueueLabels(1)
    assert (one("default"), one("emails")) == ("default", OTHER_QUEUES)


@pytest.mark.parametrize("limit", [0, 1001])
def test_the_cap_is_bounded(limit: int) -> None:
    with pytest.raises(ValueError):
        QueueLabels(limit)


def test_gauges_show_the_deepest_queues_and_sum_the_rest() -> None:
    ready = [
        QueueReady("a", 1, NOW - timedelta(seconds=5)),
        QueueReady("b", 7, NOW - timedelta(seconds=1)),
        QueueReady("c", 1, NOW - timedelta(seconds=30)),
        QueueReady("d", 2, NOW - timedelta(seconds=2)),
        QueueReady("e", 3, NOW + timedelta(seconds=1)),  # a clock step: age 0, never negative
    ]
    shown = top_queues(ready, 2, NOW)
    assert shown == {"b": (7, 1.0), "e": (3, 0.0), OTHER_QUEUES: (4, 30.0)}
    assert top_queues(ready, 10, NOW)["a"] == (1, 5.0)
    assert top_queues([], 2, NOW) == {}
