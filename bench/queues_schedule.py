"""13. Queues (issue 12), embedded backend, production defaults:

* CreateJob and GetOperation latency with 100,000 jobs scheduled a day
  ahead, against an empty store (target: <= 1.2x, p50): far-future work is
  indexed by due time, so nothing reads it until it is due.
* schedule_time lateness (attempt start minus schedule time) of N jobs
  spread over 10 s, 2 workers (target: p99 <= 20 ms, none early). The
  sweeper publishes due jobs every --sweep-interval (1 s by default), so the
  lateness is expected to be about that: the target is not met by design yet.

The 100k jobs are inserted directly (rows built by the store's own `to_row`),
before the server starts.

    python -m bench.queues_schedule [--quick] [--jobs N]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import struct_pb2

from bench.common import (
    BenchService,
    Figure,
    bench_env,
    longrun_service,
    note,
    percentile,
    ratio,
    standalone,
    summary_ms,
)
from bench.google_e2e import have_emulators
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.clock import SystemClock
from longrun_core.model import OperationRecord, State, WaitReason
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.queues import migrate as migrate_queues
from longrun_core.sqlite.store import _INSERT, migrate, to_row

NAME = "13 Queues"


def populate_scheduled(path: Path, n: int) -> None:
    """n noop jobs scheduled a day ahead (QUEUED, due then)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    migrate(conn)
    migrate_queues(conn)
    now = SystemClock().now()
    params = struct_pb2.Struct().SerializeToString()
    rows = []
    for i in range(n):
        created = now - timedelta(milliseconds=n - i)
        due = now + timedelta(days=1, milliseconds=i)
        rec = OperationRecord(
            id=uuid.uuid4().hex,
            task="noop",
            params=params,
            state=State.QUEUED,
            create_time=created,
            update_time=created,
            max_attempts=1,
            dispatch_due_time=due,
            run_after=due,
            schedule_time=due,
            wait_reason=WaitReason.SCHEDULED,
            version=1,
        )
        rows.append(to_row(rec))
    conn.execute("BEGIN")
    conn.executemany(_INSERT, rows)
    conn.execute("COMMIT")
    conn.close()


def rpc_times(target: str, calls: int) -> dict[str, list[float]]:
    """CreateJob (noop, due now) and GetOperation latencies, interleaved."""
    create: list[float] = []
    get: list[float] = []
    with grpc.insecure_channel(target) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        ops = operations_pb2_grpc.OperationsStub(channel)
        first = jobs.CreateJob(jobs_pb2.CreateJobRequest(task="noop"), timeout=30)
        for _ in range(20):  # warm up
            ops.GetOperation(operations_pb2.GetOperationRequest(name=first.name), timeout=30)
        for _ in range(calls):
            t0 = time.perf_counter()
            op = jobs.CreateJob(jobs_pb2.CreateJobRequest(task="noop"), timeout=30)
            create.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=30)
            get.append(time.perf_counter() - t0)
    return {"create": create, "get": get}


def scheduled_store_latency(quick: bool, scheduled: int) -> dict[str, Any]:
    calls = 100 if quick else 400
    out: dict[str, Any] = {"scheduled": scheduled}
    for label, fill in (("empty", 0), ("scheduled", scheduled)):
        with tempfile.TemporaryDirectory(prefix="bench-queues-") as tmp:
            workdir = Path(tmp)
            env = bench_env("embedded", workdir)
            if fill:
                t0 = time.monotonic()
                populate_scheduled(Path(env["LONGRUN_SQLITE_PATH"]), fill)
                out["fill_seconds"] = round(time.monotonic() - t0, 1)
            svc = BenchService(workdir, env)
            try:
                svc.start_server()
                out[label] = rpc_times(svc.target, calls)
            finally:
                svc.stop()
    return out


def lateness(quick: bool, jobs: int, backend: str = "embedded") -> dict[str, Any]:
    spread = 10.0
    # Leave time to create them all before the first is due (Firestore's
    # creates are slower than SQLite's).
    per_create = 0.004 if backend == "embedded" else 0.04
    with longrun_service(backend, workers=2) as svc, grpc.insecure_channel(svc.target) as ch:
        stub = jobs_pb2_grpc.JobsStub(ch)
        ops = operations_pb2_grpc.OperationsStub(ch)
        base = datetime.now(UTC) + timedelta(seconds=3 + jobs * per_create)
        names: list[str] = []
        rng = random.Random(12)
        for _ in range(jobs):
            request = jobs_pb2.CreateJobRequest(task="noop")
            request.schedule_time.FromDatetime(base + timedelta(seconds=rng.uniform(0, spread)))
            names.append(stub.CreateJob(request, timeout=30).name)
        created_late = datetime.now(UTC) > base
        deadline = time.monotonic() + (base - datetime.now(UTC)).total_seconds() + spread + 60
        late: list[float] = []
        early = 0
        pending = list(names)
        while pending and time.monotonic() < deadline:
            time.sleep(0.5)
            still = []
            for name in pending:
                op = ops.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=30)
                md = jobs_pb2.JobMetadata()
                op.metadata.Unpack(md)
                if not op.done:
                    still.append(name)
                    continue
                delta = (
                    md.start_time.ToDatetime(tzinfo=UTC) - md.schedule_time.ToDatetime(tzinfo=UTC)
                ).total_seconds()
                early += delta < 0
                late.append(delta)
            pending = still
    return {
        "jobs": jobs,
        "created_after_first_due": created_late,
        "unfinished": len(pending),
        "early": early,
        "lateness": late,
    }


