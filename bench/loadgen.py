"""Load generators for unary gRPC calls, run in their own process so the
server under test gets the machine's other core.

* h2load (Debian `nghttp2-client`), the default: it sends a pre-built,
  gRPC-framed request body (5-byte prefix + serialized message) as an HTTP/2
  POST with `content-type: application/grpc` and `te: trailers`. h2load
  counts HTTP status only, and a gRPC error is also HTTP 200, so the run is
  checked by the DATA bytes received per request: a real answer carries the
  framed response message, an error (trailers-only) carries none.
* A Python grpc.aio generator (`python -m bench.loadgen ...`), used when
  h2load is missing or with `--loadgen python`: `--concurrency` coroutines
  on `--channels` channels, each calling in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass
class LoadResult:
    tool: str
    seconds: float
    ok: int
    failed: int
    rps: float
    data_bytes_per_ok: float | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def have_h2load() -> bool:
    return shutil.which("h2load") is not None


_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+)")
_DATA = re.compile(r"\((\d+)\) data")


def h2load(
    target: str,
    path: str,
    request: bytes,
    *,
    seconds: float,
    warmup: float,
    connections: int,
    streams: int,
) -> LoadResult:
    """Run h2load for `seconds` after `warmup` against http://target/path."""
    exe = shutil.which("h2load")
    if exe is None:
        raise RuntimeError("h2load not found: apt-get install -y nghttp2-client")
    with tempfile.NamedTemporaryFile(suffix=".bin") as body:
        body.write(grpc_frame(request))
        body.flush()
        cmd = [
            exe,
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-t",
            "1",
            "-D",
            str(int(seconds)),
            "--warm-up-time",
            str(int(warmup)),
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{target}{path}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
    out = done.stdout
    finished = _FINISHED.search(out)
    requests = _REQUESTS.search(out)
    data = _DATA.search(out)
    if done.returncode != 0 or finished is None or requests is None:
        raise RuntimeError(f"h2load failed ({done.returncode}):\n{out}\n{done.stderr}")
    ok, failed = int(requests.group(4)), int(requests.group(5))
    return LoadResult(
        tool="h2load",
        seconds=float(finished.group(1)),
        ok=ok,
        failed=failed,
        rps=float(finished.group(2)),
        data_bytes_per_ok=(int(data.group(1)) / ok) if data and ok else None,
    )


def python_loadgen(
    target: str,
    method: str,
    request: bytes,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
) -> LoadResult:
    """Run `python -m bench.loadgen` in a child process and read its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as body:
        body.write(request)
        body.flush()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--target",
                target,
                "--method",
                method,
                "--request-file",
                body.name,
                "--seconds",
                str(seconds),
                "--warmup",
                str(warmup),
                "--concurrency",
                str(concurrency),
                "--channels",
                str(channels),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + warmup + 60,
            cwd=Path(__file__).resolve().parents[1],
        )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{done.stderr}")
    return LoadResult(**json.loads(done.stdout))


async def _run(
    target: str,
    method: str,
    request: bytes,
    seconds: float,
    warmup: float,
    concurrency: int,
    channels: int,
) -> LoadResult:
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    calls = [
        ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in chans
    ]
    counting = False
    ok = failed = 0
    stop = False

    async def loop(i: int) -> None:
        nonlocal ok, failed
        call = calls[i % len(calls)]
        while not stop:
            try:
                await call(request, timeout=30)
                if counting:
                    ok += 1
            except grpc.RpcError:
                if counting:
                    failed += 1

    tasks = [asyncio.create_task(loop(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    counting = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    counting = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks)
    for ch in chans:
        await ch.close()
    return LoadResult("python-grpc.aio", elapsed, ok, failed, ok / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description="unary gRPC load generator (grpc.aio)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--request-file", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(
        _run(
            args.target,
            args.method,
            args.request_file.read_bytes(),
            args.seconds,
            args.warmup,
            args.concurrency,
            args.channels,
        )
    )
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
