"""A worker whose clock is a minute ahead (issue 11, finding 5), on both
backends: leases are judged by observed heartbeats on each observer's own
monotonic clock, so its clock makes nobody's live job look lost, and nothing
runs twice. The skew is injected with LONGRUN_CLOCK_SKEW (a test hook that
shifts the process's Clock; see longrun_core.clock) and is logged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.faulty import OPS, create, faulty_service, notes
from tests.acceptance.harness import Service

FINISHED = re.compile(r"finished (projects/[^/\s]+/operations/\S+) attempt \d+: (\w+)")


@pytest.fixture
def faulty(backend: str, tmp_path: Path) -> Iterator[Service]:
    with faulty_service(backend, tmp_path) as svc:
        yield svc


def test_a_worker_a_minute_ahead_causes_no_lost_and_no_second_run(faulty: Service) -> None:
    faulty.start_server()
    faulty.start_worker()
    faulty.start_worker(extra_env={"LONGRUN_CLOCK_SKEW": "60"})
    # Longer than the 3 s lease: every lease is renewed while the other worker
    # (one of them 60 s ahead) could judge it by its own clock.
    names = [create(faulty, "record_once", seconds=4) for _ in range(12)]

    for name in names:
        done = faulty.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "120s"})
        assert done.get("done") is True, done
        assert done["metadata"]["state"] == "SUCCEEDED", done
        assert done["metadata"]["attempt"] == 1
    ran = {name: len(notes(faulty, name)) for name in names}
    assert ran == dict.fromkeys(names, 1)  # each ran exactly once

    normal, skewed = (
        (faulty.workdir / f"worker-{i}.log").read_text(errors="replace") for i in range(2)
    )
    finished_by = [dict(FINISHED.findall(log)) for log in (normal, skewed)]
    assert set(finished_by[0]) | set(finished_by[1]) == set(names)
    assert not set(finished_by[0]) & set(finished_by[1])
    assert finished_by[1], "the skewed worker ran nothing: the test proves nothing"
    assert re.search(r"clock skew: this worker's clock is \+(59|60|61)\.\ds off", skewed)
    assert "clock skew" not in normal
    server_log = (faulty.workdir / "server.log").read_text(errors="replace")
    assert "no heartbeat" not in server_log  # the sweeper took no lease back
