"""1. GetOperation throughput: our server (embedded backend, one stored done
operation) against a bare grpc.aio servicer that returns the same Operation
from a dict (`bench.bare_server`), under the same load generator (h2load,
or `--loadgen python`). Rounds alternate between the two servers and the
median of each side is taken. Target: ours >= 0.8x the bare servicer.

    python -m bench.get_throughput [--quick] [--profile] [--loadgen h2load|python]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from bench import loadgen
from bench.common import (
    ROOT,
    Figure,
    finish_profile,
    longrun_service,
    note,
    ratio,
    standalone,
    start_profile,
)
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import wait_for

METHOD = "/google.longrunning.Operations/GetOperation"
NAME = "1 GetOperation throughput"


def done_operation(target: str) -> operations_pb2.Operation:
    """Create a noop job and wait for a worker to finish it."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        op = jobs_pb2_grpc.JobsStub(channel).CreateJob(
            jobs_pb2.CreateJobRequest(task="noop"), timeout=10
        )
        ops = operations_pb2_grpc.OperationsStub(channel)
        op = ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=op.name, timeout=duration_pb2.Duration(seconds=30)
            ),
            timeout=35,
        )
        if not op.done:
            raise RuntimeError(f"{op.name} not done after 30 s")
        return ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=10)


def start_bare(workdir: Path, op: operations_pb2.Operation) -> tuple[subprocess.Popen[bytes], int]:
    op_file = workdir / "op.bin"
    op_file.write_bytes(op.SerializeToString())
    port_file = workdir / f"bare-port-{uuid.uuid4().hex[:6]}"
    with (workdir / "bare.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_server",
                "--operation-file",
                str(op_file),
                "--port-file",
                str(port_file),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(
        lambda: (port_file.exists() and port_file.read_text() != "") or proc.poll() is not None,
        60,
        "the bare server to listen",
    )
    if proc.poll() is not None:
        raise RuntimeError(f"bare server exited: {(workdir / 'bare.log').read_text()}")
    return proc, int(port_file.read_text())


def same_answer(target: str, request: bytes, expected: bytes) -> None:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        got = call(request, timeout=10)
    if got != expected:
        raise RuntimeError(f"{target} answered a different Operation")


def load(target: str, request: bytes, tool: str, seconds: float, warmup: float) -> dict[str, Any]:
    if tool == "h2load":
        result = loadgen.h2load(
            target, METHOD, request, seconds=seconds, warmup=warmup, connections=4, streams=32
        )
    else:
        result = loadgen.python_loadgen(
            target, METHOD, request, seconds=seconds, warmup=warmup, concurrency=64, channels=2
        )
    return result.to_json()


def run(quick: bool = False, profile: bool = False, tool: str | None = None) -> list[Figure]:
    tool = tool or ("h2load" if loadgen.have_h2load() else "python")
    rounds, seconds, warmup = (1, 3, 1) if quick else (3, 5, 1)
    with longrun_service("embedded", workers=1) as svc:
        op = done_operation(svc.target)
        svc.stop_workers()
        expected = op.SerializeToString()
        request = operations_pb2.GetOperationRequest(name=op.name).SerializeToString()
        bare, bare_port = start_bare(svc.workdir, op)
        bare_target = f"127.0.0.1:{bare_port}"
        try:
            same_answer(svc.target, request, expected)
            same_answer(bare_target, request, expected)
            ours: list[dict[str, Any]] = []
            base: list[dict[str, Any]] = []
            for i in range(rounds):
                # Alternate which side goes first so drift in machine load cancels out.
                order = [(ours, svc.target), (base, bare_target)]
                for runs, target in order if i % 2 == 0 else reversed(order):
                    runs.append(load(target, request, tool, seconds, warmup))
                    note(f"{NAME}: {target} {runs[-1]['rps']:.0f} req/s")
            if profile and svc.server is not None:
                recorders = start_profile(svc.server.pid, "get_operation", seconds)
                load(svc.target, request, tool, seconds, 0)
                finish_profile(recorders)
        finally:
            bare.terminate()
            bare.wait(timeout=10)
    for r in ours + base:
        per = r.get("data_bytes_per_ok")
        if r["failed"] or (per is not None and per < len(expected)):
            raise RuntimeError(f"{NAME}: failed or empty answers under load: {r}")
    value = statistics.median(r["rps"] for r in ours)
    baseline = statistics.median(r["rps"] for r in base)
    rel = ratio(value, baseline)
    return [
        Figure(
            benchmark=NAME,
            figure="longrun GetOperation",
            value=value,
            unit="req/s",
            baseline_name="bare grpc.aio dict servicer",
            baseline=baseline,
            ratio=rel,
            ratio_note="ours/bare",
            target=">= 0.8x",
            met=None if rel is None else rel >= 0.8,
            details={"tool": tool, "ours": ours, "bare": base, "response_bytes": len(expected)},
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy our server under load")
    parser.add_argument("--loadgen", choices=["h2load", "python"], default=None)
    args = parser.parse_args()
    standalone(run(args.quick, args.profile, args.loadgen), "get_throughput")


if __name__ == "__main__":
    main()
