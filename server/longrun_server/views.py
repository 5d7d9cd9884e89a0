"""The caller's view of a record, built once per record version.

Building an Operation (metadata timestamps, Any packing) costs more than
reading the record; polling clients ask for the same versions again and
again. Keyed by (id, version), so a cached view is never stale: a new
version simply misses. The messages handed out are shared: callers must
not mutate them (grpc only serializes them; protobuf's repeated-field
`extend` copies). Bounded by entries and by bytes (see StampedCache)."""

from __future__ import annotations

from google.longrunning import operations_pb2

from longrun_core.model import OperationRecord
from longrun_core.stamped_cache import DEFAULT_MAX_BYTES, StampedCache

#: Bytes a view takes beyond its serialized size (the message objects).
VIEW_OVERHEAD = 512


class OperationViews:
    def __init__(self, capacity: int = 20_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._views: StampedCache[tuple[operations_pb2.Operation, int]] = StampedCache(
            capacity, max_bytes
        )
        self.hits = 0
        self.misses = 0

    def of(self, rec: OperationRecord) -> operations_pb2.Operation:
        return self.sized(rec)[0]

    def sized(self, rec: OperationRecord) -> tuple[operations_pb2.Operation, int]:
        """The view and its serialized size (what the message limits count;
        computing it serializes the message, so it is kept with the view)."""
        found = self._views.get(rec.id, rec.version)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        op = rec.to_operation()
        size = op.ByteSize()
        self._views.put(rec.id, rec.version, (op, size), size + VIEW_OVERHEAD)
        return op, size
