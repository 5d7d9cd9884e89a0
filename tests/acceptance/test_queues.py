"""Queues on real processes (server + 2 workers), on the embedded backend
and on the emulators, driven through the `longrun` CLI and grpcurl:
the resource, pause / resume (running attempts finish, new ones wait, then
run), purge (every queued job ends CANCELLED, code 1), and schedule_time
(not run before it, also across a restart of every process)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from longrun_client.cli import run
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.test_clients import BACKENDS, require_backend


@dataclass
class Env:
    svc: Service
    capsys: pytest.CaptureFixture[str]
    project: str

    def cli(self, *args: str) -> tuple[int, str]:
        code = run(["--target", self.svc.target, *args])
        out = self.capsys.readouterr().out
        return code, out

    def ok(self, *args: str) -> str:
        code, out = self.cli(*args)
        assert code == 0, (args, out, self.svc.logs())
        return out

    def queue(self, verb: str, queue: str = "default", *more: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            self.ok("queues", verb, queue, "--project", self.project, *more)
        )
        return data

    def submit(self, *args: str) -> str:
        return self.ok("submit", *args, "--project", self.project).strip()

    def get(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok("get", name))
        return data

    def done(self, name: str, timeout: float = 30) -> dict[str, Any]:
        wait_for(lambda: self.get(name)["done"], timeout, f"{name} done")
        return self.get(name)


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    require_backend(request.param)
    workdir: Path = tmp_path_factory.mktemp("queues")
    svc = Service(workdir, backend_env(request.param, workdir))
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        svc.start_worker()
        yield svc


@pytest.fixture
def env(service: Service, capsys: pytest.CaptureFixture[str]) -> Env:
    # A project of its own per test: its default queue starts RUNNING.
    return Env(service, capsys, f"q-{uuid.uuid4().hex[:8]}")


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_the_queue_resource_through_the_cli_and_grpcurl(env: Env) -> None:
    services = env.svc.grpcurl("list")
    assert "longrun.v1.Queues" in services.stdout.split()
    created = json.loads(
        env.ok(
            "queues", "create", "emails", "--project", env.project,
            "--max-attempts", "5", "--min-backoff", "2s", "--max-doublings", "3",
        )
    )  # fmt: skip
    assert created["name"] == f"projects/{env.project}/queues/emails"
    assert created["retryConfig"] == {"maxAttempts": 5, "minBackoff": "2s", "maxDoublings": 3}
    updated = env.queue("update", "emails", "--max-backoff", "60s")
    assert updated["retryConfig"]["maxBackoff"] == "60s"
    assert updated["retryConfig"]["maxAttempts"] == 5
    listed = json.loads(env.ok("queues", "list", "--project", env.project, "--json"))
    assert [q["name"].rsplit("/", 1)[1] for q in listed] == ["default", "emails"]
    got = env.svc.call(
        "longrun.v1.Queues/GetQueue", {"name": f"projects/{env.project}/queues/emails"}
    )
    # grpcurl prints proto field names.
    assert got["retry_config"]["max_backoff"] == "60s"
    op = env.submit("noop", "--queue", "emails")
    assert env.get(op)["metadata"]["max_attempts"] == 5
    code, _ = env.cli("queues", "get", "nothing", "--project", env.project)
    assert code == 3  # NOT_FOUND


def test_pause_holds_new_jobs_lets_running_ones_finish_and_resume_runs_them(env: Env) -> None:
    running = env.submit("sleep", "--param", "worktime=3")
    wait_for(lambda: env.get(running)["metadata"]["state"] == "RUNNING", 20, "the sleep to start")
    paused_at = time.time()
    assert env.queue("pause")["state"] == "PAUSED"
    time.sleep(1.0)  # the workers' view (refreshed every 0.5 s) has the pause by now
    held = [env.submit("noop") for _ in range(3)]

    def all_noted() -> bool:
        return all(env.get(name)["metadata"].get("wait_reason") == "QUEUE_PAUSED" for name in held)

    wait_for(all_noted, 30, "the held jobs to show their queue paused")
    time.sleep(1.0)
    for name in held:
        op = env.get(name)
        assert not op["done"] and op["metadata"]["state"] == "QUEUED"
    finished = env.done(running)
    assert "error" not in finished  # the running attempt finished while paused
    assert _time(finished["metadata"]["start_time"]) < paused_at
    resumed_at = time.time()
    assert env.queue("resume")["state"] == "RUNNING"
    for name in held:
        op = env.done(name)
        assert "error" not in op
        assert _time(op["metadata"]["start_time"]) >= resumed_at - 0.5


def test_purge_cancels_every_queued_job_of_the_queue(env: Env) -> None:
    env.queue("pause")
    time.sleep(1.0)
    queued = [env.submit("noop") for _ in range(4)]
    queued.append(env.submit("noop", "--in", "1h"))
    purged = env.queue("purge")
    assert "purgeTime" in purged
    for name in queued:
        op = env.done(name)
        assert op["error"]["code"] == 1
        assert op["metadata"]["state"] == "CANCELLED"
        assert "start_time" not in op["metadata"]
    env.queue("resume")
    after = env.done(env.submit("noop"))
    assert "error" not in after


def test_a_scheduled_job_runs_at_its_time_not_before(env: Env) -> None:
    name = env.submit("noop", "--in", "3s")
    op = env.get(name)
    schedule = _time(op["metadata"]["schedule_time"])
    assert op["metadata"]["wait_reason"] == "SCHEDULED"
    done = env.done(name)
    assert "error" not in done
    assert _time(done["metadata"]["start_time"]) >= schedule
    code, _ = env.cli("submit", "noop", "--in", "31d", "--project", env.project)
    assert code == 4  # INVALID_ARGUMENT: more than 30 days ahead


def test_a_scheduled_job_survives_a_restart_of_every_process(env: Env) -> None:
    name = env.submit("noop", "--in", "6s")
    schedule = _time(env.get(name)["metadata"]["schedule_time"])
    env.svc.stop()  # server and workers, gracefully
    env.svc.procs.clear()
    env.svc.workers.clear()
    env.svc.start_server()
    env.svc.start_worker()
    env.svc.start_worker()
    done = env.done(name, timeout=60)
    assert "error" not in done
    assert _time(done["metadata"]["start_time"]) >= schedule
