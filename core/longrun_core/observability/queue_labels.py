"""The `queue` label of the per-queue metrics, with bounded cardinality.

Queues are created by API callers, so their ids are not bounded by the
deployment the way task names are. Each process gives at most
`--metrics-max-queues` (LONGRUN_METRICS_MAX_QUEUES, default 20) queue ids a
label value of their own; everything else is `_other` (no queue id can start
with `_`):

* counters (`QueueLabels`): the first ids the process counts, in the order
  it meets them (`default` is always one of them); a counter's series never
  change their label afterwards, so rates stay correct;
* depth gauges (`top_queues`): the queues with the most ready jobs at each
  read, the rest summed into `_other` (their oldest age the oldest of all).

The label is the queue id (`emails` for `projects/p/queues/emails`): queues
of the same id in different projects share a series."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longrun_core.store import QueueReady

#: The label value of queues past the cap.
OTHER_QUEUES = "_other"
DEFAULT_MAX_QUEUE_LABELS = 20
MAX_QUEUE_LABELS_LIMIT = 1000


class QueueLabels:
    """The label value for a queue id: itself for the first `limit` ids met
    (`default` first), `_other` after that."""

    def __init__(self, limit: int = DEFAULT_MAX_QUEUE_LABELS) -> None:
        if not 1 <= limit <= MAX_QUEUE_LABELS_LIMIT:
            raise ValueError(f"the queue label limit must be 1-{MAX_QUEUE_LABELS_LIMIT}")
        self.limit = limit
        self._own: set[str] = {"default"}

    def __call__(self, queue: str) -> str:
        if queue in self._own:
            return queue
        if len(self._own) < self.limit:
            self._own.add(queue)
            return queue
        return OTHER_QUEUES


def top_queues(
    ready: Iterable[QueueReady], limit: int, now: datetime
) -> dict[str, tuple[int, float]]:
    """(ready jobs, seconds the oldest has been ready) by label value: the
    `limit` queues with the most ready jobs (ties by id) under their own id,
    the rest summed into `_other`."""
    ranked = sorted(ready, key=lambda q: (-q.ready, q.queue))
    shown: dict[str, tuple[int, float]] = {}
    for position, q in enumerate(ranked):
        age = max((now - q.oldest_ready_since).total_seconds(), 0.0)
        label = q.queue if position < limit else OTHER_QUEUES
        count, oldest = shown.get(label, (0, 0.0))
        shown[label] = (count + q.ready, max(oldest, age))
    return shown
