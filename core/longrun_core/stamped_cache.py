"""A small LRU whose entries are valid for one stamp (a record's version, or
version and update time): a lookup with another stamp misses, so an entry is
never stale, only replaced. The SQLite store keeps converted records in one,
the server the Operation views built from them.

It is bounded twice: by `capacity` entries and by `max_bytes`, the sum of
the sizes its callers give with each value (an operation of a few hundred
bytes and one holding a 1 MiB result are not the same entry). A value larger
than `max_bytes / 8` is not kept at all: one big operation read once must
not push out hundreds of small ones that are read all the time."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")

#: Default byte bound of one cache.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: A value larger than this share of `max_bytes` is not cached.
LARGEST_SHARE = 8


class _Entry(NamedTuple, Generic[V]):
    stamp: Hashable
    value: V
    size: int


class StampedCache(Generic[V]):
    def __init__(self, capacity: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError("a cache needs room for at least one entry and one byte")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()

    def get(self, key: str, stamp: Hashable) -> V | None:
        """The value kept for `key` if it was put with this `stamp` (and it
        becomes the most recently used)."""
        entry = self._entries.get(key)
        if entry is None or entry.stamp != stamp:
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, stamp: Hashable, value: V, size: int = 0) -> None:
        """Keep `value` (about `size` bytes) for `key` at `stamp`; the least
        recently used entries go while there are more than `capacity` or they
        hold more than `max_bytes`. A value too big to cache drops what was
        kept for `key` (it is stale now) and is not kept."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if size > self.max_bytes // LARGEST_SHARE:
            return
        self._entries[key] = _Entry(stamp, value, size)
        self.bytes += size
        while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
