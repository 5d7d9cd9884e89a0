"""Tasks that misbehave, against real server and worker processes: none of
them takes a worker down, runs more often than its max_attempts, runs twice
at once, outlives its attempt, or holds up a shutdown (issue 11, findings 3
and 4). Sync fault tasks run in task processes (the default); async ones on
the worker's task loop."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from longrun_worker.runtime import WorkerSettings
from tests.acceptance.faulty import (
    OPS,
    alive,
    create,
    dead_letters,
    descendants,
    faulty_service,
    notes,
    operation,
    state,
)
from tests.acceptance.harness import Service, wait_for

#: What --shutdown-grace 1 --kill-grace 1 bound a worker's exit by after SIGTERM.
GRACE = 1.0
SHUTDOWN_LIMIT = GRACE + WorkerSettings(shutdown_grace=GRACE, kill_grace=1.0).shutdown_bound


@pytest.fixture
def faulty(backend: str, tmp_path: Path) -> Iterator[Service]:
    with faulty_service(backend, tmp_path) as svc:
        yield svc


def _finished(svc: Service, name: str, timeout: float = 90) -> dict[str, object]:
    done: dict[str, object] = svc.call(
        f"{OPS}/WaitOperation", {"name": name, "timeout": f"{timeout:g}s"}
    )
    assert done.get("done") is True, done
    return done


def test_a_task_raising_system_exit_never_exceeds_max_attempts_and_the_worker_lives(
    faulty: Service,
) -> None:
    faulty.start_server()
    worker = faulty.start_worker("--concurrency", "1")
    name = create(faulty, "exits")  # async, max_attempts=2: sys.exit(3) every time

    failed = _finished(faulty, name)

    assert failed["metadata"]["state"] == "FAILED"  # type: ignore[index]
    assert failed["metadata"]["attempt"] == 2  # type: ignore[index]
    assert failed["error"]["message"] == "SystemExit: 3"  # type: ignore[index]
    assert [line.split()[0] for line in notes(faulty, name)] == ["1", "2"]
    assert len({line.split()[1] for line in notes(faulty, name)}) == 1  # one worker did both
    assert worker.poll() is None
    assert name in dead_letters(faulty)
    # ... and it goes on working.
    after = create(faulty, "record")
    assert _finished(faulty, after)["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    assert worker.poll() is None


@pytest.mark.parametrize(
    ("task", "how"),
    [("hard_exit", "exited with code 3"), ("segfault", "was killed by SIGSEGV")],
)
def test_a_crashing_task_costs_one_attempt_per_crash_and_the_worker_lives(
    faulty: Service, task: str, how: str
) -> None:
    faulty.start_server()
    worker = faulty.start_worker("--concurrency", "1")
    name = create(faulty, task)  # sync: runs in a task process; max_attempts=2

    failed = _finished(faulty, name)

    assert failed["metadata"]["state"] == "FAILED"  # type: ignore[index]
    assert failed["metadata"]["attempt"] == 2  # type: ignore[index]
    message = failed["error"]["message"]  # type: ignore[index]
    assert message == f"TaskCrashed: the task process {how} without an outcome"
    lines = notes(faulty, name)
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert worker.pid not in {int(line.split()[1]) for line in lines}  # not in the worker
    assert worker.poll() is None
    after = create(faulty, "record")
    assert _finished(faulty, after)["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]


def test_sigterm_ends_a_worker_whose_task_swallows_cancellation_within_the_bound(
    faulty: Service,
) -> None:
    faulty.start_server()
    worker = faulty.start_worker("--shutdown-grace", str(GRACE), "--kill-grace", "1")
    name = create(faulty, "swallows_cancel")
    wait_for(lambda: bool(notes(faulty, name)), 60, "the task to start")

    asked = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=SHUTDOWN_LIMIT + 5) == 0
    took = time.monotonic() - asked

    assert took < SHUTDOWN_LIMIT
    released = operation(faulty, name)["metadata"]
    # Given back at once (the interrupted attempt does not count) for another worker.
    assert (released["state"], released.get("attempt", 0)) == ("QUEUED", 0)


def test_sync_tasks_ignoring_cancel_do_not_starve_new_jobs(faulty: Service) -> None:
    faulty.start_server()
    worker = faulty.start_worker("--concurrency", "3", "--kill-grace", "1")
    stubborn = [create(faulty, "ignores_cancel") for _ in range(8)]
    wait_for(lambda: sum(bool(notes(faulty, n)) for n in stubborn) == 3, 60, "3 to run")
    pids = [int(notes(faulty, n)[0].split()[1]) for n in stubborn if notes(faulty, n)]

    for name in stubborn:
        faulty.call(f"{OPS}/CancelOperation", {"name": name})
    for name in stubborn:
        assert _finished(faulty, name, timeout=30)["metadata"]["state"] == "CANCELLED"  # type: ignore[index]

    started = time.monotonic()
    fresh = [create(faulty, "record_sync") for _ in range(6)]  # sync, like the stubborn ones
    for name in fresh:
        assert _finished(faulty, name, timeout=30)["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    assert time.monotonic() - started < 15
    assert not any(alive(pid) for pid in pids)  # each stubborn process was killed
    assert worker.poll() is None


def test_a_task_blocking_its_event_loop_past_its_lease_runs_once(faulty: Service) -> None:
    """15 s without yielding, on a 3 s lease, with a second worker and the
    sweeper both ready to take over a lapsed lease."""
    faulty.start_server()
    faulty.start_worker()
    faulty.start_worker()
    name = create(faulty, "blocks_loop", seconds=15)

    done = _finished(faulty, name, timeout=120)

    assert done["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    assert done["metadata"]["attempt"] == 1  # type: ignore[index]
    assert len(notes(faulty, name)) == 1
    logs = "".join(p.read_text() for p in faulty.workdir.glob("worker-*.log"))
    assert "lease_lost" not in logs and "stopped:" not in logs


def test_a_forking_task_leaves_no_zombie_and_no_process(faulty: Service) -> None:
    faulty.start_server()
    worker = faulty.start_worker()
    name = create(faulty, "forks")

    done = _finished(faulty, name)

    assert done["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    exited, lingering = (int(pid) for pid in notes(faulty, name)[0].split())
    wait_for(lambda: not alive(exited) and not alive(lingering), 10, "the task's children gone")
    below = descendants(worker.pid)
    assert [pid for pid, letter in below.items() if letter == "Z"] == [], below
    assert state(faulty, name) == "SUCCEEDED"
