"""Storage faults on the embedded backend are outages, not crashes (issue 11,
findings 1, 2 and 10): a full disk, a read-only database, the database file
deleted under running processes, and a server and worker started together on
a fresh database. Real processes; the faults need root (a tmpfs, chattr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.outage import (
    NOT_SERVING,
    SERVING,
    JobStream,
    alive,
    executions,
    fill,
    get_operation,
    require_root,
    small_tmpfs,
    states,
    wait_health,
)

FAULT_TASKS = "longrun_worker.builtin_tasks tests.support.fault_tasks"


def _env(tmp_path: Path, db: Path) -> dict[str, str]:
    env = backend_env("embedded", tmp_path)
    env["LONGRUN_SQLITE_PATH"] = str(db)
    env["LONGRUN_TASK_MODULES"] = FAULT_TASKS
    env["LONGRUN_TEST_RECORD_DIR"] = str(tmp_path / "records")
    env["LONGRUN_HEALTH_INTERVAL"] = "0.2"
    env["LONGRUN_OUTAGE_RETRY_MAX"] = "0.5"
    (tmp_path / "records").mkdir(exist_ok=True)
    return env


@pytest.fixture
def on_tmpfs(tmp_path: Path) -> Iterator[Service]:
    """Server (with the HTTP gateway) + 2 workers whose database lives on a
    16 MiB tmpfs (more than SQLite's 4 MiB WAL needs before it checkpoints)."""
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        svc = Service(tmp_path, _env(tmp_path, disk / "longrun.db"))
        with svc.kept():
            svc.start_server("--http-address", "127.0.0.1:0", "--http-port-file", str(tmp_path / "http"))
            svc.start_worker("--concurrency", "4")
            svc.start_worker("--concurrency", "4")
            yield svc


def _http_create(svc: Service) -> tuple[int, dict[str, str], dict[str, object]]:
    port = (svc.workdir / "http").read_text()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/jobs",
        data=json.dumps({"task": "noop"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _all_done(svc: Service, names: list[str]) -> bool:
    return all(get_operation(svc.target, n).done for n in names)


@pytest.mark.timeout(300)
def test_full_disk_is_an_outage_and_every_job_completes_after(on_tmpfs: Service) -> None:
    svc = on_tmpfs
    disk = Path(svc.env["LONGRUN_SQLITE_PATH"]).parent
    wait_health(svc, SERVING)
    with JobStream(svc.target, params={"seconds": 0.3}) as stream:
        wait_for(lambda: len(stream.created) >= 20, 60, "jobs to flow")
        filler = fill(disk)
        full_since = time.monotonic()
        wait_health(svc, NOT_SERVING)
        wait_for(lambda: stream.codes()["RESOURCE_EXHAUSTED"] >= 3, 60, "creates to be refused")
        status, headers, body = _http_create(svc)
        wait_for(lambda: "waits for the store" in svc.logs(), 60, "an outcome to wait")
        # The outage outlasts the workers' leases (3 s): their renewals fail too.
        wait_for(lambda: time.monotonic() - full_since > 8, 30, "a long outage")
        assert not alive(svc), alive(svc)
        filler.unlink()
        wait_health(svc, SERVING)
        refused = len(stream.errors)
        wait_for(lambda: len(stream.created) >= 20 + 10, 60, "creates to succeed again")
    # Clients saw a retryable RESOURCE_EXHAUSTED with the reason and a delay, never INTERNAL.
    assert stream.errors, "the disk never filled up"
    assert {e.code for e in stream.errors} <= {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }, stream.codes()
    full = [e for e in stream.errors if e.code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert {e.reason for e in full} == {"STORAGE_FULL"}
    assert all(e.retry_delay is not None and e.retry_delay > 0 for e in stream.errors)
    assert len(stream.errors) >= refused
    # HTTP: 429 (RESOURCE_EXHAUSTED's mapping) with Retry-After and the same details.
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    error = body["error"]
    assert isinstance(error, dict) and error["status"] == "RESOURCE_EXHAUSTED"
    kinds = {d["@type"].rsplit("/", 1)[-1]: d for d in error["details"]}
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "STORAGE_FULL"
    assert "google.rpc.RetryInfo" in kinds
    # Nothing died, nothing was restarted, and every accepted job completes once.
    wait_for(lambda: _all_done(svc, stream.created), 120, "every accepted job to finish")
    assert not alive(svc), alive(svc)
    assert states(svc.target, stream.created) == {"SUCCEEDED": len(stream.created)}
    ran = executions(Path(svc.env["LONGRUN_TEST_RECORD_DIR"]))
    assert set(ran) == {n.rsplit("/", 1)[-1] for n in stream.created}
    print(f"full disk: {len(stream.created)} jobs, refused {stream.codes()}, "
          f"ran twice {sum(1 for c in ran.values() if c > 1)}")
