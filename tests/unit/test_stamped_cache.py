"""StampedCache: bounded by entries and by the bytes its callers report."""

from __future__ import annotations

import pytest

from longrun_core.stamped_cache import LARGEST_SHARE, StampedCache


def test_a_value_is_found_only_at_its_stamp() -> None:
    cache: StampedCache[str] = StampedCache(10, max_bytes=1000)
    cache.put("a", 1, "one", size=10)
    assert cache.get("a", 1) == "one"
    assert cache.get("a", 2) is None
    assert cache.get("b", 1) is None


def test_the_least_recently_used_entries_go_once_the_bytes_pass_the_bound() -> None:
    cache: StampedCache[str] = StampedCache(100, max_bytes=800)
    for key in "abcd":
        cache.put(key, 1, key, size=100)  # 400 bytes
    assert cache.get("a", 1) == "a"  # a is now the most recent
    cache.put("e", 1, "e", size=100)
    cache.put("f", 1, "f", size=100)
    cache.put("g", 1, "g", size=100)
    cache.put("h", 1, "h", size=100)
    cache.put("i", 1, "i", size=100)  # 900 > 800: the least recent (b) goes
    assert cache.bytes == 800
    assert "b" not in cache
    assert cache.get("a", 1) == "a"
    assert len(cache) == 8


def test_the_entry_bound_still_holds_for_small_values() -> None:
    cache: StampedCache[int] = StampedCache(3, max_bytes=10**9)
    for i in range(5):
        cache.put(str(i), 1, i, size=1)
    assert len(cache) == 3
    assert [str(i) in cache for i in range(5)] == [False, False, True, True, True]
    assert cache.bytes == 3


def test_replacing_an_entry_counts_only_its_new_size() -> None:
    cache: StampedCache[str] = StampedCache(10, max_bytes=1000)
    cache.put("a", 1, "old", size=100)
    cache.put("a", 2, "new", size=30)
    assert cache.bytes == 30
    assert cache.get("a", 2) == "new"
    assert cache.get("a", 1) is None


def test_a_value_too_big_to_cache_is_not_kept_and_drops_the_stale_one() -> None:
    cache: StampedCache[str] = StampedCache(10, max_bytes=800)
    cache.put("small", 1, "s", size=10)
    cache.put("big", 1, "old", size=50)
    cache.put("big", 2, "huge", size=800 // LARGEST_SHARE + 1)
    assert "big" not in cache
    assert cache.get("big", 2) is None
    assert cache.get("small", 1) == "s"  # nothing else was pushed out
    assert cache.bytes == 10


def test_one_big_value_evicts_only_as_much_as_it_needs() -> None:
    cache: StampedCache[str] = StampedCache(100, max_bytes=800)
    for key in "abcdefgh":
        cache.put(key, 1, key, size=100)
    cache.put("x", 1, "x", size=100)
    assert [k in cache for k in "abcdefghx"] == [False] + [True] * 8


@pytest.mark.parametrize(("capacity", "max_bytes"), [(0, 10), (10, 0)])
def test_a_cache_without_room_is_refused(capacity: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="at least one"):
        StampedCache(capacity, max_bytes)
