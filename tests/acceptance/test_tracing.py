"""Tracing across the queue on real processes: a client's trace context
(a `traceparent` header) continues in the server's CreateJob span, crosses
the queue inside the signed task message, and the worker's attempt and
outcome spans join the same trace; a retry's attempt joins it too unless it
ran from the sweeper's republished message (a trace of its own)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from tests.acceptance.harness import Service, backend_env, wait_for

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"
CREATE_SPAN = f"/{CREATE}"


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _create(svc: Service, task: str, params: dict[str, object], trace_id: str) -> str:
    parent_span = secrets.token_hex(8)
    result = svc.grpcurl(
        CREATE,
        data={"task": task, "params": params},
        flags=("-H", f"traceparent: 00-{trace_id}-{parent_span}-01"),
    )
    assert result.code == 0, result.stderr
    name = str(result.json()["name"])
    done = svc.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
    assert done.get("done") is True, done
    return name


def test_one_jobs_spans_share_the_clients_trace(backend: str, tmp_path: Path) -> None:
    server_file, worker_file = tmp_path / "server-spans.jsonl", tmp_path / "worker-spans.jsonl"
    env = backend_env(backend, tmp_path) | {
        "LONGRUN_TRACE_EXPORTER": "file",
        "LONGRUN_LOG_FORMAT": "json",
    }
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server(extra_env={"LONGRUN_TRACE_FILE": str(server_file)})
        svc.start_worker(extra_env={"LONGRUN_TRACE_FILE": str(worker_file)})
        noop_trace, retried_trace = secrets.token_hex(16), secrets.token_hex(16)
        noop = _create(svc, "noop", {"x": 1}, noop_trace)
        retried = _create(svc, "fail", {}, retried_trace)  # 3 attempts
        wait_for(
            lambda: sum(s["name"] == "outcome" for s in _spans(worker_file)) == 4,
            30,
            "the worker's outcome spans",
        )

    server_spans, worker_spans = _spans(server_file), _spans(worker_file)
    # The job's server span continues the client's trace.
    (create,) = [
        s for s in server_spans if s["name"] == CREATE_SPAN and s["trace_id"] == noop_trace
    ]
    assert create["kind"] == "SERVER" and create["service"] == "longrun-server"
    # The worker's attempt is the CreateJob span's child, the outcome write the attempt's.
    (attempt,) = [s for s in worker_spans if s["trace_id"] == noop_trace and s["name"] != "outcome"]
    assert attempt["name"] == "attempt noop"
    assert attempt["parent_span_id"] == create["span_id"]
    assert attempt["attributes"]["longrun.operation"] == noop
    assert attempt["attributes"]["longrun.attempt"] == 1
    assert attempt["service"] == "longrun-worker"
    (outcome,) = [s for s in worker_spans if s["trace_id"] == noop_trace and s["name"] == "outcome"]
    assert outcome["parent_span_id"] == attempt["span_id"]
    assert outcome["attributes"]["longrun.ending"] == "done"

    # The retried job: its first attempt under its CreateJob span. A retry runs
    # from the redelivered message (same trace, same parent) or, when the
    # sweeper's republish at the end of the backoff wins the race, from a
    # message without context: then it is the root of a trace of its own
    # (docs/observability.md). Either way each attempt ran and is found once.
    (retried_create,) = [
        s for s in server_spans if s["name"] == CREATE_SPAN and s["trace_id"] == retried_trace
    ]
    attempts = sorted(
        (
            s
            for s in worker_spans
            if s["name"] == "attempt fail" and s["attributes"]["longrun.operation"] == retried
        ),
        key=lambda s: s["attributes"]["longrun.attempt"],
    )
    assert [s["attributes"]["longrun.attempt"] for s in attempts] == [1, 2, 3]
    assert attempts[0]["trace_id"] == retried_trace
    assert attempts[0]["parent_span_id"] == retried_create["span_id"]
    for later in attempts[1:]:
        joined = (later["trace_id"], later["parent_span_id"]) == (
            retried_trace,
            retried_create["span_id"],
        )
        assert joined or later["parent_span_id"] is None, later
    assert noop_trace != retried_trace

    # The worker's log entries inside the attempt name the trace (Cloud Logging's field).
    logged = [json.loads(line) for line in (tmp_path / "worker-0.log").read_text().splitlines()]
    (finish,) = [e for e in logged if e.get("action") == "finish" and e["operation"] == noop]
    assert str(finish["logging.googleapis.com/trace"]).endswith(f"/traces/{noop_trace}")
    assert finish["logging.googleapis.com/spanId"] == outcome["span_id"]


def test_the_python_client_propagates_its_callers_span(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from longrun_client import Client

    server_file, worker_file = tmp_path / "server-spans.jsonl", tmp_path / "worker-spans.jsonl"
    env = backend_env("embedded", tmp_path) | {"LONGRUN_TRACE_EXPORTER": "file"}
    svc = Service(tmp_path, env)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("client-test")
    with svc.kept():
        svc.start_server(extra_env={"LONGRUN_TRACE_FILE": str(server_file)})
        svc.start_worker(extra_env={"LONGRUN_TRACE_FILE": str(worker_file)})
        with Client(svc.target) as client:
            with tracer.start_as_current_span("submit") as span:
                future = client.submit("noop", {"traced": True})
            assert future.result(timeout=60) is not None
        wait_for(
            lambda: any(s["name"] == "outcome" for s in _spans(worker_file)),
            30,
            "the worker's outcome span",
        )
    ours = span.get_span_context()
    trace_id, span_id = f"{ours.trace_id:032x}", f"{ours.span_id:016x}"
    (create,) = [s for s in _spans(server_file) if s["name"] == CREATE_SPAN]
    assert (create["trace_id"], create["parent_span_id"]) == (trace_id, span_id)
    (attempt,) = [s for s in _spans(worker_file) if s["name"] == "attempt noop"]
    assert (attempt["trace_id"], attempt["parent_span_id"]) == (trace_id, create["span_id"])
