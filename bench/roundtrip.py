"""3. Single-job round trip: one client, one job at a time: CreateJob, then
WaitOperation until the outcome is there (no polling), on the embedded
backend with 2 workers. Baseline: Celery's `noop.delay().get()` (redis
broker and result backend, prefork `--concurrency 2`), measured in the same
run with interleaved batches. Target: our p50 <= Celery's p50.

    python -m bench.roundtrip [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench import clients
from bench.common import (
    BenchService,
    Figure,
    celery_stack,
    finish_profile,
    longrun_service,
    note,
    percentile,
    ratio,
    standalone,
    start_profile,
    summary_ms,
)

NAME = "3 single-job round trip"


def plan(quick: bool) -> tuple[int, int]:
    """(batches, jobs per batch) per side."""
    return (2, 50) if quick else (4, 100)


def measure(
    backend: str, quick: bool, profile: str = ""
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Interleaved batches of sequential round trips; (ours, celery) latencies in seconds."""
    batches, per_batch = plan(quick)
    ours: list[float] = []
    theirs: list[float] = []
    with longrun_service(backend, workers=2) as svc, celery_stack(concurrency=2) as stack:
        app = clients.celery_app(stack.redis_url)
        try:
            clients.celery_ready(app)
            asyncio.run(clients.longrun_roundtrips(svc.target, n=0, warmup=10))
            clients.celery_roundtrips(app, n=0, warmup=10)
            for i in range(batches):
                steps = [
                    lambda: _ours(svc, per_batch, ours),
                    lambda: _celery(app, per_batch, theirs),
                ]
                for step in steps if i % 2 == 0 else reversed(steps):
                    step()
            if profile:
                _profiled(svc, per_batch, profile)
        finally:
            app.close()
    note(
        f"{NAME}: longrun/{backend} p50 {1000 * percentile(ours, 50):.1f} ms, "
        f"celery p50 {1000 * percentile(theirs, 50):.1f} ms"
    )
    return ours, theirs, {"batches": batches, "jobs_per_batch": per_batch}


def _ours(svc: BenchService, n: int, into: list[float]) -> None:
    into += asyncio.run(clients.longrun_roundtrips(svc.target, n=n, warmup=0)).latencies


def _celery(app: Any, n: int, into: list[float]) -> None:
    into += clients.celery_roundtrips(app, n=n, warmup=0).latencies


def _profiled(svc: BenchService, n: int, name: str) -> None:
    assert svc.server is not None
    recorders = start_profile(svc.server.pid, f"{name}-server", 5)
    recorders += start_profile(svc.workers[0].pid, f"{name}-worker", 5)
    asyncio.run(clients.longrun_roundtrips(svc.target, n=n * 3, warmup=0))
    finish_profile(recorders)


def figures(
    name: str,
    backend: str,
    ours: list[float],
    theirs: list[float],
    info: dict[str, Any],
    p50_target_ms: float | None = None,
) -> list[Figure]:
    p50, p99 = 1000 * percentile(ours, 50), 1000 * percentile(ours, 99)
    c50, c99 = 1000 * percentile(theirs, 50), 1000 * percentile(theirs, 99)
    detail = info | {"longrun_ms": summary_ms(ours), "celery_ms": summary_ms(theirs)}
    r50 = ratio(c50, p50)
    if p50_target_ms is None:
        target, met = "p50 <= Celery's", None if r50 is None else r50 >= 1.0
    else:
        target, met = f"p50 <= {p50_target_ms:.0f} ms", p50 <= p50_target_ms
    return [
        Figure(
            benchmark=name,
            figure=f"longrun/{backend} p50",
            value=p50,
            unit="ms",
            baseline_name="Celery delay().get() p50",
            baseline=c50,
            ratio=r50,
            ratio_note="celery/ours",
            target=target,
            met=met,
            details=detail,
        ),
        Figure(
            benchmark=name,
            figure=f"longrun/{backend} p99",
            value=p99,
            unit="ms",
            baseline_name="Celery delay().get() p99",
            baseline=c99,
            ratio=ratio(c99, p99),
            ratio_note="celery/ours",
            target="reported",
            met=None,
            details={},
        ),
    ]


def run(quick: bool = False, profile: bool = False) -> list[Figure]:
    ours, theirs, info = measure("embedded", quick, "roundtrip" if profile else "")
    return figures(NAME, "embedded", ours, theirs, info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    standalone(run(args.quick, args.profile), "roundtrip")


if __name__ == "__main__":
    main()
