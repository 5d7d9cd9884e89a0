"""The caller's view of a record, built once per record version.

Building an Operation (metadata timestamps, Any packing) costs more than
reading the record; polling clients ask for the same versions again and
again. Keyed by (id, version), so a cached view is never stale: a new
version simply misses. The messages handed out are shared: callers must
not mutate them (grpc only serializes them; protobuf's repeated-field
`extend` copies)."""

from __future__ import annotations

from collections import OrderedDict

from google.longrunning import operations_pb2

from lro.model import OperationRecord


class OperationViews:
    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._views: OrderedDict[str, tuple[int, operations_pb2.Operation]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def of(self, rec: OperationRecord) -> operations_pb2.Operation:
        cached = self._views.get(rec.id)
        if cached is not None and cached[0] == rec.version:
            self._views.move_to_end(rec.id)
            self.hits += 1
            return cached[1]
        self.misses += 1
        op = rec.to_operation()
        self._views[rec.id] = (rec.version, op)
        self._views.move_to_end(rec.id)
        if len(self._views) > self.capacity:
            self._views.popitem(last=False)
        return op
