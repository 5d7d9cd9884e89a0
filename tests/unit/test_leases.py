"""LeaseObserver: how long this process has seen a record unchanged, on its
own monotonic clock."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

from longrun_core.leases import LeaseObserver
from tests.contract.records import make_record
from tests.support.clock import FakeClock


def test_a_record_seen_at_one_version_grows_silent_on_the_observers_clock() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic)
    rec = make_record(version=4)

    first = observer.sight(rec)
    clock.advance(2.5)
    later = observer.sight(rec)

    assert (first.version, first.silent_for) == (4, timedelta(0))
    assert (later.version, later.silent_for) == (4, timedelta(seconds=2.5))


def test_a_new_version_starts_the_count_again() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic)
    rec = make_record(version=4)
    observer.sight(rec)
    clock.advance(9)

    renewed = observer.sight(replace(rec, version=5))
    clock.advance(1)

    assert renewed.silent_for == timedelta(0)
    assert observer.sight(replace(rec, version=5)).silent_for == timedelta(seconds=1)


def test_the_wall_clock_does_not_count() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic)
    rec = make_record(version=1)
    observer.sight(rec)
    skewed = replace(rec, lease_expire_time=rec.create_time - timedelta(hours=1))

    assert observer.sight(skewed).silent_for == timedelta(0)


def test_forget_and_keep_only_drop_sightings() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic)
    a, b, c = make_record(), make_record(), make_record()
    for rec in (a, b, c):
        observer.sight(rec)
    clock.advance(5)

    observer.forget(a.id)
    observer.keep_only([b.id])

    assert len(observer) == 1
    assert observer.sight(a).silent_for == timedelta(0)
    assert observer.sight(b).silent_for == timedelta(seconds=5)
    assert observer.sight(c).silent_for == timedelta(0)


def test_the_oldest_sighting_is_dropped_past_the_capacity() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic, capacity=2)
    a, b, c = make_record(), make_record(), make_record()
    observer.sight(a)
    observer.sight(b)
    clock.advance(3)
    observer.sight(a)  # a is now the most recently seen
    observer.sight(c)  # evicts b

    assert len(observer) == 2
    assert observer.sight(a).silent_for == timedelta(seconds=3)
    assert observer.sight(b).silent_for == timedelta(0)


def test_sightings_from_many_threads_are_consistent() -> None:
    clock = FakeClock()
    observer = LeaseObserver(clock.monotonic, capacity=50)
    records = [make_record() for _ in range(200)]

    def sight_all() -> None:
        for rec in records:
            observer.sight(rec)

    threads = [threading.Thread(target=sight_all) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(observer) == 50
