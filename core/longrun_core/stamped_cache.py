"""A small LRU whose entries are valid for one stamp (a record's version, or
version and update time): a lookup with another stamp misses, so an entry is
never stale, only replaced. The SQLite store keeps converted records in one,
the server the Operation views built from them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class StampedCache(Generic[V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[Hashable, V]] = OrderedDict()

    def get(self, key: str, stamp: Hashable) -> V | None:
        """The value kept for `key` if it was put with this `stamp` (and it
        becomes the most recently used)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, stamp: Hashable, value: V) -> None:
        """Keep `value` for `key` at `stamp`; the least recently used entry
        goes once there are more than `capacity`."""
        self._entries[key] = (stamp, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
