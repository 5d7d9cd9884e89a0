"""Global concurrency limits on real processes (a server and 4 workers of 4
slots each), on the embedded backend and on the emulators: tasks stamp
their own start and end, and the highest concurrency those stamps show is
exactly the limit, never one more, also when a worker is killed mid-run
(its attempts end at the kill; their slots come back when their leases
are found lost and the jobs run again elsewhere)."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from longrun_client import Client, JobOptions
from longrun_client.cli import run
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.test_clients import BACKENDS, require_backend

WORKERS = 4
SLOTS = 4


@dataclass(frozen=True)
class Attempt:
    op_id: str
    attempt: int
    pid: int
    start: float
    end: float | None


def read_attempts(stamps: Path) -> list[Attempt]:
    found = []
    for path in stamps.glob("*.stamps"):
        op_id, attempt = path.stem.rsplit("-", 1)
        start = end = None
        pid = 0
        for line in path.read_text().splitlines():
            kind, at, who = line.split()
            pid = int(who)
            if kind == "start":
                start = float(at)
            else:
                end = float(at)
        assert start is not None, path
        found.append(Attempt(op_id, int(attempt), pid, start, end))
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = running = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    require_backend(request.param)
    env = backend_env(request.param, tmp_path)
    env["LONGRUN_TASK_MODULES"] = "tests.acceptance.stamped_tasks"
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        for _ in range(WORKERS):
            svc.start_worker("--concurrency", str(SLOTS), "--limit-retry", "0.5")
        yield svc


def create_queue(svc: Service, project: str, queue: str, **limits: int) -> None:
    svc.call(
        "longrun.v1.Queues/CreateQueue",
        {"parent": f"projects/{project}", "queueId": queue, "queue": {"rateLimits": limits}},
    )
    time.sleep(1.0)  # every worker's view (refreshed each 0.5 s) has the limit


def submit_all(
    svc: Service, project: str, queue: str, stamps: Path, keys: list[str | None]
) -> dict[str, str | None]:
    """Submit one job per entry of `keys` (its concurrency key); op id -> key."""
    rng = random.Random(7)
    jobs: dict[str, str | None] = {}
    with Client(svc.target, project=project) as client:
        for key in keys:
            # Due a little later: every worker has read the queue's limit by then
            # (it reads the queues every 0.5 s), even on a loaded machine.
            future = client.submit(
                "stamped",
                {"ms": rng.randint(50, 200), "dir": str(stamps)},
                options=JobOptions(queue=queue, concurrency_key=key, delay=timedelta(seconds=2)),
            )
            jobs[future.name.rsplit("/", 1)[-1]] = key
    return jobs


def all_succeeded(svc: Service, project: str, jobs: dict[str, str | None], timeout: float) -> None:
    with Client(svc.target, project=project) as client:
        for op_id in jobs:
            op = client.wait(f"projects/{project}/operations/{op_id}", timeout=timeout)
            assert op.done and not op.HasField("error"), op


def test_max_concurrent_dispatches_holds_across_workers_and_a_killed_worker(
    service: Service, tmp_path: Path
) -> None:
    project, limit = f"c-{uuid.uuid4().hex[:8]}", 3
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    create_queue(service, project, "limited", maxConcurrentDispatches=limit)
    jobs = submit_all(service, project, "limited", stamps, [None] * 120)

    victim = service.workers[0]

    def victim_mid_run() -> bool:
        return any(a.pid == victim.pid and a.end is None for a in read_attempts(stamps))

    wait_for(victim_mid_run, 60, "the first worker to be running an attempt")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.time()
    all_succeeded(service, project, jobs, timeout=180)

    attempts = read_attempts(stamps)
    cut = [a for a in attempts if a.end is None]
    assert cut, "the kill cut no attempt short"
    assert all(a.pid == victim.pid for a in cut)
    intervals = [(a.start, a.end if a.end is not None else killed_at) for a in attempts]
    assert max_overlap(intervals) == limit
    # Every job ran to the end once; the cut ones again, on another worker.
    ended = {a.op_id for a in attempts if a.end is not None}
    assert ended == set(jobs)
    for a in cut:
        assert any(b.op_id == a.op_id and b.attempt > a.attempt for b in attempts)


def test_max_concurrent_per_key_holds_for_every_key(service: Service, tmp_path: Path) -> None:
    project, per_key = f"k-{uuid.uuid4().hex[:8]}", 2
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    # Through the CLI this time (the other test uses grpcurl).
    args = ["--target", service.target, "queues", "create", "keyed", "--project", project]
    created = run([*args, "--max-per-key", str(per_key)])
    assert created == 0
    time.sleep(1.0)  # every worker's view (refreshed each 0.5 s) has the limit
    keys: list[str | None] = [f"customer-{i % 5}" for i in range(100)]
    jobs = submit_all(service, project, "keyed", stamps, keys)
    all_succeeded(service, project, jobs, timeout=180)

    attempts = read_attempts(stamps)
    assert {a.op_id for a in attempts} == set(jobs)
    by_key: dict[str, list[tuple[float, float]]] = {}
    for a in attempts:
        assert a.end is not None
        key = jobs[a.op_id]
        assert key is not None
        by_key.setdefault(key, []).append((a.start, a.end))
    overlaps = {key: max_overlap(spans) for key, spans in by_key.items()}
    assert set(overlaps) == {f"customer-{i}" for i in range(5)}
    # Never more than the limit for any key, and the limit is reached.
    assert max(overlaps.values()) == per_key, overlaps
    # Keys are limited apart, not together: more than one key ran at once.
    assert max_overlap([s for spans in by_key.values() for s in spans]) > per_key
