"""Bounded chaos run (`make chaos`): submit jobs while randomly killing
workers (SIGKILL) and the server at least once, then check every operation.

With faults on (the default) the run also:
- mixes poison tasks into the jobs (~8%): SystemExit, os._exit, a segfault
  (ctypes), a task that blocks its event loop past its worker's lease, and
  tasks that swallow cancellation (cancelled mid-run);
- runs one worker whose clock is a minute ahead (LONGRUN_CLOCK_SKEW);
- injects storage faults while jobs flow: on the embedded backend the
  database lives on a small loop-mounted ext4 disk that is filled up, then
  made read-only (chattr +i), each for a few seconds (root only); on the
  Google backend the Firestore emulator is paused (SIGSTOP) and resumed.

Reports, per backend: jobs, kills, faults, lost (accepted but gone or never
done), stuck (not done at the end, or RUNNING), doubled (more than one
accepted outcome write, from the workers' `finished` log lines),
over_attempted (an operation whose attempt exceeds its max_attempts), wrong
ends (a poison job not FAILED/CANCELLED, a plain job not SUCCEEDED), plus
re-executions (at-least-once: a task body that ran to its end more than once
because its worker died before the outcome was written; allowed, counted).
Exit status 1 if lost, stuck, doubled, over_attempted or wrong_end is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import Service, backend_env

RESULTS = Path(__file__).parent / "results"
FINISHED = re.compile(r"finished (projects/[^/\s]+/operations/\S+) attempt (\d+): (\w+)")

#: Poison tasks (tests/support/fault_tasks.py): task -> (params, the state it must end in).
POISON: dict[str, tuple[dict[str, Any], str]] = {
    "exits": ({}, "FAILED"),
    "hard_exit": ({}, "FAILED"),
    "segfault": ({}, "FAILED"),
    # Blocks its event loop past the lease (3 s); the lease holds. Killed
    # workers cost it attempts like any job, and it has only 3 (a FAILED end
    # must say why: checked in `check`).
    "blocks_loop": ({"seconds": 4}, "SUCCEEDED|FAILED"),
    "swallows_cancel": ({}, "CANCELLED"),
}
#: Poison tasks that run for seconds, so worker kills can use up their attempts.
LONG_POISON = frozenset({"blocks_loop", "swallows_cancel"})


@dataclass(frozen=True)
class Job:
    task: str
    params: dict[str, Any]
    expected: str  # the state it must end in ("A|B": either)


def plan_jobs(n: int, faults: bool, rng: random.Random) -> list[Job]:
    jobs = []
    for i in range(n):
        if faults and rng.random() < 0.08:
            task = rng.choice(sorted(POISON))
            params, expected = POISON[task]
            jobs.append(Job(task, dict(params), expected))
        else:
            seconds = rng.choice([0, 0, 0, 0.05, 0.2, 0.5])
            jobs.append(Job("record", {"seconds": seconds, "i": i}, "SUCCEEDED"))
    return jobs


def submit_all(svc: Service, jobs: list[Job], pace: float) -> list[str]:
    """Submit with request ids, `pace` seconds apart per submitting thread; a
    failed call (server down, storage outage) is retried with the same id."""

    def one(job: Job) -> str:
        request = jobs_pb2.CreateJobRequest(task=job.task, request_id=str(uuid.uuid4()))
        request.params.update(job.params)
        time.sleep(pace)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(svc.target) as channel:
                    op = jobs_pb2_grpc.JobsStub(channel).CreateJob(request, timeout=10)
                    return str(op.name)
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError(f"a {job.task} job could not be submitted in 180 s")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, jobs))


def kill_things(
    svc: Service, stop: threading.Event, kills: Counter[str], rng: random.Random
) -> None:
    killed_server = False
    started = time.monotonic()
    while not stop.wait(rng.uniform(0.5, 1.5)):
        if not killed_server and time.monotonic() - started > 3:
            assert svc.server is not None
            svc.server.send_signal(signal.SIGKILL)
            svc.server.wait()
            kills["server"] += 1
            svc.start_server()
            killed_server = True
            continue
        # The skewed worker (the first one) is kept: it is there to be wrong about time.
        victims = svc.workers[1:]
        if not victims:
            continue
        victim = rng.choice(victims)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        svc.workers.remove(victim)
        kills["worker"] += 1
        svc.start_worker("--concurrency", "8")


def cancel_swallowers(
    svc: Service, names: list[str], jobs: list[Job], stop: threading.Event
) -> int:
    """Cancel every `swallows_cancel` job (they never end by themselves)."""
    targets = [n for n, j in zip(names, jobs, strict=True) if j.task == "swallows_cancel"]
    done = 0
    with grpc.insecure_channel(svc.target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        for name in targets:
            for _ in range(50):
                try:
                    stub.CancelOperation(
                        operations_pb2.CancelOperationRequest(name=name), timeout=10
                    )
                    done += 1
                    break
                except grpc.RpcError:
                    if stop.wait(0.2):
                        return done
    return done


# ---- storage faults ----


def run_root(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def loop_disk(where: Path, size_mb: int = 64) -> Iterator[Path | None]:
    """A small ext4 disk (a loop-mounted image) at `where`, or None when this
    process cannot mount one (not root, no loop devices)."""
    image = where.with_suffix(".img")
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        yield None
        return
    try:
        with image.open("wb") as fh:
            fh.truncate(size_mb << 20)
        run_root("mkfs.ext4", "-q", "-F", str(image))
        run_root("mount", "-o", "loop", str(image), str(where))
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["chattr", "-R", "-i", str(where)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        size = 1 << 16
        while size >= 1:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def full_disk(db: Path) -> Callable[[], None]:
    filler = fill(db.parent)
    return filler.unlink


def read_only(db: Path) -> Callable[[], None]:
    # The database and its WAL, not the -shm (a write to a mapped page of an
    # immutable file is a SIGBUS: docs/storage.md).
    files = [str(db), str(db.with_name(db.name + "-wal"))]
    run_root("chattr", "+i", *files)
    return lambda: run_root("chattr", "-i", *files)


def emulator_group(host_port: str) -> int | None:
    """The process group of the emulator listening on `host_port`."""
    port = host_port.rsplit(":", 1)[-1]
    listing = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"pid=(\d+)", listing)
    return os.getpgid(int(found.group(1))) if found else None


def paused_firestore(pgid: int) -> Callable[[], None]:
    os.killpg(pgid, signal.SIGSTOP)
    return lambda: os.killpg(pgid, signal.SIGCONT)


def storage_faults(
    faults: list[tuple[str, Callable[[], Callable[[], None]]]],
    stop: threading.Event,
    counted: Counter[str],
    first_after: float = 4.0,
    hold: float = 3.0,
) -> None:
    """Each fault in turn: begin it, hold it, end it, then let work resume."""
    if stop.wait(first_after):
        return
    for name, begin in faults:
        end = begin()
        counted[name] += 1
        stop.wait(hold)
        end()
        if stop.wait(4.0):
            return


# ---- checking ----


def check(svc: Service, names: list[str], jobs: list[Job], deadline: float) -> dict[str, Any]:
    with grpc.insecure_channel(svc.target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        ops: dict[str, operations_pb2.Operation] = {}
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                try:
                    op = stub.GetOperation(
                        operations_pb2.GetOperationRequest(name=name), timeout=10
                    )
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        pending.discard(name)
                    continue
                ops[name] = op
                if op.done:
                    pending.discard(name)
            if pending:
                time.sleep(0.5)
    states: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    over_attempted = 0
    failed_by_kills: Counter[str] = Counter()
    wrong_end: Counter[str] = Counter()
    expected = dict(zip(names, jobs, strict=True))
    for name, op in ops.items():
        md = jobs_pb2.JobMetadata()
        op.metadata.Unpack(md)
        state = jobs_pb2.JobMetadata.State.Name(md.state)
        states[state] += 1
        attempts[md.attempt] += 1
        if md.max_attempts and md.attempt > md.max_attempts:
            over_attempted += 1
        if expected[name].task in LONG_POISON and state == "FAILED":
            # Long poison tasks have 3 attempts and run for seconds while
            # workers are SIGKILLed about once a second: only "worker lost"
            # may end them FAILED (a blocked loop or a swallowed cancel
            # itself losing the lease is caught by
            # tests/acceptance/test_poison_tasks.py, where nothing is killed).
            failed_by_kills[expected[name].task] += 1
            if "worker lost" not in op.error.message:
                wrong_end[f"{expected[name].task}:FAILED: {op.error.message[:80]}"] += 1
        elif op.done and state not in expected[name].expected.split("|"):
            wrong_end[f"{expected[name].task}:{state}: {op.error.message[:80]}"] += 1
    finishes: Counter[str] = Counter()
    for log in svc.workdir.glob("worker-*.log"):
        for match in FINISHED.finditer(log.read_text(errors="replace")):
            finishes[match.group(1)] += 1
    records = Path(svc.env["LONGRUN_TEST_RECORD_DIR"])

    def executions(name: str) -> int:
        path = records / name.rsplit("/", 1)[-1]
        return len(path.read_text().splitlines()) if path.exists() else 0

    plain = [n for n in names if expected[n].task == "record"]
    return {
        "jobs": len(names),
        "poison_jobs": Counter(j.task for j in jobs if j.task != "record"),
        "states": dict(states),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "lost": sum(1 for n in names if n not in ops),
        "stuck": sum(1 for op in ops.values() if not op.done),
        "doubled": sum(1 for n in names if finishes[n] > 1),
        "over_attempted": over_attempted,
        "wrong_end": dict(wrong_end),
        "long_poison_failed_by_kills": dict(failed_by_kills),
        "re_executed": sum(1 for n in plain if executions(n) > 1),
        "outcome_missing": sum(
            1
            for op in ops.values()
            if op.done and not (op.HasField("response") or op.HasField("error"))
        ),
    }


def run(backend: str, n_jobs: int, workers: int, seed: int, faults: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    jobs = plan_jobs(n_jobs, faults, rng)
    with tempfile.TemporaryDirectory(prefix=f"chaos-{backend}-") as tmp:
        workdir = Path(tmp)
        env = backend_env(backend, workdir)
        env["LONGRUN_TASK_MODULES"] = "longrun_worker.builtin_tasks tests.support.fault_tasks"
        env["LONGRUN_TEST_RECORD_DIR"] = str(workdir / "records")
        env["LONGRUN_LOG_LEVEL"] = "INFO"
        env["LONGRUN_OUTAGE_RETRY_MAX"] = "0.5"
        (workdir / "records").mkdir()
        notes: list[str] = []
        with contextlib.ExitStack() as stack:
            injected: list[tuple[str, Callable[[], Callable[[], None]]]] = []
            if faults and backend == "embedded":
                disk = stack.enter_context(loop_disk(workdir / "disk"))
                if disk is None:
                    notes.append("storage faults skipped: cannot mount a loop disk (not root?)")
                else:
                    db = disk / "longrun.db"
                    env["LONGRUN_SQLITE_PATH"] = str(db)
                    injected = [
                        ("full_disk", lambda: full_disk(db)),
                        ("read_only", lambda: read_only(db)),
                    ]
            elif faults:
                pgid = emulator_group(env.get("FIRESTORE_EMULATOR_HOST", ""))
                if pgid is None:
                    notes.append("storage faults skipped: Firestore emulator not found")
                else:
                    injected = [("firestore_paused", lambda: paused_firestore(pgid))]
            svc = Service(workdir, env)
            kills: Counter[str] = Counter()
            counted: Counter[str] = Counter()
            stop = threading.Event()
            started = time.monotonic()
            threads: list[threading.Thread] = []
            try:
                svc.start_server()
                if faults:
                    svc.start_worker("--concurrency", "8", extra_env={"LONGRUN_CLOCK_SKEW": "60"})
                for _ in range(workers - (1 if faults else 0)):
                    svc.start_worker("--concurrency", "8")
                threads.append(
                    threading.Thread(target=kill_things, args=(svc, stop, kills, rng), daemon=True)
                )
                if injected:
                    threads.append(
                        threading.Thread(
                            target=storage_faults, args=(injected, stop, counted), daemon=True
                        )
                    )
                for thread in threads:
                    thread.start()
                # Spread the submissions over ~20 s, so the faults meet work in flight.
                names = submit_all(svc, jobs, pace=min(0.16, 160 / max(n_jobs, 1)))
                cancelled = cancel_swallowers(svc, names, jobs, stop) if faults else 0
                # Keep killing while the backlog drains, then check.
                check(svc, names, jobs, time.monotonic() + 300)
                stop.set()
                for thread in threads:
                    thread.join()
                report = check(svc, names, jobs, time.monotonic() + 120)
            finally:
                stop.set()
                svc.stop()
        report |= {
            "backend": backend,
            "worker_kills": kills["worker"],
            "server_kills": kills["server"],
            "storage_faults": dict(counted),
            "skewed_worker": faults,
            "cancelled_swallowers": cancelled,
            "notes": notes,
            "seconds": round(time.monotonic() - started, 1),
        }
        return report


def failed(report: dict[str, Any]) -> bool:
    keys = ("lost", "stuck", "doubled", "over_attempted")
    return any(report[k] for k in keys) or bool(report["wrong_end"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embedded", "google", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-faults",
        dest="faults",
        action="store_false",
        help="kills only: no poison tasks, skewed worker or storage faults",
    )
    args = parser.parse_args()
    backends = ["embedded", "google"] if args.backend == "both" else [args.backend]
    RESULTS.mkdir(exist_ok=True)
    bad = False
    for backend in backends:
        report = run(backend, args.jobs, args.workers, args.seed, args.faults)
        print(json.dumps(report, indent=2), flush=True)
        (RESULTS / f"chaos-{backend}.json").write_text(json.dumps(report, indent=2))
        bad |= failed(report)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
