"""5. 10,000 concurrent WaitOperation calls on one server process.

Sequence: the server starts with no worker; a separate client process
(grpc.aio, several channels) creates N `stamp` operations, then starts one
WaitOperation (timeout 120 s) for each and holds them all. Once the server
has taken them in (its CPU goes quiet), 2 workers start and run the backlog;
every Wait must come back as its operation completes.

Figures: calls that ended CANCELLED (or with any other error): target 0;
the server's peak RSS (VmHWM): target <= 300 MB, baseline its RSS before
the waits; the worst lateness (Wait return minus the task's completion
stamp, as in benchmark 4): target <= 1.5 s, baseline the worst lateness of
a few single waits on the same server before the flood. The server runs
with `--redispatch-after 600` so the sweeper does not republish the backlog
while it waits for workers (a backlog older than redispatch-after is
published again by design; that is not what this measures).

    python -m bench.wait_10k [--quick] [--n N] [--profile]
    python -m bench.wait_10k client --target T --n N --workdir D   (the client process)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from bench import clients
from bench.common import (
    ROOT,
    Figure,
    finish_profile,
    longrun_service,
    note,
    ratio,
    rss_mb,
    standalone,
    start_profile,
    summary_ms,
    tree_cpu,
)
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import wait_for

NAME = "5 10k concurrent Waits"
WAIT_TIMEOUT = 120
#: Seconds after the last operation is done before open Waits count as stuck.
STOP_AFTER = 3.0
CHANNELS = 8


# ---- the client process ----


async def client(target: str, n: int, workdir: Path) -> None:
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_concurrent_streams", 0)],
        )
        for _ in range(CHANNELS)
    ]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    jobs = [jobs_pb2_grpc.JobsStub(ch) for ch in channels]
    ops = [operations_pb2_grpc.OperationsStub(ch) for ch in channels]

    names: list[str] = []
    todo = list(range(n))

    async def create_loop() -> None:
        while todo:
            i = todo.pop()
            op = await jobs[i % CHANNELS].CreateJob(
                jobs_pb2.CreateJobRequest(task="stamp"), timeout=60
            )
            names.append(op.name)

    t0 = time.monotonic()
    await asyncio.gather(*(create_loop() for _ in range(64)))
    created_s = time.monotonic() - t0

    results: list[dict[str, Any]] = []

    async def wait_one(i: int, name: str) -> None:
        request = operations_pb2.WaitOperationRequest(
            name=name, timeout=duration_pb2.Duration(seconds=WAIT_TIMEOUT)
        )
        try:
            op = await ops[i % CHANNELS].WaitOperation(request, timeout=WAIT_TIMEOUT + 10)
        except grpc.RpcError as exc:
            results.append({"code": exc.code().name, "returned": time.time(), "name": name})
            return
        returned = time.time()
        done_at = clients.response_dict(op).get("done_at") if op.HasField("response") else None
        results.append(
            {"code": "OK", "done": op.done, "returned": returned, "done_at": done_at, "name": name}
        )

    waits = {asyncio.create_task(wait_one(i, name)): name for i, name in enumerate(names)}
    await asyncio.sleep(0)
    (workdir / "issued").write_text(json.dumps({"created_s": created_s}))
    stop = workdir / "stop"
    while not all(w.done() for w in waits):
        # The orchestrator says stop once every operation is done and the
        # lateness allowance has passed: a Wait still open then missed its wake-up.
        if stop.exists():
            stuck = [w for w in waits if not w.done()]
            for w in stuck:
                w.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            results.extend(
                {"code": "STUCK", "returned": time.time(), "name": waits[w]} for w in stuck
            )
            break
        await asyncio.sleep(0.1)
    for ch in channels:
        await ch.close()
    (workdir / "results.json").write_text(json.dumps(results))


# ---- the orchestration ----


def single_waits(target: str, n: int) -> list[float]:
    async def go() -> list[float]:
        out = []
        async with clients.LongrunClient(target) as c:
            for _ in range(n):
                op = await c.wait((await c.create("stamp", {"sleep": 0.05})).name)
                out.append(time.time() - float(clients.response_dict(op)["done_at"]))
        return out

    return asyncio.run(go())


def wait_quiet(pid: int, timeout: float) -> float:
    """Wait until process `pid` uses < 5% of a core over 0.5 s; returns seconds waited."""
    start = time.monotonic()
    last = tree_cpu(pid)
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = tree_cpu(pid)
        if now - last < 0.025:
            break
        last = now
    return time.monotonic() - start


def measure(n: int, profile: bool = False) -> dict[str, Any]:
    with longrun_service("embedded", workers=1, server_args=["--redispatch-after", "600"]) as svc:
        assert svc.server is not None
        server_pid = svc.server.pid
        single = single_waits(svc.target, 20)
        svc.stop_workers()
        idle = rss_mb(server_pid)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.wait_10k",
                "client",
                "--target",
                svc.target,
                "--n",
                str(n),
                "--workdir",
                str(svc.workdir),
            ],
            cwd=ROOT,
            env=svc.env,
        )
        peak_rss = 0.0
        try:
            wait_for(
                lambda: (svc.workdir / "issued").exists() or proc.poll() is not None,
                600,
                "the client to create the operations",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"client exited {proc.returncode}")
            settle = wait_quiet(server_pid, 60)
            holding = rss_mb(server_pid)
            note(f"{NAME}: {n} waits held; server RSS {holding.get('VmRSS', 0):.0f} MB")
            recorders = start_profile(server_pid, "wait_10k-server", 20) if profile else []
            started = time.time()
            for _ in range(2):
                svc.start_worker()
            db = sqlite3.connect(svc.env["LONGRUN_SQLITE_PATH"], timeout=30)
            all_done: float | None = None
            while proc.poll() is None:
                peak_rss = max(peak_rss, rss_mb(server_pid).get("VmRSS", 0.0))
                time.sleep(0.2)
                if all_done is None:
                    (pending,) = db.execute(
                        "SELECT COUNT(*) FROM operations WHERE done = 0"
                    ).fetchone()
                    if pending == 0:
                        all_done = time.time()
                elif time.time() - all_done > STOP_AFTER:
                    (svc.workdir / "stop").touch()
                if time.time() - started > WAIT_TIMEOUT + 60:
                    proc.kill()
            db.close()
            finish_profile(recorders)
            hwm = rss_mb(server_pid).get("VmHWM", 0.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        issued = json.loads((svc.workdir / "issued").read_text())
        results = json.loads((svc.workdir / "results.json").read_text())
    codes = Counter(r["code"] for r in results)
    late = [r["returned"] - r["done_at"] for r in results if r.get("done_at") is not None]
    not_done = sum(
        1 for r in results if r["code"] == "STUCK" or (r["code"] == "OK" and not r.get("done"))
    )
    last_return = max((r["returned"] for r in results), default=started)
    return {
        "n": n,
        "codes": dict(codes),
        #: Waits that had not returned the done operation 3 s after every
        #: operation was done (missed wake-ups).
        "missed_wakeups": not_done,
        "missed_examples": [
            r["name"] for r in results if r["code"] == "STUCK" or not r.get("done", True)
        ][:10],
        "lateness_ms": summary_ms(late),
        "late_over_1_5s": sum(1 for x in late if x > 1.5),
        "single_wait_lateness_ms": summary_ms(single),
        "rss_idle_mb": idle,
        "rss_holding_mb": holding,
        "rss_peak_sampled_mb": round(peak_rss, 1),
        "vmhwm_mb": round(hwm, 1),
        "create_seconds": round(issued["created_s"], 2),
        "settle_seconds": round(settle, 2),
        "drain_seconds": round(last_return - started, 2),
    }


def run(quick: bool = False, profile: bool = False, n: int | None = None) -> list[Figure]:
    n = n or (1000 if quick else 10_000)
    m = measure(n, profile)
    note(f"{NAME}: {json.dumps(m)}")
    failed = sum(v for k, v in m["codes"].items() if k not in ("OK", "STUCK"))
    cancelled = m["codes"].get("CANCELLED", 0)
    worst = m["lateness_ms"].get("max")
    single_worst = m["single_wait_lateness_ms"].get("max")
    label = f"{n // 1000}k" if n >= 1000 else str(n)
    late_ok = (
        worst is not None
        and worst <= 1500
        and m["missed_wakeups"] == 0
        and len(m["codes"]) > 0
        and m["lateness_ms"]["n"] == n
    )
    return [
        Figure(
            benchmark=NAME,
            figure=f"{label} Waits CANCELLED / failed",
            value=float(cancelled),
            unit="",
            baseline_name="failed (any code)",
            baseline=float(failed),
            ratio=None,
            ratio_note="",
            target="0 cancelled",
            met=cancelled == 0 and failed == 0,
            details=m,
        ),
        Figure(
            benchmark=NAME,
            figure="server peak RSS (VmHWM)",
            value=m["vmhwm_mb"],
            unit="MB",
            baseline_name="server RSS before the waits",
            baseline=m["rss_idle_mb"].get("VmRSS"),
            ratio=ratio(m["vmhwm_mb"], m["rss_idle_mb"].get("VmRSS")),
            ratio_note="peak/idle",
            target="<= 300 MB",
            met=m["vmhwm_mb"] <= 300,
        ),
        Figure(
            benchmark=NAME,
            figure="missed wake-ups",
            value=float(m["missed_wakeups"]),
            unit="",
            baseline_name="Waits",
            baseline=float(n),
            ratio=None,
            ratio_note="",
            target="0 (open 3 s after done)",
            met=m["missed_wakeups"] == 0,
        ),
        Figure(
            benchmark=NAME,
            figure="worst Wait lateness",
            value=worst,
            unit="ms",
            baseline_name="worst of 20 single Waits",
            baseline=single_worst,
            ratio=ratio(worst, single_worst),
            ratio_note="10k/single",
            target="<= 1500 ms, none missed",
            met=late_ok,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    if args.cmd == "client":
        asyncio.run(client(args.target, args.n, args.workdir))
        return
    standalone(run(args.quick, args.profile, args.n), "wait_10k")


if __name__ == "__main__":
    main()
