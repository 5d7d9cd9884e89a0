"""6. ListOperations at 100,000 stored operations: the latency of a page of
100 against a page of 1 (the baseline: the same call's fixed cost), first
page and a page from the middle of the list (a signed page token for the
50,000th operation, made with the server's page-token secret).
Target: page 100 <= 1.5x page 1 (p50).

The database is filled directly, rows built by the store's own `to_row` and
inserted in bulk, before the server starts.

    python -m bench.list_latency [--quick] [--profile] [--ops N]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import struct_pb2

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
from longrun_core.clock import SystemClock
from longrun_core.model import OperationRecord, State, pack
from longrun_core.names import COLLECTION
from longrun_core.sqlite.db import SCHEMA
from longrun_core.sqlite.store import _INSERT, migrate, to_row
from longrun_core.store import Cursor, PageTokens
from longrun_server.operations_service import token_binding

NAME = "6 ListOperations"
SECRET = b"bench-page-token-secret"


def populate(path: Path, n: int) -> list[OperationRecord]:
    """n finished noop operations, one per millisecond of create time; returns
    them newest first (the list order)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    migrate(conn)  # the columns added since SCHEMA
    now = SystemClock().now()
    response = pack(struct_pb2.Struct(fields={"i": struct_pb2.Value(number_value=1)}))
    params = struct_pb2.Struct().SerializeToString()
    records = []
    for i in range(n):
        created = now - timedelta(milliseconds=n - i)
        records.append(
            OperationRecord(
                id=uuid.uuid4().hex,
                task="noop",
                params=params,
                state=State.SUCCEEDED,
                create_time=created,
                update_time=created + timedelta(milliseconds=5),
                labels={"batch": str(i % 10)},
                start_time=created + timedelta(milliseconds=2),
                end_time=created + timedelta(milliseconds=5),
                attempt=1,
                max_attempts=3,
                progress_percent=100,
                response=response,
                expire_time=created + timedelta(days=30),
                version=3,
            )
        )
    conn.execute("BEGIN")
    conn.executemany(_INSERT, (to_row(r) for r in records))
    conn.execute("COMMIT")
    conn.close()
    records.sort(key=lambda r: (r.create_time, r.id), reverse=True)
    return records


def call_times(
    stub: operations_pb2_grpc.OperationsStub, request: operations_pb2.ListOperationsRequest, n: int
) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = stub.ListOperations(request, timeout=30)
        out.append(time.perf_counter() - t0)
        if len(response.operations) != (request.page_size or 50):
            raise RuntimeError(f"expected {request.page_size or 50} operations")
    return out


def measure(quick: bool, ops: int, profile: bool) -> dict[str, Any]:
    calls = 40 if quick else 150
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        workdir = Path(tmp)
        env = bench_env("embedded", workdir) | {"LONGRUN_PAGE_TOKEN_SECRET": SECRET.decode()}
        t0 = time.monotonic()
        records = populate(Path(env["LONGRUN_SQLITE_PATH"]), ops)
        filled = time.monotonic() - t0
        middle = records[len(records) // 2]
        tokens = PageTokens(SECRET)
        token = tokens.encode(Cursor.after(middle), token_binding(None, ""))
        # Page 100 at the default page size (50) starts after the 4,950th newest.
        page100 = tokens.encode(Cursor.after(records[99 * 50 - 1]), token_binding(None, ""))
        svc = BenchService(workdir, env)
        try:
            svc.start_server()
            with grpc.insecure_channel(svc.target) as channel:
                stub = operations_pb2_grpc.OperationsStub(channel)
                requests = {
                    "page1_50": operations_pb2.ListOperationsRequest(name=COLLECTION),
                    "page100_50": operations_pb2.ListOperationsRequest(
                        name=COLLECTION, page_token=page100
                    ),
                    "first_1": operations_pb2.ListOperationsRequest(name=COLLECTION, page_size=1),
                    "first_100": operations_pb2.ListOperationsRequest(
                        name=COLLECTION, page_size=100
                    ),
                    "middle_1": operations_pb2.ListOperationsRequest(
                        name=COLLECTION, page_size=1, page_token=token
                    ),
                    "middle_100": operations_pb2.ListOperationsRequest(
                        name=COLLECTION, page_size=100, page_token=token
                    ),
                }
                for request in requests.values():  # warm the page cache and the code paths
                    call_times(stub, request, 5)
                times: dict[str, list[float]] = {k: [] for k in requests}
                for _ in range(calls // 10):  # interleaved batches of 10
                    for key, request in requests.items():
                        times[key] += call_times(stub, request, 10)
                if profile and svc.server is not None:
                    recorders = start_profile(svc.server.pid, "list-server", 5)
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:
                        call_times(stub, requests["first_100"], 5)
                    finish_profile(recorders)
        finally:
            svc.stop()
    return {"ops": ops, "fill_seconds": round(filled, 1), "times": times}


def run(quick: bool = False, profile: bool = False, ops: int | None = None) -> list[Figure]:
    ops = ops or (20_000 if quick else 100_000)
    m = measure(quick, ops, profile)
    times = m.pop("times")
    p50 = {k: 1000 * percentile(v, 50) for k, v in times.items()}
    m["latency_ms"] = {k: summary_ms(v) for k, v in times.items()}
    note(f"{NAME}: p50 " + ", ".join(f"{k} {v:.2f} ms" for k, v in p50.items()))
    first = ratio(p50["first_100"], p50["first_1"])
    middle = ratio(p50["middle_100"], p50["middle_1"])
    deep = ratio(p50["page100_50"], p50["page1_50"])
    return [
        Figure(
            benchmark=NAME,
            figure=f"{ops // 1000}k ops: page 100 (default size 50), p50",
            value=p50["page100_50"],
            unit="ms",
            baseline_name="page 1",
            baseline=p50["page1_50"],
            ratio=deep,
            ratio_note="page 100/page 1, lower is better",
            target="<= 1.5x",
            met=None if deep is None else deep <= 1.5,
        ),
        Figure(
            benchmark=NAME,
            figure=f"{ops // 1000}k ops: first page of 100, p50",
            value=p50["first_100"],
            unit="ms",
            baseline_name="page of 1",
            baseline=p50["first_1"],
            ratio=first,
            ratio_note="size 100/size 1",
            target="reported",
            met=None,
            details=m,
        ),
        Figure(
            benchmark=NAME,
            figure=f"page of 100 at op {ops // 2:,}, p50",
            value=p50["middle_100"],
            unit="ms",
            baseline_name="page of 1 there",
            baseline=p50["middle_1"],
            ratio=middle,
            ratio_note="size 100/size 1",
            target="reported",
            met=None,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--ops", type=int, default=None, help="default 100,000 (quick: 20,000)")
    args = parser.parse_args()
    standalone(run(args.quick, args.profile, args.ops), "list_latency")


if __name__ == "__main__":
    main()
