"""The caller's view of a record, built once per record version.

Building an Operation (metadata timestamps, Any packing) costs more than
reading the record; polling clients ask for the same versions again and
again. Keyed by (id, version), so a cached view is never stale: a new
version simply misses. The messages handed out are shared: callers must
not mutate them (grpc only serializes them; protobuf's repeated-field
`extend` copies)."""

from __future__ import annotations

from google.longrunning import operations_pb2

from longrun_core.model import OperationRecord
from longrun_core.stamped_cache import StampedCache


class OperationViews:
    def __init__(self, capacity: int = 20_000) -> None:
        self._views: StampedCache[operations_pb2.Operation] = StampedCache(capacity)
        self.hits = 0
        self.misses = 0

    def of(self, rec: OperationRecord) -> operations_pb2.Operation:
        op = self._views.get(rec.id, rec.version)
        if op is not None:
            self.hits += 1
            return op
        self.misses += 1
        op = rec.to_operation()
        self._views.put(rec.id, rec.version, op)
        return op
