"""Shared pieces of the benchmarks: the result row, the process helpers
(our server and workers, redis + a Celery worker), statistics, and the
results table.

Every benchmark compares a figure against a baseline measured in the same
run on the same machine, so the ratio stays meaningful while the absolute
numbers move with whatever else the machine is doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.acceptance.harness import ROOT as ROOT
from tests.acceptance.harness import Service, backend_env, wait_for

RESULTS = ROOT / "bench" / "results"
#: Task modules for every server and worker a benchmark starts.
TASK_MODULES = "longrun_worker.builtin_tasks bench.tasks"


@dataclass
class Figure:
    """One row of the results table.

    `ratio` is always oriented so that bigger is better for us (for a
    latency: baseline / ours; for a throughput: ours / baseline), except where
    `ratio_note` says otherwise (e.g. the ListOperations page-size ratio)."""

    benchmark: str
    figure: str
    value: float | None
    unit: str
    baseline_name: str
    baseline: float | None
    ratio: float | None
    ratio_note: str
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of samples in seconds."""
    if not values_s:
        return {"n": 0}
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB (MiB)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---- our service ----


class BenchService(Service):
    """The acceptance harness's `Service` with production defaults: no short
    sweep interval, lease or heartbeat (the harness shortens them for tests)."""

    server_flags = ()
    worker_flags = ()
    listen_timeout = 90

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()


def bench_env(backend: str, workdir: Path, log_level: str = "") -> dict[str, str]:
    env = backend_env(backend, workdir)
    env["LONGRUN_TASK_MODULES"] = TASK_MODULES
    # WARNING unless the caller or BENCH_LOG_LEVEL asks for more (Celery's worker
    # runs at WARNING too: neither side pays for a log line per job).
    env["LONGRUN_LOG_LEVEL"] = log_level or os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    # The harness shortens the visibility timeout for its fault tests; benchmarks
    # use the default.
    env.pop("LONGRUN_VISIBILITY_TIMEOUT", None)
    return env


@contextlib.contextmanager
def longrun_service(
    backend: str,
    *,
    workers: int = 2,
    worker_args: Sequence[str] = (),
    server_args: Sequence[str] = (),
    log_level: str = "",
) -> Iterator[BenchService]:
    """Server + `workers` worker processes on a fresh backend (a new SQLite
    file, or a new emulator project); everything is stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
        workdir = Path(tmp)
        svc = BenchService(workdir, bench_env(backend, workdir, log_level))
        try:
            svc.start_server(*server_args)
            for _ in range(workers):
                svc.start_worker(*worker_args)
            yield svc
        finally:
            svc.stop()
            keep_logs(svc)


def keep_logs(svc: Service) -> None:
    """With BENCH_LOG_DIR set, copy the service's logs there (they live in a
    temporary directory otherwise). Set LONGRUN_LOG_LEVEL=INFO too to see
    each job's lines."""
    target = os.environ.get("BENCH_LOG_DIR")
    if not target:
        return
    out = Path(target) / f"{time.strftime('%H%M%S')}-{svc.workdir.name}"
    out.mkdir(parents=True, exist_ok=True)
    for log in svc.workdir.glob("*.log"):
        (out / log.name).write_bytes(log.read_bytes())


# ---- Celery (the baseline for the end-to-end figures) ----


@dataclass
class CeleryStack:
    redis_url: str
    procs: list[subprocess.Popen[bytes]]
    workdir: Path

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )


def _stop_procs(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The prefork pool's children are in the worker's process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def celery_stack(concurrency: int = 2) -> Iterator[CeleryStack]:
    """redis-server on a free loopback port plus a prefork Celery worker
    (`--concurrency`), broker and result backend both on that redis."""
    redis = _which("redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with (workdir / "redis.log").open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            redis,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(workdir),
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            wait_for(lambda: _port_open(port), 20, "redis-server to listen")
            env = dict(os.environ) | {"BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
            with (workdir / "celery.log").open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "bench.celery_app",
                            "worker",
                            "--pool",
                            "prefork",
                            "--concurrency",
                            str(concurrency),
                            "--loglevel",
                            "WARNING",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            stack = CeleryStack(url, procs, workdir)
            yield stack
        finally:
            _stop_procs(list(reversed(procs)))


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if not found:
        raise RuntimeError(
            f"{name} not found: `apt-get install -y redis-server nghttp2-client` "
            "(see docs/benchmarks.md)"
        )
    return found


# ---- results ----


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(figures: Sequence[Figure]) -> str:
    rows = [("benchmark", "figure", "baseline", "ratio", "target", "met?")]
    for f in figures:
        rows.append(
            (
                f.benchmark,
                f"{f.figure}: {fmt(f.value, f.unit)}",
                f"{f.baseline_name}: {fmt(f.baseline, f.unit)}",
                "-" if f.ratio is None else f"{f.ratio:.2f}x ({f.ratio_note})",
                f.target,
                {True: "yes", False: "NO", None: "n/a"}[f.met],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(figures: Sequence[Figure], meta: Mapping[str, Any], name: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    payload = {
        "meta": dict(meta)
        | {"time": stamp, "cpus": os.cpu_count(), "load_avg_start": meta.get("load_avg_start")},
        "figures": [f.to_json() for f in figures],
    }
    text = json.dumps(payload, indent=2)
    path = RESULTS / f"{name or stamp}.json"
    path.write_text(text)
    if not name:
        (RESULTS / "latest.json").write_text(text)
    return path


def standalone(figures: Sequence[Figure], module: str) -> None:
    """What `python -m bench.<module>` prints and writes after running alone."""
    print(table(figures), flush=True)
    path = write_results(figures, {"module": module}, name=f"{module}-latest")
    print(f"results: {path}", flush=True)


# ---- profiling ----


def start_profile(
    pid: int, name: str, seconds: float, *, gil_only: bool = False
) -> list[subprocess.Popen[bytes]]:
    """py-spy on `pid` for `seconds`: bench/results/<name>.svg (flame graph) and
    <name>.txt (collapsed stacks, for `python -m bench.profiles`). Returns the
    recorders to pass to `finish_profile`; empty if py-spy is missing.
    `gil_only`: only samples of threads holding the GIL (Python CPU, not
    threads blocked in a gRPC call or a lock)."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        note("py-spy not installed: no profile (pip install -r bench/requirements.txt)")
        return []
    RESULTS.mkdir(parents=True, exist_ok=True)
    procs = []
    for fmt_name, suffix in (("flamegraph", "svg"), ("raw", "txt")):
        procs.append(
            subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(seconds))),
                    "--rate",
                    "200",
                    "--format",
                    fmt_name,
                    "--output",
                    str(RESULTS / f"{name}.{suffix}"),
                    "--nonblocking",
                    *(["--gil"] if gil_only else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def finish_profile(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- CPU accounting (less sensitive to other load than wall-clock rates) ----

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, user+system CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by `root` and its live descendants (the prefork
    pool's children, say)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


class CpuMeter:
    """CPU seconds of named process trees between `start()` and `stop()`,
    plus this (client) process."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        self.pids = {name: list(p) for name, p in pids.items()}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out = {name: sum(tree_cpu(p) for p in pids) for name, pids in self.pids.items()}
        t = os.times()
        out["client"] = t.user + t.system
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        self.used = {k: round(end[k] - self._start.get(k, 0.0), 3) for k in end}
        return self.used
