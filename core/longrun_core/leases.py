"""Judging other processes' leases without trusting their clocks.

A lease holder proves it is alive by writing (each renew advances the
record's `version`). A `LeaseObserver` remembers, per RUNNING operation, the
version it last saw and since when (on this process's monotonic clock). The
lease counts as lost only once the observer itself has seen the same version
for the record's whole `lease_duration`: wall clocks, which may be minutes
apart between machines, decide nothing.

Safety: the holder stops its task once it has not renewed for 3/4 of its
lease on *its* monotonic clock (`longrun_worker.runtime`), counting from
before the renew it sent, while an observer can first see a version only
after it was written and then waits the whole lease. So a live holder is
never taken over, and a silent one has stopped before anyone takes over.
Forgetting a sighting (a restart, an evicted entry) only delays a takeover.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import timedelta

from longrun_core.model import OperationRecord
from longrun_core.transitions import LeaseSighting

#: Seconds on a clock that never jumps (time.monotonic, or a test's fake).
Monotonic = Callable[[], float]

#: Sightings a worker keeps (one per operation whose duplicate message it saw).
DEFAULT_CAPACITY = 10_000


class LeaseObserver:
    """Sightings of RUNNING records, bounded (least recently seen dropped
    first). Thread-safe: a queue may apply a worker's claim on its database
    thread."""

    def __init__(self, monotonic: Monotonic = time.monotonic, capacity: int = DEFAULT_CAPACITY):
        self._monotonic = monotonic
        self._capacity = capacity
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def sight(self, rec: OperationRecord) -> LeaseSighting:
        """Record that `rec` was seen now; how long it has stayed at its version."""
        now = self._monotonic()
        with self._lock:
            seen = self._seen.get(rec.id)
            if seen is None or seen[0] != rec.version:
                seen = (rec.version, now)
            self._seen[rec.id] = seen
            self._seen.move_to_end(rec.id)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        return LeaseSighting(version=rec.version, silent_for=timedelta(seconds=now - seen[1]))

    def forget(self, op_id: str) -> None:
        with self._lock:
            self._seen.pop(op_id, None)

    def keep_only(self, op_ids: Iterable[str]) -> None:
        """Drop the sightings of every operation not in `op_ids` (no longer RUNNING)."""
        keep = set(op_ids)
        with self._lock:
            for op_id in [i for i in self._seen if i not in keep]:
                del self._seen[op_id]

    def __len__(self) -> int:
        return len(self._seen)
