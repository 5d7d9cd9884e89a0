"""Tracing across the queue on real processes: a client's trace context
(a `traceparent` header, on gRPC or the HTTP gateway) continues in the
server's CreateJob span, crosses the queue inside the signed task message,
and the worker's attempt span (with its outcome event) joins the same trace; the
operation's metadata names the trace; each retried attempt is a span of its
own, linked to the first attempt's."""

from __future__ import annotations

import json
import secrets
import urllib.request
from pathlib import Path
from typing import Any

from tests.acceptance.faulty import FAULT_TASKS
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


def _attempts(spans: list[dict[str, Any]], task: str, name: str) -> list[dict[str, Any]]:
    """The `attempt TASK` spans of operation `name`, by attempt number."""
    return sorted(
        (
            s
            for s in spans
            if s["name"] == f"attempt {task}" and s["attributes"]["longrun.operation"] == name
        ),
        key=lambda s: int(s["attributes"]["longrun.attempt"]),
    )


def _outcomes(span: dict[str, Any]) -> list[dict[str, Any]]:
    """The `outcome` events of an attempt span (the write of what it came to)."""
    return [e for e in span.get("events", []) if e["name"] == "outcome"]


def _outcome_count(path: Path) -> int:
    return sum(len(_outcomes(s)) for s in _spans(path) if s["name"].startswith("attempt "))


def test_one_jobs_spans_share_the_clients_trace(backend: str, tmp_path: Path) -> None:
    server_file, worker_file = tmp_path / "server-spans.jsonl", tmp_path / "worker-spans.jsonl"
    env = backend_env(backend, tmp_path) | {
        "LONGRUN_TRACE_EXPORTER": "file",
        "LONGRUN_LOG_FORMAT": "json",
        "LONGRUN_TASK_MODULES": FAULT_TASKS,
    }
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server(extra_env={"LONGRUN_TRACE_FILE": str(server_file)})
        svc.start_worker(extra_env={"LONGRUN_TRACE_FILE": str(worker_file)})
        noop_trace, once_trace, failed_trace = (secrets.token_hex(16) for _ in range(3))
        noop = _create(svc, "noop", {"x": 1}, noop_trace)
        once = _create(svc, "fails_once", {}, once_trace)  # attempt 1 fails, 2 succeeds
        failed = _create(svc, "fail", {}, failed_trace)  # 3 attempts, all failed
        # The operation shows the trace id of its CreateJob call.
        for name, trace_id in ((noop, noop_trace), (once, once_trace), (failed, failed_trace)):
            op = svc.call(f"{OPS}/GetOperation", {"name": name})  # grpcurl: proto names
            assert op["metadata"]["trace_id"] == trace_id, op
        wait_for(
            lambda: _outcome_count(worker_file) == 1 + 2 + 3,
            30,
            "the worker's attempt spans with their outcome events",
        )
        untraced = svc.call(CREATE, {"task": "noop", "params": {}})
        # Without a traceparent the server starts a trace; the operation names it.
        assert len(untraced["metadata"]["trace_id"]) == 32

    server_spans, worker_spans = _spans(server_file), _spans(worker_file)
    creates = {s["trace_id"]: s for s in server_spans if s["name"] == CREATE_SPAN}
    # The job's server span continues the client's trace.
    create = creates[noop_trace]
    assert create["kind"] == "SERVER" and create["service"] == "longrun-server"
    assert creates[untraced["metadata"]["trace_id"]]["parent_span_id"] is None
    # The worker's attempt is the CreateJob span's child; the outcome write an event of it.
    assert all(s["name"].startswith("attempt ") for s in worker_spans)  # no other spans
    (attempt,) = [s for s in worker_spans if s["trace_id"] == noop_trace]
    assert attempt["name"] == "attempt noop"
    assert attempt["parent_span_id"] == create["span_id"]
    assert attempt["attributes"]["longrun.operation"] == noop
    assert attempt["attributes"]["longrun.attempt"] == 1
    assert attempt["service"] == "longrun-worker"
    assert attempt["links"] == []
    (outcome,) = _outcomes(attempt)
    assert outcome["attributes"]["longrun.ending"] == "done"
    assert 0 <= outcome["attributes"]["longrun.write_seconds"] < 30
    assert attempt["start_ns"] <= outcome["time_ns"] <= attempt["end_ns"]

    # Retried jobs: every attempt is a span of its own in the job's trace,
    # under its CreateJob span (from the redelivered message, or from the
    # sweeper's republish, which carries the operation's stored trace
    # context), and each attempt after the first links to the first.
    for name, task, trace_id, count in (
        (once, "fails_once", once_trace, 2),
        (failed, "fail", failed_trace, 3),
    ):
        attempts = _attempts(worker_spans, task, name)
        assert [s["attributes"]["longrun.attempt"] for s in attempts] == list(range(1, count + 1))
        assert len({s["span_id"] for s in attempts}) == count
        for each in attempts:
            assert (each["trace_id"], each["parent_span_id"]) == (
                trace_id,
                creates[trace_id]["span_id"],
            ), each
        first = attempts[0]
        assert first["links"] == []
        for later in attempts[1:]:
            assert later["links"] == [
                {"trace_id": first["trace_id"], "span_id": first["span_id"]}
            ], later
        endings = [e["attributes"]["longrun.ending"] for a in attempts for e in _outcomes(a)]
        assert endings == ["done"] * count  # each attempt ran to its end (failed or not)
    assert noop_trace != once_trace != failed_trace

    # The worker's log entries inside the attempt name the trace (Cloud Logging's field).
    logged = [json.loads(line) for line in (tmp_path / "worker-0.log").read_text().splitlines()]
    (finish,) = [e for e in logged if e.get("action") == "finish" and e["operation"] == noop]
    assert str(finish["logging.googleapis.com/trace"]).endswith(f"/traces/{noop_trace}")
    assert finish["logging.googleapis.com/spanId"] == attempt["span_id"]


