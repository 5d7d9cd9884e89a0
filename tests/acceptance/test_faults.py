"""Faults against real processes: killed workers, a server killed between
storing and publishing, a task that kills its worker every time."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.harness import Service, backend_env, wait_for

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"
FAULT_TASKS = "longrun_worker.builtin_tasks tests.support.fault_tasks"


@pytest.fixture
def faulty(backend: str, tmp_path: Path) -> Iterator[Service]:
    """A service that knows the fault tasks; the test starts the processes."""
    env = backend_env(backend, tmp_path)
    env["LONGRUN_TASK_MODULES"] = FAULT_TASKS
    env["LONGRUN_TEST_RECORD_DIR"] = str(tmp_path / "records")
    (tmp_path / "records").mkdir()
    svc = Service(tmp_path, env)
    with svc.kept():
        yield svc


def _executions(svc: Service, name: str) -> list[str]:
    path = Path(svc.env["LONGRUN_TEST_RECORD_DIR"]) / name.rsplit("/", 1)[-1]
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _state(svc: Service, name: str) -> dict[str, object]:
    op: dict[str, object] = svc.call(f"{OPS}/GetOperation", {"name": name})
    return op


def test_worker_killed_mid_task_is_finished_once_by_another(faulty: Service) -> None:
    faulty.start_server()
    first = faulty.start_worker()
    op = faulty.call(CREATE, {"task": "record", "params": {"seconds": 4}})
    name = op["name"]
    wait_for(
        lambda: _state(faulty, name)["metadata"]["state"] == "RUNNING",  # type: ignore[index]
        30,
        "attempt 1 to run",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    faulty.start_worker()
    done = faulty.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
    assert done["done"] is True, done
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["metadata"]["attempt"] == 2
    assert done["response"]["value"] == {"attempt": 2}
    assert [line.split()[0] for line in _executions(faulty, name)] == ["2"]


def test_server_killed_between_store_and_publish_still_completes(faulty: Service) -> None:
    faulty.start_server(extra_env={"LONGRUN_FAILPOINTS": "after_store=exit"})
    faulty.start_worker()
    request_id = str(uuid.uuid4())
    request = {"task": "record", "params": {"seconds": 0}, "request_id": request_id}
    result = faulty.grpcurl(CREATE, data=request)
    assert result.code != 0  # the server died before answering
    assert faulty.server is not None
    assert faulty.server.wait(timeout=30) == 86
    faulty.start_server()  # same port, no failpoint
    # The retry with the same request_id finds the stored operation ...
    op = faulty.call(CREATE, request)
    # ... which the sweeper publishes, since nobody did.
    done = faulty.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "60s"})
    assert done["done"] is True and done["metadata"]["state"] == "SUCCEEDED", done
    assert len(_executions(faulty, op["name"])) == 1
    listed = faulty.call(f"{OPS}/ListOperations", {"page_size": 100})
    assert [o["name"] for o in listed["operations"]] == [op["name"]]


def test_task_crashing_its_worker_fails_after_max_attempts(faulty: Service) -> None:
    faulty.start_server()
    faulty.start_worker("--concurrency", "1")
    crash = faulty.call(CREATE, {"task": "crash"})["name"]
    others = [
        faulty.call(CREATE, {"task": "record", "params": {"seconds": 0}})["name"] for _ in range(4)
    ]
    restarts = 0

    def settled() -> bool:
        nonlocal restarts
        for proc in list(faulty.workers):
            if proc.poll() is not None:
                faulty.workers.remove(proc)
        if not faulty.workers:
            restarts += 1
            faulty.start_worker("--concurrency", "1")
        return all(_state(faulty, n).get("done") for n in [crash, *others])

    wait_for(settled, 120, "every operation to finish")
    failed = _state(faulty, crash)
    assert failed["metadata"]["state"] == "FAILED"  # type: ignore[index]
    assert failed["metadata"]["attempt"] == 3  # type: ignore[index]
    assert "no attempts left" in failed["error"]["message"]  # type: ignore[index]
    assert restarts >= 2  # each attempt took a worker down
    for name in others:
        assert _state(faulty, name)["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    # The message of the last attempt is dead-lettered when it comes back to a
    # worker: held back until that worker has seen the lease lapse itself
    # (a full lease), or until the queue's visibility timeout, which may be
    # after the sweeper already ended the operation.
    wait_for(lambda: crash in _dead_letters(faulty), 30, "the crash's message dead-lettered")
    assert not set(others) & _dead_letters(faulty)


def _dead_letters(svc: Service) -> set[str]:
    """Operation names in the dead-letter destination, read through the queue seam."""
    code = (
        "import asyncio, sys\n"
        "from longrun_core.backends import build_backends\n"
        "from longrun_core.settings import BackendSettings\n"
        "async def main():\n"
        "    b = build_backends(BackendSettings.from_env())\n"
        "    await b.queue.start()\n"
        "    for msg, _ in await b.queue.dead_letters(1000):\n"
        "        print(msg.operation)\n"
        "    await b.queue.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    return set(out.stdout.split())


def test_sigterm_lets_short_tasks_finish(faulty: Service) -> None:
    faulty.start_server()
    worker = faulty.start_worker("--shutdown-grace", "20")
    name = faulty.call(CREATE, {"task": "record", "params": {"seconds": 1.5}})["name"]
    wait_for(
        lambda: _state(faulty, name)["metadata"]["state"] == "RUNNING",  # type: ignore[index]
        30,
        "the task to run",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    done = _state(faulty, name)
    assert done["metadata"]["state"] == "SUCCEEDED"  # type: ignore[index]
    assert done["metadata"]["attempt"] == 1  # type: ignore[index]


def test_sigterm_releases_long_tasks_to_another_worker_at_once(faulty: Service) -> None:
    faulty.start_server()
    # A long lease: without the release, a takeover would wait a minute.
    first = faulty.start_worker("--shutdown-grace", "0.5", "--lease", "60")
    name = faulty.call(CREATE, {"task": "record", "params": {"seconds": 3}})["name"]
    wait_for(
        lambda: _state(faulty, name)["metadata"]["state"] == "RUNNING",  # type: ignore[index]
        30,
        "the task to run",
    )
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    released = _state(faulty, name)
    assert released["metadata"]["state"] == "QUEUED"  # type: ignore[index]
    assert released["metadata"].get("attempt", 0) == 0  # type: ignore[attr-defined]
    faulty.start_worker()
    done = faulty.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "30s"})
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["metadata"]["attempt"] == 1  # the interrupted attempt was given back
