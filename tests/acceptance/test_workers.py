"""Workers as separate processes: sharing work, and work that waits for a worker."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.harness import Service, backend_env

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"
FINISHED = re.compile(r"finished (projects/[^/\s]+/operations/\S+) attempt \d+: SUCCEEDED")


@pytest.fixture
def bare(backend: str, tmp_path: Path) -> Iterator[Service]:
    """A server with no worker yet."""
    svc = Service(tmp_path, backend_env(backend, tmp_path))
    with svc.kept():
        svc.start_server()
        yield svc


def test_job_created_while_no_worker_runs_completes_once_one_starts(bare: Service) -> None:
    op = bare.call(CREATE, {"task": "noop", "params": {"late": True}})
    early = bare.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "1s"})
    assert not early.get("done", False)
    assert early["metadata"]["state"] == "QUEUED"
    bare.start_worker()
    done = bare.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "60s"})
    assert done["done"] is True
    assert done["response"]["value"] == {"late": True}


def test_two_worker_processes_share_the_work(bare: Service) -> None:
    bare.start_worker("--concurrency", "2")
    bare.start_worker("--concurrency", "2")
    names = [
        bare.call(CREATE, {"task": "sleep", "params": {"worktime": 0.5}})["name"] for _ in range(8)
    ]
    for name in names:
        done = bare.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
        assert done["metadata"]["state"] == "SUCCEEDED", done
    per_worker = [
        set(FINISHED.findall(log.read_text())) for log in sorted(bare.workdir.glob("worker-*.log"))
    ]
    assert len(per_worker) == 2
    assert all(per_worker), f"a worker ran nothing: {[len(p) for p in per_worker]}"
    assert per_worker[0] | per_worker[1] == set(names)
    assert not per_worker[0] & per_worker[1]
