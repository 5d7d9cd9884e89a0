"""The verified-token cache: by sha256, until exp, bounded in entries and bytes."""

from __future__ import annotations

import hashlib

import pytest

from longrun_core.auth.token_cache import ENTRY_OVERHEAD, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_until_its_expiry() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(clock=clock)
    cache.put("tok", "alice", expires=1010.0)
    assert cache.get("tok") == "alice"
    clock.now = 1009.999
    assert cache.get("tok") == "alice"
    clock.now = 1010.0
    assert cache.get("tok") is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (2, 1)


def test_an_already_expired_value_is_not_kept() -> None:
    cache: TokenCache[str] = TokenCache(clock=Clock())
    cache.put("tok", "alice", expires=999.0)
    assert len(cache) == 0


def test_tokens_are_kept_by_their_sha256_only() -> None:
    cache: TokenCache[str] = TokenCache(clock=Clock())
    cache.put("secret-token", "alice", expires=2000.0)
    keys = list(cache._entries)
    assert keys == [hashlib.sha256(b"secret-token").digest()]


def test_the_entry_cap_drops_the_oldest() -> None:
    cache: TokenCache[int] = TokenCache(max_entries=3, clock=Clock())
    for i in range(5):
        cache.put(f"t{i}", i, expires=2000.0)
    assert len(cache) == 3
    assert [cache.get(f"t{i}") for i in range(5)] == [None, None, 2, 3, 4]


def test_the_byte_cap_holds() -> None:
    cache: TokenCache[int] = TokenCache(max_bytes=3 * (ENTRY_OVERHEAD + 200), clock=Clock())
    for i in range(10):
        cache.put(f"t{i}", i, expires=2000.0, size=100)
    assert cache.bytes <= cache.max_bytes
    assert 1 <= len(cache) < 10
    assert cache.get("t9") == 9
    cache.put("huge", -1, expires=2000.0, size=10 * cache.max_bytes)
    assert cache.get("huge") is None


def test_zero_entries_disables_it() -> None:
    cache: TokenCache[int] = TokenCache(max_entries=0, clock=Clock())
    cache.put("t", 1, expires=2000.0)
    assert cache.get("t") is None


def test_purge_drops_only_expired_entries() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(clock=clock)
    cache.put("a", 1, expires=1005.0)
    cache.put("b", 2, expires=1050.0)
    clock.now = 1010.0
    assert cache.purge_expired() == 1
    assert cache.get("b") == 2


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenCache(max_entries=-1)
