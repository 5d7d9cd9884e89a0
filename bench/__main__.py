"""`make bench` = `python -m bench`: every benchmark against its baseline,
one table at the end, and bench/results/<timestamp>.json + latest.json.

    python -m bench [--quick] [--profile] [--only NAME ...] [--skip NAME ...]

Names: get_throughput, jobs_throughput, roundtrip, wake_latency, wait_10k,
list_latency, slow_filters, google_e2e, list_rss, isolation_overhead,
auth_overhead, trigger_latency, queues_schedule, observability_overhead,
queues_limits, scale_out. Each also
runs alone: `python -m bench.<name>`.
A benchmark that fails is reported as an error row; the others still run.
Exit status: 0 when every run benchmark worked (met targets or not), 1 if
one failed to run. Absolute numbers move with the machine's load; compare
the ratios (each baseline is measured in the same run).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback

from bench.common import Figure, note, table, write_results

BENCHMARKS = [
    "get_throughput",
    "jobs_throughput",
    "roundtrip",
    "wake_latency",
    "wait_10k",
    "list_latency",
    "slow_filters",
    "google_e2e",
    "list_rss",
    "isolation_overhead",
    "auth_overhead",
    "trigger_latency",
    "queues_schedule",
    "observability_overhead",
    "queues_limits",
    "scale_out",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-3 minute smoke run")
    parser.add_argument(
        "--profile", action="store_true", help="also py-spy the servers (bench/results/*.svg)"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[])
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    started = time.monotonic()
    meta: dict[str, object] = {
        "quick": args.quick,
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg(),
        "durations_s": {},
        "errors": {},
    }
    figures: list[Figure] = []
    failed = False
    for name in names:
        t0 = time.monotonic()
        note(f"--- {name}")
        try:
            module = importlib.import_module(f"bench.{name}")
            figures += module.run(quick=args.quick, profile=args.profile)
        except Exception as exc:
            failed = True
            traceback.print_exc()
            meta["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]  # type: ignore[index]
            figures.append(
                Figure(
                    name, "ERROR", None, "", "-", None, None, "", "-", False, {"error": str(exc)}
                )
            )
        meta["durations_s"][name] = round(time.monotonic() - t0, 1)  # type: ignore[index]
    meta["load_avg_end"] = os.getloadavg()
    meta["total_s"] = round(time.monotonic() - started, 1)
    path = write_results(figures, meta)
    print()
    print(table(figures))
    print()
    met = sum(1 for f in figures if f.met is True)
    unmet = sum(1 for f in figures if f.met is False)
    print(
        f"{met} targets met, {unmet} not met; {meta['total_s']} s; load average "
        f"{meta['load_avg_start']} -> {meta['load_avg_end']} on {os.cpu_count()} CPUs "
        "(absolute figures are noisy: compare ratios)"
    )
    print(f"results: {path} (and bench/results/latest.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