def test_a_traceparent_header_on_the_http_gateway_continues_the_callers_trace(
    backend: str, tmp_path: Path
) -> None:
    server_file = tmp_path / "server-spans.jsonl"
    port_file = tmp_path / "http-port"
    env = backend_env(backend, tmp_path) | {"LONGRUN_TRACE_EXPORTER": "file"}
    svc = Service(tmp_path, env)
    trace_id, parent_span = secrets.token_hex(16), secrets.token_hex(8)
    with svc.kept():
        svc.start_server(
            extra_env={
                "LONGRUN_TRACE_FILE": str(server_file),
                "LONGRUN_HTTP_ADDRESS": "127.0.0.1:0",
                "LONGRUN_HTTP_PORT_FILE": str(port_file),
            }
        )
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        created = _post(
            f"{base}/v1/jobs",
            {"task": "noop", "params": {}},
            {"traceparent": f"00-{trace_id}-{parent_span}-01", "tracestate": "vendor=1"},
        )
        malformed = _post(
            f"{base}/v1/jobs", {"task": "noop", "params": {}}, {"traceparent": "00-zz-1-01"}
        )
        wait_for(
            lambda: sum(s["name"] == CREATE_SPAN for s in _spans(server_file)) == 2,
            30,
            "the CreateJob spans",
        )
    assert created["metadata"]["traceId"] == trace_id
    (create,) = [s for s in _spans(server_file) if s["trace_id"] == trace_id]
    assert create["name"] == CREATE_SPAN and create["parent_span_id"] == parent_span
    # A malformed header is dropped: the call starts a trace of its own.
    other = malformed["metadata"]["traceId"]
    assert len(other) == 32 and other != trace_id
    (root,) = [s for s in _spans(server_file) if s["trace_id"] == other]
    assert root["parent_span_id"] is None


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as reply:
        assert reply.status == 200
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


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
            lambda: _outcome_count(worker_file) == 1,
            30,
            "the worker's attempt span with its outcome event",
        )
    ours = span.get_span_context()
    trace_id, span_id = f"{ours.trace_id:032x}", f"{ours.span_id:016x}"
    (create,) = [s for s in _spans(server_file) if s["name"] == CREATE_SPAN]
    assert (create["trace_id"], create["parent_span_id"]) == (trace_id, span_id)
    (attempt,) = [s for s in _spans(worker_file) if s["name"] == "attempt noop"]
    assert (attempt["trace_id"], attempt["parent_span_id"]) == (trace_id, create["span_id"])
