"""A queue's retry_config on real processes (a server and 2 workers), on the
embedded backend and on the emulators: a job that always fails transiently
makes exactly retry_config.max_attempts attempts (not its task's 2), and
the starts its attempts stamp themselves are spaced by the queue's backoff,
doubling from min_backoff and capped at max_backoff (not the task's 30 s),
never sooner."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from longrun_client import Client, JobOptions
from tests.acceptance.harness import Service, backend_env
from tests.acceptance.test_clients import BACKENDS, require_backend

#: Backoffs after attempts 1..4: 1 s doubling, capped at 3 s.
MIN_BACKOFF, MAX_BACKOFF, ATTEMPTS = 1.0, 3.0, 5
EXPECTED = [1.0, 2.0, 3.0, 3.0]
#: How late an attempt may start past its backoff: the failed attempt's own
#: run and outcome write, and the publish when it falls due (the sweeper's
#: on-time timer; on the emulators, a Pub/Sub delivery).
SLACK = {"embedded": 0.6, "google": 1.5}


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Service]]:
    require_backend(request.param)
    env = backend_env(request.param, tmp_path)
    env["LONGRUN_TASK_MODULES"] = "tests.acceptance.stamped_tasks"
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        for _ in range(2):
            svc.start_worker()
        yield request.param, svc


def test_retry_config_backoff_doubles_to_its_cap_and_bounds_the_attempts(
    service: tuple[str, Service], tmp_path: Path
) -> None:
    backend, svc = service
    project = f"rc-{uuid.uuid4().hex[:8]}"
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    svc.call(
        "longrun.v1.Queues/CreateQueue",
        {
            "parent": f"projects/{project}",
            "queueId": "retrying",
            "queue": {
                "retryConfig": {
                    "maxAttempts": ATTEMPTS,
                    "minBackoff": f"{MIN_BACKOFF}s",
                    "maxBackoff": f"{MAX_BACKOFF}s",
                    "maxDoublings": 4,
                }
            },
        },
    )
    with Client(svc.target, project=project) as client:
        # Due a little later: every worker has read the queue's config by then.
        future = client.submit(
            "stamped_failing",
            {"dir": str(stamps)},
            options=JobOptions(queue="retrying", delay=timedelta(seconds=2)),
        )
        op = client.wait(future.name, timeout=90)
    assert op.done and op.HasField("error")
    op_id = future.name.rsplit("/", 1)[-1]
    starts = []
    for attempt in range(1, ATTEMPTS + 1):
        path = stamps / f"{op_id}-{attempt}.stamps"
        assert path.exists(), f"attempt {attempt} did not run"
        starts.append(float(path.read_text().split()[1]))
    assert not (stamps / f"{op_id}-{ATTEMPTS + 1}.stamps").exists()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, backoff in zip(gaps, EXPECTED, strict=True):
        assert backoff <= gap <= backoff + SLACK[backend], (gaps, EXPECTED)
