"""8. Server memory while listing big operations: 2,000 finished `noop`
operations with 255 KiB params (and, as `noop` returns its params, a 255 KiB
result each) are listed page by page, over gRPC at the default page size,
over gRPC at the largest page size, and over the HTTP/JSON gateway. The
figure is the server's RSS after the walks, against its RSS before them in
the same run. Target: <= 400 MB after.

The jobs are created through the server (8 client threads) and run by two
workers, as a user's would be; the client accepts messages of any size, so
the walks also work against a server that does not bound its pages.

    python -m bench.list_rss [--quick] [--ops N]
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, struct_pb2

from bench.common import BenchService, Figure, bench_env, note, ratio, rss_mb, standalone
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.names import COLLECTION

NAME = "8 List memory"
PARAMS_BYTES = 255 * 1024
TARGET_MB = 400.0
#: The client takes whatever the server sends (a server without page budgets
#: sends pages of 12 MB and more).
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1)]
#: The gateway is on loopback, whatever proxy the environment names.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def create_jobs(target: str, n: int) -> list[str]:
    """n noop jobs of PARAMS_BYTES params each, created through the server (so its
    caches see them as a client's would), from 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    def create(_: int) -> str:
        params = struct_pb2.Struct()
        # A fresh blob per job, so nothing is shared between records.
        params.update({"blob": secrets.token_hex(PARAMS_BYTES // 2)})
        op = jobs.CreateJob(jobs_pb2.CreateJobRequest(task="noop", params=params), timeout=60)
        return str(op.name)

    with grpc.insecure_channel(target, options=CLIENT_OPTIONS) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(create, range(n)))


def wait_all_done(stub: operations_pb2_grpc.OperationsStub, names: list[str]) -> None:
    for name in names:
        op = stub.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=120)
            ),
            timeout=130,
        )
        if not op.done:
            raise RuntimeError(f"{name} not done after 120 s")


def walk_grpc(stub: operations_pb2_grpc.OperationsStub, page_size: int) -> dict[str, int]:
    """Every page of the list; returns how many operations and pages it took."""
    seen = pages = 0
    largest = 0
    token = ""
    while True:
        response = stub.ListOperations(
            operations_pb2.ListOperationsRequest(
                name=COLLECTION, page_size=page_size, page_token=token
            ),
            timeout=120,
        )
        pages += 1
        seen += len(response.operations)
        largest = max(largest, response.ByteSize())
        token = response.next_page_token
        if not token:
            return {"operations": seen, "pages": pages, "largest_page_bytes": largest}


def walk_http(base: str) -> dict[str, int]:
    seen = pages = 0
    largest = 0
    token = ""
    while True:
        url = f"{base}/v1/operations" + (f"?pageToken={token}" if token else "")
        with _NO_PROXY.open(url, timeout=120) as reply:
            body = reply.read()
        page = json.loads(body)
        pages += 1
        seen += len(page.get("operations", []))
        largest = max(largest, len(body))
        token = page.get("nextPageToken", "")
        if not token:
            return {"operations": seen, "pages": pages, "largest_page_bytes": largest}


def measure(quick: bool, ops: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        workdir = Path(tmp)
        http_port_file = workdir / "http-port"
        env = bench_env("embedded", workdir) | {
            "LONGRUN_HTTP_ADDRESS": "127.0.0.1:0",
            "LONGRUN_HTTP_PORT_FILE": str(http_port_file),
        }
        svc = BenchService(workdir, env)
        try:
            svc.start_server()
            assert svc.server is not None
            pid = svc.server.pid
            base = f"http://127.0.0.1:{int(http_port_file.read_text())}"
            fresh = rss_mb(pid)
            for _ in range(2):
                svc.start_worker()
            t0 = time.monotonic()
            names = create_jobs(svc.target, ops)
            with grpc.insecure_channel(svc.target, options=CLIENT_OPTIONS) as channel:
                wait_all_done(operations_pb2_grpc.OperationsStub(channel), names)
            filled = time.monotonic() - t0
            svc.stop_workers()
            before = rss_mb(pid)
            walks: dict[str, Any] = {}
            rss: dict[str, float] = {}
            with grpc.insecure_channel(svc.target, options=CLIENT_OPTIONS) as channel:
                stub = operations_pb2_grpc.OperationsStub(channel)
                plan = [("grpc_default_1", lambda: walk_grpc(stub, 0))]
                if not quick:
                    plan += [
                        ("grpc_default_2", lambda: walk_grpc(stub, 0)),
                        ("grpc_page_1000", lambda: walk_grpc(stub, 1000)),
                    ]
                plan += [("http_default", lambda: walk_http(base))]
                for key, walk in plan:
                    t1 = time.monotonic()
                    try:
                        walks[key] = walk() | {"seconds": round(time.monotonic() - t1, 2)}
                    except (grpc.RpcError, OSError) as exc:  # HTTPError is an OSError
                        walks[key] = {"operations": 0, "error": str(exc)[:300]}
                    rss[key] = rss_mb(pid).get("VmRSS", 0.0)
                    note(f"{NAME}: {key} {walks[key]}, RSS {rss[key]:.0f} MB")
            after = rss_mb(pid)
        finally:
            svc.stop()
    return {
        "ops": ops,
        "params_bytes": PARAMS_BYTES,
        "create_and_run_seconds": round(filled, 1),
        "rss_fresh_mb": round(fresh.get("VmRSS", 0.0), 1),
        "rss_before_mb": round(before.get("VmRSS", 0.0), 1),
        "rss_after_mb": round(after.get("VmRSS", 0.0), 1),
        "peak_rss_mb": round(after.get("VmHWM", 0.0), 1),
        "rss_after_each_walk_mb": {k: round(v, 1) for k, v in rss.items()},
        "walks": walks,
    }


def run(quick: bool = False, profile: bool = False, ops: int | None = None) -> list[Figure]:
    ops = ops or 2000
    m = measure(quick, ops)
    # A walk that failed (a server without page budgets: the gateway's 4 MiB
    # channel refuses its pages) or missed operations fails the target.
    complete = all(walk["operations"] == ops for walk in m["walks"].values())
    if not complete:
        note(f"{NAME}: a walk did not list all {ops} operations: {m['walks']}")
    after, before = m["rss_after_mb"], m["rss_before_mb"]
    note(f"{NAME}: RSS {before:.0f} MB before, {after:.0f} MB after, peak {m['peak_rss_mb']:.0f}")
    return [
        Figure(
            benchmark=NAME,
            figure=f"server RSS after listing {ops:,} ops of 255 KiB",
            value=after,
            unit="MB",
            baseline_name="RSS before listing",
            baseline=before,
            ratio=ratio(after, before),
            ratio_note="after/before, lower is better",
            target=f"<= {TARGET_MB:.0f} MB, every walk complete",
            met=after <= TARGET_MB and complete,
            details=m,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ops", type=int, default=None, help="default 2,000")
    args = parser.parse_args()
    standalone(run(args.quick, ops=args.ops), "list_rss")


if __name__ == "__main__":
    main()
