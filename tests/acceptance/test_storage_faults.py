"""Storage faults on the embedded backend are outages, not crashes (issue 11,
findings 1, 2 and 10): a full disk, a read-only database, the database file
deleted under running processes, and a server and worker started together on
a fresh database. Real processes; the faults need root (a tmpfs, chattr)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.outage import (
    NOT_SERVING,
    SERVING,
    JobStream,
    Seen,
    alive,
    executions,
    get_operation,
    rich_error,
    states,
    wait_health,
    wait_workers_started,
)
from tests.support.disk import (
    chattr,
    fill,
    require_immutable_blocks_writes,
    small_tmpfs,
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
            svc.start_server(
                "--http-address", "127.0.0.1:0", "--http-port-file", str(tmp_path / "http")
            )
            svc.start_worker("--concurrency", "4")
            svc.start_worker("--concurrency", "4")
            wait_workers_started(svc)
            yield svc


def _http_create(svc: Service) -> tuple[int, dict[str, str], dict[str, Any]]:
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


def _ride_out(
    svc: Service,
    begin: Callable[[], Callable[[], None]],
    refused: grpc.StatusCode,
    reasons: set[str],
) -> JobStream:
    """Jobs flow; `begin()` starts a storage fault and returns what ends it.
    While it lasts (longer than the workers' 3 s leases): health NOT_SERVING,
    creates refused with `refused` (an ErrorInfo reason in `reasons`, a
    RetryInfo), no process exits. After: SERVING, creates go through, and
    every accepted job completes, each run once."""
    wait_health(svc, SERVING)
    with JobStream(svc.target, params={"seconds": 0.3}) as stream:
        records = Path(svc.env["LONGRUN_TEST_RECORD_DIR"])
        wait_for(lambda: len(executions(records)) >= 10, 60, "jobs to run")
        end = begin()
        since = time.monotonic()
        wait_health(svc, NOT_SERVING)
        wait_for(lambda: stream.codes()[refused.name] >= 3, 60, f"creates refused {refused.name}")
        wait_for(lambda: "waits for the store" in svc.logs(), 60, "a task's outcome to wait")
        # The fault outlasts the workers' leases (3 s), so their renewals fail
        # too, but not the queue leases the workers last extended (9 s).
        wait_for(lambda: time.monotonic() - since > 6, 30, "an outage longer than a lease")
        assert not alive(svc), alive(svc)
        end()
        wait_health(svc, SERVING)
        accepted = len(stream.created)
        wait_for(lambda: len(stream.created) >= accepted + 10, 60, "creates to go through again")
    # Clients saw the retryable code with its reason and a delay, never INTERNAL.
    assert {e.code for e in stream.errors} <= {refused, grpc.StatusCode.UNAVAILABLE}, stream.codes()
    assert {e.reason for e in stream.errors if e.code is refused} <= reasons
    assert all(e.retry_delay is not None and e.retry_delay > 0 for e in stream.errors)
    # Nothing died, and every accepted job completes, none QUEUED or RUNNING for good.
    wait_for(lambda: _all_done(svc, stream.created), 120, "every accepted job to finish")
    assert not alive(svc), alive(svc)
    assert states(svc.target, stream.created) == {"SUCCEEDED": len(stream.created)}
    ran = executions(Path(svc.env["LONGRUN_TEST_RECORD_DIR"]))
    assert set(ran) == {n.rsplit("/", 1)[-1] for n in stream.created}
    twice = sum(1 for count in ran.values() if count > 1)
    print(f"{len(stream.created)} jobs, refused {dict(stream.codes())}, ran twice: {twice}")
    # Tasks that finished during the outage kept their outcome until it could be
    # written, and the sweeper left their expired leases to them meanwhile.
    assert twice == 0, {k: v for k, v in ran.items() if v > 1}
    return stream


@pytest.mark.timeout(300)
def test_full_disk_is_an_outage_and_every_job_completes_after(on_tmpfs: Service) -> None:
    svc = on_tmpfs
    disk = Path(svc.env["LONGRUN_SQLITE_PATH"]).parent
    seen_http: list[tuple[int, dict[str, str], dict[str, Any]]] = []

    def begin() -> Callable[[], None]:
        filler = fill(disk)
        wait_health(svc, NOT_SERVING)
        seen_http.append(_http_create(svc))
        return filler.unlink

    _ride_out(svc, begin, grpc.StatusCode.RESOURCE_EXHAUSTED, {"STORAGE_FULL"})
    # HTTP: 429 (RESOURCE_EXHAUSTED's mapping) with Retry-After and the same details.
    [(status, headers, body)] = seen_http
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    error = body["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    kinds = {d["@type"].rsplit("/", 1)[-1]: d for d in error["details"]}
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "STORAGE_FULL"
    assert float(kinds["google.rpc.RetryInfo"]["retryDelay"].rstrip("s")) > 0


@pytest.fixture
def on_disk(tmp_path: Path) -> Iterator[Service]:
    """Server + 2 workers on a database in tmp_path."""
    svc = Service(tmp_path, _env(tmp_path, tmp_path / "db" / "longrun.db"))
    with svc.kept():
        svc.start_server()
        svc.start_worker("--concurrency", "4")
        svc.start_worker("--concurrency", "4")
        wait_workers_started(svc)
        yield svc


@pytest.mark.timeout(300)
def test_read_only_database_is_an_outage_and_every_job_completes_after(on_disk: Service) -> None:
    svc = on_disk
    db = Path(svc.env["LONGRUN_SQLITE_PATH"])
    require_immutable_blocks_writes(db.parent)
    # The database and its WAL, not the -shm: SQLite maps that file, and a
    # write to a mapped page of an immutable file is a SIGBUS that no process
    # survives (docs/storage.md).
    files = (db, db.with_name(db.name + "-wal"))

    def begin() -> Callable[[], None]:
        chattr("+i", *files)
        return lambda: chattr("-i", *files)

    try:
        _ride_out(
            svc,
            begin,
            grpc.StatusCode.UNAVAILABLE,
            {"STORE_IO_ERROR", "STORE_READ_ONLY", "STORE_UNAVAILABLE"},
        )
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False, capture_output=True)


def _ids_in(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM operations")}


def _get_error(svc: Service, name: str) -> Seen | None:
    try:
        get_operation(svc.target, name)
    except grpc.RpcError as exc:
        return rich_error(exc)
    return None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_database_lost_under_running_processes_is_refused_loudly(
    on_disk: Service, how: str
) -> None:
    svc = on_disk
    db = Path(svc.env["LONGRUN_SQLITE_PATH"])
    reason = {"deleted": "STORE_FILE_DELETED", "replaced": "STORE_FILE_REPLACED"}[how]
    records = Path(svc.env["LONGRUN_TEST_RECORD_DIR"])
    with JobStream(svc.target, params={"seconds": 0.3}) as stream:
        wait_for(lambda: len(executions(records)) >= 10, 60, "jobs to run")
        inode = db.stat().st_ino
        if how == "deleted":
            db.unlink()
        else:  # another (empty) database moved over it, as a careless restore would
            other = db.with_name("other.db")
            sqlite3.connect(other).close()
            other.rename(db)
        wait_health(svc, NOT_SERVING, timeout=30)
        wait_for(lambda: stream.codes()["UNAVAILABLE"] >= 3, 30, "creates to be refused")
    # Every process refuses, loudly, and none died.
    what = {"deleted": "deleted", "replaced": "replaced by another file"}[how]
    wait_for(
        lambda: svc.logs().count(f"was {what} while this process (pid") >= 3,
        30,
        "an ERROR log from each process",
    )
    assert not alive(svc), alive(svc)
    assert {e.code for e in stream.errors} == {grpc.StatusCode.UNAVAILABLE}, stream.codes()
    assert {e.reason for e in stream.errors} == {reason}
    # An operation that exists is never reported NOT_FOUND: UNAVAILABLE, retryable.
    seen = _get_error(svc, stream.created[0])
    assert seen is not None and seen.code is grpc.StatusCode.UNAVAILABLE, seen
    assert seen.reason == reason and seen.retry_delay
    # Nothing was written to a new file in its place.
    if how == "deleted":
        assert not db.exists()
    else:
        assert db.stat().st_size == 0
    # What the processes held open was saved; every accepted job is in it.
    rescued = db.with_name(f"{db.name}.rescued-{inode}")
    wait_for(rescued.exists, 30, "the rescued copy")
    accepted = {n.rsplit("/", 1)[-1] for n in stream.created}
    # A restarted worker refuses to start instead of creating an empty database.
    if how == "deleted":
        late = svc.start_worker()
        assert late.wait(timeout=60) == 1
        assert not db.exists()
        assert "says one was created there" in (svc.workdir / "worker-2.log").read_text()
    # Recovery as the log says: stop everything, put the copy back, start again.
    svc.stop()
    ran_before = executions(records)
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db):
        leftover.unlink(missing_ok=True)
    assert accepted <= _ids_in(rescued)
    rescued.rename(db)
    svc.procs.clear()
    svc.start_server()
    svc.start_worker("--concurrency", "4")
    wait_for(lambda: _all_done(svc, stream.created), 120, "every accepted job to finish")
    assert states(svc.target, stream.created) == {"SUCCEEDED": len(stream.created)}
    # Every accepted job ran. A create that raced the loss may have been stored
    # although its caller was told UNAVAILABLE (the outcome of a call that
    # fails UNAVAILABLE is unknown; a retry with a request_id finds it): those
    # ran too. Jobs whose outcome could not be written before the stop run again.
    ran = executions(records)
    assert accepted <= set(ran) <= _ids_in(db)
    twice = sum(1 for count in ran.values() if count > 1)
    print(
        f"{how}: {len(accepted)} jobs accepted, {len(set(ran) - accepted)} more stored, "
        f"{len(ran_before)} ran before the loss; ran twice: {twice}"
    )


def test_fresh_start_of_server_and_worker_together_never_dies(tmp_path: Path) -> None:
    """Finding 10: both open a database that does not exist yet at the same
    moment (creating it, switching it to WAL); neither may die of
    `database is locked`. Five rounds, each on a new database."""
    for round_ in range(5):
        db = tmp_path / f"round-{round_}" / "longrun.db"
        svc = Service(tmp_path, _env(tmp_path, db))
        with svc.kept():
            worker = svc.start_worker()
            second = svc.start_worker()
            svc.start_server()
            op = svc.call("longrun.v1.Jobs/CreateJob", {"task": "noop", "params": {"r": round_}})
            done = svc.call(
                "google.longrunning.Operations/WaitOperation",
                {"name": op["name"], "timeout": "60s"},
            )
            assert done["response"]["value"] == {"r": round_}
            assert worker.poll() is None and second.poll() is None, svc.logs()
        assert "database is locked" not in svc.logs()
