"""`LONGRUN_LOG_FORMAT=json` on a real server and worker: every line they
write is a Cloud Logging entry, and the worker's entries about an attempt
name its operation and attempt."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.harness import Service, backend_env

OPS = "google.longrunning.Operations"


def _entries(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path.name} is empty"
    entries = [json.loads(line) for line in lines]  # each line on its own
    for entry in entries:
        assert isinstance(entry, dict)
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert isinstance(entry["message"], str) and isinstance(entry["time"], str)
    return entries


def test_server_and_worker_write_one_json_entry_per_line(tmp_path: Path) -> None:
    env = backend_env("embedded", tmp_path) | {
        "LONGRUN_LOG_FORMAT": "json",
        "LONGRUN_TASK_MODULES": "tests.support.logging_tasks",
    }
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        op = svc.call("longrun.v1.Jobs/CreateJob", {"task": "fail", "params": {"permanent": True}})
        done = svc.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "60s"})
        assert done["metadata"]["state"] == "FAILED"
        handlers = {}
        for kind in ("sync", "async"):
            made = svc.call("longrun.v1.Jobs/CreateJob", {"task": f"logs_{kind}"})
            ended = svc.call(f"{OPS}/WaitOperation", {"name": made["name"], "timeout": "60s"})
            assert ended["metadata"]["state"] == "SUCCEEDED", ended
            handlers[kind] = made["name"]
    server = _entries(tmp_path / "server.log")
    assert any(str(e["message"]).startswith("serving plaintext on port") for e in server)
    worker = _entries(tmp_path / "worker-0.log")
    finished = [e for e in worker if e.get("action") == "finish" and e["operation"] == op["name"]]
    assert len(finished) == 1
    assert finished[0]["operation"] == op["name"]
    assert finished[0]["attempt"] == 1
    assert finished[0]["severity"] == "INFO"
    assert finished[0]["logger"] == "longrun.worker"
    for kind, name in handlers.items():
        (said,) = [e for e in worker if e["message"] == f"hello from logs_{kind}"]
        assert said["severity"] == "WARNING"
        assert said["logger"] == "tests.logging_tasks"
        assert (said.get("operation"), said.get("attempt")) == (name, 1), kind
