"""9. What process isolation costs per attempt: a trivial sync handler run
through the worker's `AttemptRunner` (start -> outcome: for a process, the
fork from the fork server, the request and params out as JSON, the result
back as a packed protobuf, the exit and the group clean-up), in a task
process (isolation="process", the default for sync tasks) against a thread
of its own (isolation="thread", what sync tasks did before) and the task
loop (isolation="inline").

Measured in this process, without the store and the queue, so the figure is
the isolation alone (an end-to-end job adds its writes on top, the same in
every mode): one attempt at a time (latency, p50 / p99) and 4 at a time (a
worker's default concurrency: attempts/s), plus the CPU each attempt costs
(this process, the fork server and its reaped children). Rounds alternate
between the modes; the median round counts.

Target: a process attempt adds at most 25 ms at p50 over a thread attempt
(a task worth a process of its own runs far longer than that).

    python -m bench.isolation_overhead [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing.forkserver
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, note, percentile, ratio, standalone, summary_ms
from longrun_core.packing import DEFAULT_MAX_RESULT_BYTES
from longrun_core.tasks import Isolation, TaskContext, TaskRegistry, TaskSpec
from longrun_worker.attempts import AttemptRunner
from longrun_worker.context import RunContext
from longrun_worker.isolation import in_thread

NAME = "9 Process isolation overhead"
MODES: tuple[Isolation, ...] = ("process", "thread", "inline")
CONCURRENCY = 4
#: p50 a process attempt may add to a thread attempt, in ms.
TARGET_MS = 25.0


def trivial(ctx: TaskContext) -> dict[str, Any]:
    """The handler: returns its params (so they cross the boundary both ways)."""
    return {"echo": ctx.params}


def plan(quick: bool) -> tuple[int, int]:
    """(attempts per mode per round, rounds)."""
    return (40, 3) if quick else (150, 5)


async def _no_progress(percent: int, message: str) -> None:
    return None


async def _attempts(runner: AttemptRunner, spec: TaskSpec, n: int, concurrency: int) -> list[float]:
    """Latencies (s) of `n` attempts, `concurrency` at a time."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            ctx = RunContext(
                operation=f"operations/bench{i:06d}",
                params={"i": i, "text": "x" * 100},
                attempt=1,
                progress_sink=_no_progress,
            )
            started = time.perf_counter()
            attempt = await runner.start(spec, ctx, max_attempts=1, limit=DEFAULT_MAX_RESULT_BYTES)
            outcome = await attempt.wait()
            latencies.append(time.perf_counter() - started)
            if outcome.response is None:
                raise RuntimeError(f"attempt {i} in {spec.runs_in} failed: {outcome.error!r}")

    await asyncio.gather(*(one(i) for i in range(n)))
    return latencies


def _cpu_seconds(pid: int, *, with_children: bool) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    used = int(fields[11]) + int(fields[12])
    if with_children:  # reaped children: the fork server reaps the task processes
        used += int(fields[13]) + int(fields[14])
    return used / ticks


def _cpu_now() -> float:
    own = os.times()
    total = own.user + own.system
    server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if server:
        total += _cpu_seconds(server, with_children=True)
    return total


async def measure(n: int, rounds: int) -> dict[str, dict[str, Any]]:
    specs = {mode: TaskSpec(f"trivial_{mode}", trivial, isolation=mode) for mode in MODES}
    runner = AttemptRunner(TaskRegistry(specs.values()), kill_grace=1.0, log_level="WARNING")
    await in_thread(runner.launcher.ensure_running)
    for spec in specs.values():  # warm up: imports, the task loop, the fork server
        await _attempts(runner, spec, 5, 1)
    per_round: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            cpu_before = _cpu_now()
            serial = await _attempts(runner, specs[mode], n, 1)
            cpu = (_cpu_now() - cpu_before) / n
            started = time.perf_counter()
            await _attempts(runner, specs[mode], n, CONCURRENCY)
            rate = n / (time.perf_counter() - started)
            per_round[mode].append(
                {
                    "p50_ms": percentile(serial, 50) * 1000,
                    "p99_ms": percentile(serial, 99) * 1000,
                    "rate": rate,
                    "cpu_ms": cpu * 1000,
                    **{f"serial_{k}": v for k, v in summary_ms(serial).items()},
                }
            )
            note(
                f"round {r + 1} {mode}: p50 {per_round[mode][-1]['p50_ms']:.2f} ms, "
                f"{rate:.0f} attempts/s at {CONCURRENCY}, {cpu * 1000:.2f} CPU ms each"
            )
    runner.close()
    return {
        mode: {
            key: statistics.median(r[key] for r in rows)
            for key in ("p50_ms", "p99_ms", "rate", "cpu_ms")
        }
        | {"rounds": rows}
        for mode, rows in per_round.items()
    }


def run(quick: bool = False, profile: bool = False) -> list[Figure]:
    n, rounds = plan(quick)
    note(f"{NAME}: {n} attempts per mode per round, {rounds} rounds")
    got = asyncio.run(measure(n, rounds))
    process, thread, inline = got["process"], got["thread"], got["inline"]
    added = process["p50_ms"] - thread["p50_ms"]
    details = {"attempts_per_round": n, "rounds": rounds, "modes": got}
    return [
        Figure(
            NAME,
            "process attempt p50",
            process["p50_ms"],
            "ms",
            "thread attempt p50",
            thread["p50_ms"],
            ratio(thread["p50_ms"], process["p50_ms"]),
            "thread/process",
            f"adds <= {TARGET_MS:g} ms",
            added <= TARGET_MS,
            details | {"added_p50_ms": added, "inline_p50_ms": inline["p50_ms"]},
        ),
        Figure(
            NAME,
            "process attempt p99",
            process["p99_ms"],
            "ms",
            "thread attempt p99",
            thread["p99_ms"],
            ratio(thread["p99_ms"], process["p99_ms"]),
            "thread/process",
            "reported",
            None,
            {"inline_p99_ms": inline["p99_ms"]},
        ),
        Figure(
            NAME,
            f"process attempts/s at {CONCURRENCY}",
            process["rate"],
            "/s",
            "thread attempts/s",
            thread["rate"],
            ratio(process["rate"], thread["rate"]),
            "process/thread",
            "reported",
            None,
            {"inline_rate": inline["rate"]},
        ),
        Figure(
            NAME,
            "process attempt CPU",
            process["cpu_ms"],
            "ms",
            "thread attempt CPU",
            thread["cpu_ms"],
            ratio(thread["cpu_ms"], process["cpu_ms"]),
            "thread/process",
            "reported",
            None,
            {"inline_cpu_ms": inline["cpu_ms"]},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    standalone(run(quick=args.quick), "isolation_overhead")


if __name__ == "__main__":
    main()
