"""16. Scale-out: no-op jobs/s (create -> a worker runs `noop` -> Wait) with
1 and with 2 server processes on one store, the same 2 worker processes.

Both servers run throughout, on their own ports; the rounds alternate
between a client channel to server A only and one spreading its calls over
A and B (`ipv4:A,B` with round_robin, what the Python client does with such
a target), so a change in the machine's load hits both. Figures: the median
round's jobs/s and their ratio (2 servers / 1), and the CPU of server(s) +
workers per job. On a machine with fewer free cores than processes the
ratio measures contention more than scaling; CPU per job does not move with
load. Embedded here; the Firestore + Pub/Sub figures come from
bench.google_e2e (it calls `measure("google", ...)`).

    python -m bench.scale_out [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import clients
from bench.common import (
    BenchService,
    CpuMeter,
    Figure,
    bench_env,
    keep_logs,
    note,
    ratio,
    standalone,
    summary_ms,
)
from bench.jobs_throughput import interleave, median_of

NAME = "16 scale-out: no-op jobs/s"
CONCURRENCY = 32
WORKERS = 2


@contextlib.contextmanager
def two_servers(backend: str, workers: int = WORKERS) -> Iterator[list[BenchService]]:
    """Servers A and B (own ports, one store) and `workers` worker processes (on A's side)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{backend}-") as tmp:
        workdir = Path(tmp)
        env = bench_env(backend, workdir)
        a = BenchService(workdir, env)
        b = BenchService(workdir, env, server_log="server-b.log")
        try:
            a.start_server()
            b.start_server()
            for _ in range(workers):
                a.start_worker()
            yield [a, b]
        finally:
            b.stop()
            a.stop()
            keep_logs(a)


def one_round(
    servers: list[BenchService], active: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """Load through the first `active` servers; CPU of every server and worker."""
    a = servers[0]
    pids = {f"server-{i}": [s.server.pid] for i, s in enumerate(servers) if s.server}
    meter = CpuMeter(pids | {"workers": [w.pid for w in a.workers]})
    target = (
        servers[0].target if active == 1 else "ipv4:" + ",".join(s.target for s in servers[:active])
    )
    meter.start()
    stats = asyncio.run(
        clients.longrun_load(target, concurrency=CONCURRENCY, seconds=seconds, warmup=warmup)
    )
    meter.stop()
    service_cpu = sum(v for k, v in meter.used.items() if k != "client")
    return {
        "servers": active,
        "rate": stats.rate,
        "completed": stats.completed,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "latency_ms": summary_ms(stats.latencies),
        "cpu_s": meter.used,
        "service_cpu_ms_per_job": round(1000 * service_cpu / max(stats.total, 1), 3),
    }


def measure(backend: str, quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rounds, warmup, seconds = (1, 1.0, 4.0) if quick else (3, 1.0, 5.0)
    with two_servers(backend) as servers:
        for s in servers:
            asyncio.run(clients.longrun_roundtrips(s.target, n=0, warmup=3))

        def run_with(active: int) -> dict[str, Any]:
            r = one_round(servers, active, warmup, seconds)
            note(f"{NAME}: {backend} {active} server(s) {r['rate']:.0f} jobs/s")
            return r

        two, one = interleave(rounds, lambda: run_with(2), lambda: run_with(1))
    return two, one


def figures(backend: str, two: list[dict[str, Any]], one: list[dict[str, Any]]) -> list[Figure]:
    value, baseline = median_of(two, "rate"), median_of(one, "rate")
    common = {"client_concurrency": CONCURRENCY, "workers": WORKERS}
    return [
        Figure(
            benchmark=NAME,
            figure=f"longrun/{backend} 2 servers jobs/s",
            value=value,
            unit="jobs/s",
            baseline_name="1 server, same workers",
            baseline=baseline,
            ratio=ratio(value, baseline),
            ratio_note="2 servers/1",
            target="reported",
            met=None,
            details=common | {"two": two, "one": one},
        ),
        Figure(
            benchmark=NAME,
            figure=f"longrun/{backend} 2 servers CPU per job",
            value=median_of(two, "service_cpu_ms_per_job"),
            unit="ms",
            baseline_name="1 server",
            baseline=median_of(one, "service_cpu_ms_per_job"),
            ratio=ratio(
                median_of(one, "service_cpu_ms_per_job"), median_of(two, "service_cpu_ms_per_job")
            ),
            ratio_note="1 server/2",
            target="reported",
            met=None,
            details=common,
        ),
    ]


def run(quick: bool = False, profile: bool = False) -> list[Figure]:
    two, one = measure("embedded", quick)
    return figures("embedded", two, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    standalone(run(args.quick), "scale_out")


if __name__ == "__main__":
    main()
