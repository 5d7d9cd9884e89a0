"""Bounded chaos run (`make chaos`): submit jobs while randomly killing
workers (SIGKILL) and the server at least once, then check every operation.

Reports, per backend: jobs, kills, lost (accepted but gone or never done),
stuck (not done at the end, or RUNNING), doubled (more than one accepted
outcome write, from the workers' `finished` log lines), plus re-executions
(at-least-once: a task body that ran to its end more than once because its
worker died before the outcome was written; allowed, counted).
Exit status 1 if lost, stuck or doubled is not 0.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import Service, backend_env

RESULTS = Path(__file__).parent / "results"
FINISHED = re.compile(r"finished (operations/\S+) attempt (\d+): (\w+)")


def submit_all(svc: Service, jobs: int, stop: threading.Event) -> list[str]:
    """Submit with request ids; a failed call (server down) is retried with the same id."""

    def one(i: int) -> str:
        request = jobs_pb2.CreateJobRequest(task="record", request_id=str(uuid.uuid4()))
        request.params.update({"seconds": random.choice([0, 0, 0.05, 0.2, 0.5]), "i": i})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(svc.target) as channel:
                    op = jobs_pb2_grpc.JobsStub(channel).CreateJob(request, timeout=10)
                    return str(op.name)
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError(f"job {i} could not be submitted in 120 s")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(jobs)))


def chaos(svc: Service, stop: threading.Event, kills: Counter[str], rng: random.Random) -> None:
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
        victim = rng.choice(svc.workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        svc.workers.remove(victim)
        kills["worker"] += 1
        svc.start_worker("--concurrency", "8")


def check(svc: Service, names: list[str], deadline: float) -> dict[str, Any]:
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
    for op in ops.values():
        md = jobs_pb2.JobMetadata()
        op.metadata.Unpack(md)
        states[jobs_pb2.JobMetadata.State.Name(md.state)] += 1
        attempts[md.attempt] += 1
    finishes: Counter[str] = Counter()
    for log in svc.workdir.glob("worker-*.log"):
        for match in FINISHED.finditer(log.read_text(errors="replace")):
            finishes[match.group(1)] += 1
    records = Path(svc.env["LONGRUN_TEST_RECORD_DIR"])
    executions = {
        n: len((records / n.rsplit("/", 1)[-1]).read_text().splitlines())
        if (records / n.rsplit("/", 1)[-1]).exists()
        else 0
        for n in names
    }
    lost = sum(1 for n in names if n not in ops)
    stuck = sum(1 for n, op in ops.items() if not op.done)
    doubled = sum(1 for n in names if finishes[n] > 1)
    return {
        "jobs": len(names),
        "states": dict(states),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "lost": lost,
        "stuck": stuck,
        "doubled": doubled,
        "re_executed": sum(1 for v in executions.values() if v > 1),
        "outcome_missing": sum(
            1
            for op in ops.values()
            if op.done and not (op.HasField("response") or op.HasField("error"))
        ),
    }


def run(backend: str, jobs: int, workers: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"chaos-{backend}-") as tmp:
        workdir = Path(tmp)
        env = backend_env(backend, workdir)
        env["LONGRUN_TASK_MODULES"] = "longrun_worker.builtin_tasks tests.support.fault_tasks"
        env["LONGRUN_TEST_RECORD_DIR"] = str(workdir / "records")
        env["LONGRUN_LOG_LEVEL"] = "INFO"
        (workdir / "records").mkdir()
        svc = Service(workdir, env)
        kills: Counter[str] = Counter()
        stop = threading.Event()
        started = time.monotonic()
        try:
            svc.start_server()
            for _ in range(workers):
                svc.start_worker("--concurrency", "8")
            monkey = threading.Thread(target=chaos, args=(svc, stop, kills, rng), daemon=True)
            monkey.start()
            names = submit_all(svc, jobs, stop)
            # Keep killing while the backlog drains, then check.
            report = check(svc, names, time.monotonic() + 300)
            stop.set()
            monkey.join()
            report = check(svc, names, time.monotonic() + 120)
        finally:
            stop.set()
            svc.stop()
        report |= {
            "backend": backend,
            "worker_kills": kills["worker"],
            "server_kills": kills["server"],
            "seconds": round(time.monotonic() - started, 1),
        }
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embedded", "google", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    backends = ["embedded", "google"] if args.backend == "both" else [args.backend]
    RESULTS.mkdir(exist_ok=True)
    failed = False
    for backend in backends:
        report = run(backend, args.jobs, args.workers, args.seed)
        print(json.dumps(report, indent=2), flush=True)
        (RESULTS / f"chaos-{backend}.json").write_text(json.dumps(report, indent=2))
        failed |= bool(report["lost"] or report["stuck"] or report["doubled"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
