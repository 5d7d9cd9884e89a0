"""Where the Google path's CPU goes: server + 2 workers on the Firestore and
Pub/Sub emulators, `CONCURRENCY` no-op jobs in flight from one asyncio
client; CPU seconds of our processes only (/proc utime + stime of the
server and worker trees; the emulators' JVMs are not ours), per job, split
by process, with the create -> done latency. With --profile, py-spy
records the server and one worker (bench/results/google-cpu-*.txt; summarize
with `python -m bench.profiles`).

    python -m scripts.emulators run -- python -m bench.google_cpu [--seconds 8] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench import clients
from bench.common import CpuMeter, finish_profile, longrun_service, start_profile, summary_ms

CONCURRENCY = 32


def measure(seconds: float, profile: bool, concurrency: int = CONCURRENCY) -> dict[str, object]:
    with longrun_service("google", workers=2) as svc:
        assert svc.server is not None
        asyncio.run(clients.longrun_roundtrips(svc.target, n=0, warmup=10))
        meter = CpuMeter({"server": [svc.server.pid], "workers": [w.pid for w in svc.workers]})
        recorders = []
        if profile:
            recorders = start_profile(
                svc.server.pid, "google-cpu-server", seconds + 1, gil_only=True
            )
            recorders += start_profile(
                svc.workers[0].pid, "google-cpu-worker", seconds + 1, gil_only=True
            )
        meter.start()
        stats = asyncio.run(
            clients.longrun_load(svc.target, concurrency=concurrency, seconds=seconds, warmup=1.0)
        )
        meter.stop()
        finish_profile(recorders)
    jobs = max(stats.total, 1)
    return {
        "jobs_per_s": round(stats.rate, 1),
        "jobs": stats.total,
        "errors": stats.errors,
        "server_cpu_ms_per_job": round(1000 * meter.used["server"] / jobs, 2),
        "workers_cpu_ms_per_job": round(1000 * meter.used["workers"] / jobs, 2),
        "service_cpu_ms_per_job": round(
            1000 * (meter.used["server"] + meter.used["workers"]) / jobs, 2
        ),
        "latency_ms": summary_ms(stats.latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.profile, args.concurrency), indent=1))


if __name__ == "__main__":
    main()