def run(quick: bool = False, profile: bool = False, jobs: int | None = None) -> list[Figure]:
    jobs = jobs or (200 if quick else 1000)
    scheduled = 20_000 if quick else 100_000
    s = scheduled_store_latency(quick, scheduled)
    p50 = {
        f"{label}_{verb}": 1000 * percentile(s[label][verb], 50)
        for label in ("empty", "scheduled")
        for verb in ("create", "get")
    }
    note(f"{NAME}: p50 " + ", ".join(f"{k} {v:.2f} ms" for k, v in p50.items()))
    details = {k: {verb: summary_ms(v) for verb, v in s[k].items()} for k in ("empty", "scheduled")}
    create_ratio = ratio(p50["scheduled_create"], p50["empty_create"])
    get_ratio = ratio(p50["scheduled_get"], p50["empty_get"])
    m = lateness(quick, jobs)
    late = m.pop("lateness")
    p = {q: 1000 * percentile(late, q) for q in (50, 99)} if late else {50: None, 99: None}
    note(f"{NAME}: lateness p50 {p[50]} ms p99 {p[99]} ms, early {m['early']}")
    m["lateness_ms"] = summary_ms(late) if late else {}
    k = scheduled // 1000
    return [
        Figure(
            benchmark=NAME,
            figure=f"CreateJob p50 with {k}k jobs scheduled a day ahead",
            value=p50["scheduled_create"],
            unit="ms",
            baseline_name="empty store",
            baseline=p50["empty_create"],
            ratio=create_ratio,
            ratio_note="with/empty, lower is better",
            target="<= 1.2x",
            met=None if create_ratio is None else create_ratio <= 1.2,
            details=details | {"fill_seconds": s.get("fill_seconds")},
        ),
        Figure(
            benchmark=NAME,
            figure=f"GetOperation p50 with {k}k jobs scheduled a day ahead",
            value=p50["scheduled_get"],
            unit="ms",
            baseline_name="empty store",
            baseline=p50["empty_get"],
            ratio=get_ratio,
            ratio_note="with/empty, lower is better",
            target="<= 1.2x",
            met=None if get_ratio is None else get_ratio <= 1.2,
        ),
        Figure(
            benchmark=NAME,
            figure=f"schedule_time lateness p99, {jobs} jobs over 10 s (p50 in details)",
            value=p[99],
            unit="ms",
            baseline_name="-",
            baseline=None,
            ratio=None,
            ratio_note="",
            target="<= 20 ms, none early",
            met=None if p[99] is None else p[99] <= 20 and m["early"] == 0,
            details=m | {"p50_ms": p[50]},
        ),
        *emulator_lateness(jobs),
    ]


def emulator_lateness(jobs: int) -> list[Figure]:
    """The schedule_time lateness figure on Firestore + Pub/Sub (when the
    emulators are up)."""
    if not have_emulators():
        note(f"{NAME}: emulators not running; the emulator lateness figure is skipped")
        return []
    m = lateness(False, jobs, backend="google")
    late = m.pop("lateness")
    p = {q: 1000 * percentile(late, q) for q in (50, 99)} if late else {50: None, 99: None}
    note(f"{NAME} emulators: lateness p50 {p[50]} ms p99 {p[99]} ms, early {m['early']}")
    m["lateness_ms"] = summary_ms(late) if late else {}
    return [
        Figure(
            benchmark=NAME,
            figure=f"schedule_time lateness p99, {jobs} jobs over 10 s, emulators (p50 in details)",
            value=p[99],
            unit="ms",
            baseline_name="-",
            baseline=None,
            ratio=None,
            ratio_note="",
            target="<= 250 ms, none early",
            met=None
            if p[99] is None
            else p[99] <= 250 and m["early"] == 0 and m["unfinished"] == 0,
            details=m | {"p50_ms": p[50]},
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument(
        "--lateness-only", action="store_true", help="only the emulators' lateness figure"
    )
    args = parser.parse_args()
    if args.lateness_only:
        standalone(emulator_lateness(args.jobs or 1000), "queues_schedule")
        return
    standalone(run(args.quick, jobs=args.jobs), "queues_schedule")


if __name__ == "__main__":
    main()
