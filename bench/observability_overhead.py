"""14. What metrics and tracing cost on the no-op jobs/s figure: the
jobs_throughput round (create -> a worker runs `noop` -> WaitOperation,
16 in flight, server + 2 workers, embedded backend) against two services
side by side, one plain and one with `--metrics-address` and
`--trace-exporter file` on every process (spans for every RPC and attempt,
written synchronously to a file: a pessimistic exporter). Rounds alternate;
the median round counts.

Target: both on cost at most 10% of the jobs/s.

    python -m bench.observability_overhead [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench import clients
from bench.common import Figure, longrun_service, note, ratio, standalone
from bench.jobs_throughput import CONCURRENCY, WORKERS, interleave, longrun_round, median_of

NAME = "14 Metrics + tracing overhead"
#: Jobs/s the observed service must keep, as a fraction of the plain one's.
TARGET_RATIO = 0.9


def plan(quick: bool) -> tuple[int, float, float]:
    """(rounds, warmup seconds, measured seconds) per side."""
    return (2, 1.0, 4.0) if quick else (5, 1.0, 5.0)


def observed_args(spans: Path, what: str = "both") -> list[str]:
    metrics = ["--metrics-address", "127.0.0.1:0"]
    tracing = ["--trace-exporter", "file", "--trace-file", str(spans)]
    return {"both": metrics + tracing, "metrics": metrics, "tracing": tracing}[what]


def measure(
    quick: bool, what: str = "both", profile: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    rounds, warmup, seconds = plan(quick)
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp:
        spans = Path(tmp) / "spans.jsonl"
        flags = observed_args(spans, what)
        with (
            longrun_service("embedded", workers=WORKERS) as plain,
            longrun_service(
                "embedded", workers=WORKERS, server_args=flags, worker_args=flags
            ) as observed,
        ):
            for svc in (plain, observed):
                asyncio.run(clients.longrun_roundtrips(svc.target, n=0, warmup=5))

            def off() -> dict[str, Any]:
                r = longrun_round(plain, warmup, seconds, CONCURRENCY)
                note(f"{NAME}: plain {r['rate']:.0f} jobs/s ({r['errors']} errors)")
                return r

            def on() -> dict[str, Any]:
                r = longrun_round(observed, warmup, seconds, CONCURRENCY)
                note(f"{NAME}: {what} on {r['rate']:.0f} jobs/s ({r['errors']} errors)")
                return r

            a, b = interleave(rounds, on, off)
            if profile:  # one more round of each under py-spy (bench/results/observability-*)
                longrun_round(observed, warmup, seconds, CONCURRENCY, profile="observability-on")
                longrun_round(plain, warmup, seconds, CONCURRENCY, profile="observability-off")
        span_count = sum(1 for _ in spans.open()) if spans.exists() else 0
    return a, b, span_count


def run(quick: bool = False, profile: bool = False, what: str = "both") -> list[Figure]:
    on, off, span_count = measure(quick, what, profile)
    value, baseline = median_of(on, "rate"), median_of(off, "rate")
    r = ratio(value, baseline)
    return [
        Figure(
            benchmark=NAME,
            figure=f"no-op jobs/s with {what} on",
            value=value,
            unit="jobs/s",
            baseline_name="the same, both off",
            baseline=baseline,
            ratio=r,
            ratio_note="on/off",
            target=f">= {TARGET_RATIO:.2f}x",
            met=None if r is None else r >= TARGET_RATIO,
            details={
                "on": on,
                "off": off,
                "spans_written": span_count,
                "cpu_ms_per_job_on": median_of(on, "service_cpu_ms_per_job"),
                "cpu_ms_per_job_off": median_of(off, "service_cpu_ms_per_job"),
            },
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy one more round of each side")
    parser.add_argument(
        "--what", choices=["both", "metrics", "tracing"], default="both", help="what is on"
    )
    args = parser.parse_args()
    standalone(run(args.quick, args.profile, what=args.what), "observability_overhead")


if __name__ == "__main__":
    main()
