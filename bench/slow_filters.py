"""8. GetOperation while slow filters run: p99 latency of GetOperation from
one client while 4 other clients page through ListOperations with a filter
no index serves (`error.message = "x"`, no match) over 300,000 stored
operations, each call reading its scan budget (default 10,000 rows) and
passing the token on, round after round. Baseline: GetOperation p99 with no
list load, same server, same run. Target: p99 under load <= 50 ms.

The database is filled in bulk before the server starts
(`tests.support.seeding`: rows from the store's own `to_row`, one
transaction, the list indexes built once).

    python -m bench.slow_filters [--quick] [--profile] [--ops N]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from bench.common import (
    BenchService,
    Figure,
    bench_env,
    finish_profile,
    note,
    percentile,
    ratio,
    standalone,
    start_profile,
    summary_ms,
)
from tests.support.seeding import seed_operations

NAME = "8 GetOperation under slow filters"
SLOW = 'error.message = "x"'
CLIENTS = 4


def get_latencies(
    stub: operations_pb2_grpc.OperationsStub, name: str, seconds: float
) -> list[float]:
    """GetOperation back to back (a 2 ms pause between calls) for `seconds`."""
    request = operations_pb2.GetOperationRequest(name=name)
    out: list[float] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        t0 = time.perf_counter()
        stub.GetOperation(request, timeout=30)
        out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return out


class Scanners:
    """CLIENTS threads walking the slow filter's pages over and over."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.stop = threading.Event()
        self.calls: list[float] = []
        self.walks = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = operations_pb2_grpc.OperationsStub(channel)
            request = operations_pb2.ListOperationsRequest(name="operations", filter=SLOW)
            while not self.stop.is_set():
                try:
                    t0 = time.perf_counter()
                    page = stub.ListOperations(request, timeout=60)
                    self.calls.append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    self.errors.append(str(exc))
                    return
                if page.operations:
                    self.errors.append(f"{SLOW} matched {len(page.operations)} operations")
                    return
                request.page_token = page.next_page_token
                if not page.next_page_token:
                    self.walks += 1

    def __enter__(self) -> Scanners:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def measure(quick: bool, ops: int, profile: bool) -> dict[str, Any]:
    seconds = 4.0 if quick else 12.0
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        workdir = Path(tmp)
        env = bench_env("embedded", workdir)
        t0 = time.monotonic()
        seed_operations(Path(env["LONGRUN_SQLITE_PATH"]), ops, newest=datetime.now(UTC))
        filled = time.monotonic() - t0
        note(f"{NAME}: {ops:,} operations stored in {filled:.1f} s")
        svc = BenchService(workdir, env)
        try:
            svc.start_server()
            with grpc.insecure_channel(svc.target) as channel:
                stub = operations_pb2_grpc.OperationsStub(channel)
                name = "operations/seed000000001"
                get_latencies(stub, name, 1.0)  # warm up
                quiet = get_latencies(stub, name, seconds)
                with Scanners(svc.target) as scanners:
                    while not scanners.calls and not scanners.errors:
                        time.sleep(0.01)  # the load has started
                    recorders = []
                    if profile and svc.server is not None:
                        recorders = start_profile(svc.server.pid, "slow-filters-server", seconds)
                    loaded = get_latencies(stub, name, seconds)
                    finish_profile(recorders)
                if scanners.errors:
                    raise RuntimeError(f"slow list failed: {scanners.errors[0]}")
        finally:
            svc.stop()
    return {
        "ops": ops,
        "fill_seconds": round(filled, 1),
        "quiet": quiet,
        "loaded": loaded,
        "list_calls": len(scanners.calls),
        "full_walks": scanners.walks,
        "list_call_ms": summary_ms(scanners.calls),
        "seconds": seconds,
    }


def run(quick: bool = False, profile: bool = False, ops: int | None = None) -> list[Figure]:
    ops = ops or (100_000 if quick else 300_000)
    m = measure(quick, ops, profile)
    quiet, loaded = m.pop("quiet"), m.pop("loaded")
    p99_quiet = 1000 * percentile(quiet, 99)
    p99_loaded = 1000 * percentile(loaded, 99)
    m["get_quiet_ms"] = summary_ms(quiet)
    m["get_loaded_ms"] = summary_ms(loaded)
    rows_per_s = m["list_calls"] * 10_000 / m["seconds"]
    note(
        f"{NAME}: GetOperation p99 {p99_loaded:.1f} ms under {CLIENTS} slow lists "
        f"({m['list_calls']} calls, ~{rows_per_s:,.0f} rows/s scanned), {p99_quiet:.1f} ms quiet"
    )
    return [
        Figure(
            benchmark=NAME,
            figure=f"{ops // 1000}k ops, {CLIENTS} clients on {SLOW}: GetOperation p99",
            value=p99_loaded,
            unit="ms",
            baseline_name="no list load",
            baseline=p99_quiet,
            ratio=ratio(p99_quiet, p99_loaded),
            ratio_note="quiet/loaded",
            target="<= 50 ms",
            met=p99_loaded <= 50,
            details=m,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--ops", type=int, default=None, help="default 300,000 (quick: 100,000)")
    args = parser.parse_args()
    standalone(run(args.quick, args.profile, args.ops), "slow_filters")


if __name__ == "__main__":
    main()
