"""Verified ID tokens by sha256(token), each kept until its `exp`: a repeat
call with the same token costs a hash and a dict lookup instead of a
signature check. Bounded in entries and bytes (oldest dropped first); the
clock is injectable."""

from __future__ import annotations

import collections
import hashlib
import sys
import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Bytes an entry costs besides its value (key digest, tuple, dict slot).
ENTRY_OVERHEAD = 200


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenCache(Generic[V]):
    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("token cache bounds must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        #: digest -> (expires at (clock seconds), value, bytes)
        self._entries: collections.OrderedDict[bytes, tuple[float, V, int]] = (
            collections.OrderedDict()
        )
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> V | None:
        digest = token_digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        expires, value, _ = entry
        if self._clock() >= expires:
            self._drop(digest)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, token: str, value: V, expires: float, size: int = 0) -> None:
        """Keep `value` for `token` until `expires` (clock seconds)."""
        if self.max_entries == 0 or self._clock() >= expires:
            return
        digest = token_digest(token)
        cost = ENTRY_OVERHEAD + size + sys.getsizeof(digest)
        if cost > self.max_bytes:
            return
        if digest in self._entries:
            self._drop(digest)
        self._entries[digest] = (expires, value, cost)
        self.bytes += cost
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self.bytes -= entry[2]

    def purge_expired(self) -> int:
        """Drop every expired entry; returns how many."""
        now = self._clock()
        stale = [d for d, (expires, _, _) in self._entries.items() if now >= expires]
        for digest in stale:
            self._drop(digest)
        return len(stale)
