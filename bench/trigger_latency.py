"""12. Event triggers: Cloud Storage notifications published to the Pub/Sub
emulator -> `longrun-trigger` -> CreateJob on the server (embedded store).

* Latency: notifications published one at a time, 50 ms apart (no
  queueing); each sample is the operation's create_time (stamped by the
  server as it stores the operation, which is visible from then on) minus
  the time.time() just before the publish call (same machine, same clock).
  Target: p50 <= 100 ms.
* Throughput: a burst of notifications published at once; events/s from
  the first publish to the last operation's create_time.

No baseline: nothing else here turns events into operations.
Without PUBSUB_EMULATOR_HOST set, this runs itself again under
`python -m scripts.emulators run -- ...`.

    python -m bench.trigger_latency [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchService, Figure, bench_env, keep_logs, note, standalone
from bench.common import summary_ms as summarize
from longrun_client import Client
from tests.acceptance.harness import wait_for
from tests.acceptance.notifications import notification

NAME = "12 trigger: event -> operation"
TRIGGERS = """
[[trigger]]
name = "bench"
subscription = "{subscription}"
task = "noop"
project = "bench"
[trigger.filter]
eventType = "OBJECT_FINALIZE"
[trigger.params]
object = "{{attributes.objectId}}"
[trigger.labels]
object = "{{attributes.objectId}}"
round = "{{attributes.round}}"
"""


def plan(quick: bool) -> tuple[int, int]:
    """(paced samples, burst size)."""
    return (40, 100) if quick else (200, 500)


def measure(quick: bool) -> tuple[list[float], float, dict[str, Any]]:
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    paced, burst = plan(quick)
    gcp = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{gcp}/topics/uploads"
    subscription = f"projects/{gcp}/subscriptions/uploads"
    publisher, subscriber = PublisherClient(), SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        request={"name": subscription, "topic": topic, "ack_deadline_seconds": 30}
    )
    with tempfile.TemporaryDirectory(prefix="bench-trigger-") as tmp:
        workdir = Path(tmp)
        svc = BenchService(workdir, bench_env("embedded", workdir))
        triggers = workdir / "triggers.toml"
        triggers.write_text(TRIGGERS.format(subscription=subscription))
        stats = workdir / "stats.json"
        try:
            svc.start_server()
            svc._spawn(
                [
                    "-m",
                    "longrun_worker.triggers",
                    "--triggers-file",
                    str(triggers),
                    "--target",
                    svc.target,
                    "--stats-file",
                    str(stats),
                    "--max-messages",
                    "100",
                ],
                "trigger.log",
            )
            wait_for(stats.exists, 60, "the trigger to start")
            with Client(svc.target, project="bench") as client:
                # Warm-up: one event through the whole path.
                data, attrs = _event("warm", 0)
                publisher.publish(topic, data, **attrs).result(timeout=30)
                wait_for(lambda: any(client.list(filter='labels.round = "warm"')), 60, "warm-up")
                sent: dict[str, float] = {}
                for i in range(paced):
                    data, attrs = _event("paced", i)
                    sent[attrs["objectId"]] = time.time()
                    publisher.publish(topic, data, **attrs).result(timeout=30)
                    time.sleep(0.05)
                latencies = _created(client, "paced", sent, 120)
                first = time.time()
                events = [_event("burst", i) for i in range(burst)]
                futures = [publisher.publish(topic, d, **a) for d, a in events]
                for f in futures:
                    f.result(timeout=60)
                created = _created(
                    client, "burst", dict.fromkeys(_names("burst", burst), first), 300
                )
                rate = burst / max(created)
            counters = json.loads(stats.read_text())["totals"]
        finally:
            svc.stop()
            keep_logs(svc)
            subscriber.close()
            publisher.transport.close()
    info = {"paced": paced, "burst": burst, "counters": counters, "burst_s": round(max(created), 3)}
    return latencies, rate, info


def _names(round_: str, n: int) -> list[str]:
    return [f"{round_}/{i:05d}.docx" for i in range(n)]


def _event(round_: str, i: int) -> tuple[bytes, dict[str, str]]:
    data, attrs = notification("uploads", f"{round_}/{i:05d}.docx", 1 + i)
    return data, attrs | {"round": round_}


def _created(client: Client, round_: str, sent: dict[str, float], timeout: float) -> list[float]:
    """Seconds from each event's publish to its operation's create_time."""
    query = f'labels.round = "{round_}"'
    wait_for(lambda: len(list(client.list(filter=query))) >= len(sent), timeout, f"{round_} ops")
    out = []
    for op in client.list(filter=query):
        from longrun.v1 import jobs_pb2

        meta = jobs_pb2.JobMetadata()
        op.metadata.Unpack(meta)
        out.append(meta.create_time.ToDatetime().timestamp() - sent[meta.labels["object"]])
    return out


def figures(latencies: list[float], rate: float, info: dict[str, Any]) -> list[Figure]:
    s = summarize(latencies)
    return [
        Figure(
            NAME,
            "event -> operation p50",
            s["p50"],
            "ms",
            "-",
            None,
            None,
            "",
            "p50 <= 100 ms",
            s["p50"] <= 100,
            {"latency_ms": s, **info},
        ),
        Figure(
            NAME,
            "burst events/s",
            rate,
            "ev/s",
            "-",
            None,
            None,
            "",
            "-",
            None,
            info,
        ),
    ]


def inside(quick: bool) -> list[Figure]:
    return figures(*measure(quick))


def run(quick: bool = False, profile: bool = False) -> list[Figure]:
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return inside(quick)
    with tempfile.TemporaryDirectory(prefix="bench-trigger-") as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "scripts.emulators", "run", "--"]
        cmd += [sys.executable, "-m", "bench.trigger_latency", "--out", str(out)]
        cmd += ["--quick"] if quick else []
        note("starting the Pub/Sub emulator (scripts.emulators)")
        done = subprocess.run(cmd, cwd=ROOT, timeout=900)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"the trigger benchmark failed (exit {done.returncode})")
        return [Figure(**f) for f in json.loads(out.read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="(accepted, not used)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    args = parser.parse_args()
    result = run(args.quick)
    if args.out is not None:
        args.out.write_text(json.dumps([f.to_json() for f in result]))
        return
    standalone(result, "trigger_latency")


if __name__ == "__main__":
    main()
