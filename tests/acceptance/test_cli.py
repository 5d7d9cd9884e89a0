"""The `longrun` CLI against the real server and worker: in-process through
`longrun_client.cli.run` (fast), and as a subprocess where the terminal matters
(progress without a TTY, Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2

from longrun_client.cli import run
from tests.acceptance.harness import Service
from tests.acceptance.test_clients import BACKENDS, running_service


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(request.param, tmp_path_factory.mktemp("cli")) as svc:
        yield svc


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def longrun(shared: Service, capsys: pytest.CaptureFixture[str]) -> Any:
    """`longrun --target SERVER ARGS...` in this process."""

    def invoke(*args: str) -> Outcome:
        code = run(["--target", shared.target, *args])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return invoke


#: The installed console script, as a user runs it: from another folder, with
#: no PYTHONPATH pointing into the repo.
LONGRUN = Path(sys.executable).parent / "longrun"


def _default_sigint() -> None:
    # A suite started in the background by a non-interactive shell inherits
    # SIGINT ignored, and so would the CLI; give it the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def cli_process(target: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRUN_")}
    env.pop("PYTHONPATH", None)
    env |= {"LONGRUN_TARGET": target, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen(
            [str(LONGRUN), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_submit_wait_prints_progress_lines_without_a_tty(shared: Service) -> None:
    with cli_process(shared.target, "submit", "sleep", "--param", "worktime=4", "--wait") as proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"slept_seconds": 4}
    lines = err.splitlines()
    # Progress is sampled (one WaitOperation a second), so which steps show varies;
    # a mid-way step must show, and the percentages never go back.
    percents = [int(p) for p in re.findall(r" (\d+)% ", err)]
    assert any("RUNNING" in line and re.search(r" (25|50|75)% ", line) for line in lines), err
    assert percents == sorted(percents), err
    assert lines[-1].endswith("SUCCEEDED 100% slept 4s of 4s"), err
    assert "\x1b[" not in err  # no terminal control codes in a pipe


def test_ctrl_c_stops_waiting_with_130(shared: Service, longrun: Any) -> None:
    with cli_process(shared.target, "submit", "sleep", "--param", "worktime=60", "--wait") as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:  # wait for the first progress line
            lines.append(line)
            if "RUNNING" in line:
                break
        name = lines[0].split()[0]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"{name} goes on" in err
    assert longrun("cancel", name).code == 0


def test_submit_params_labels_then_wait_and_get(longrun: Any) -> None:
    submitted = longrun(
        "submit",
        "noop",
        "--params-json",
        '{"x": [1], "a": 0}',
        "--param",
        "a=1",
        "--param",
        "b=true",
        "--param",
        "s=hello world",
        "--param",
        "n=null",
        "--label",
        "team=cli",
    )
    assert submitted.code == 0, submitted.err
    name = submitted.out.strip()
    assert name.startswith("projects/default/operations/")

    waited = longrun("wait", name, "--timeout", "30")
    assert waited.code == 0, waited.err
    assert waited.json() == {"x": [1], "a": 1, "b": True, "s": "hello world", "n": None}

    got = longrun("get", name).json()
    assert got["name"] == name and got["done"] is True
    assert got["metadata"]["labels"] == {"team": "cli"}
    assert got["metadata"]["state"] == "SUCCEEDED"
    assert got["response"]["value"]["a"] == 1


def test_submit_json_and_request_id(longrun: Any) -> None:
    request_id = "5f0c6b9e-3f7a-4c2e-9d1b-2a4e6f8a0b1c"
    first = longrun("submit", "noop", "--request-id", request_id, "--json")
    assert first.code == 0, first.err
    again = longrun("submit", "noop", "--request-id", request_id, "--json")
    assert first.json()["name"] == again.json()["name"]
    assert first.json()["metadata"]["@type"] == "type.googleapis.com/longrun.v1.JobMetadata"


def test_list_table_and_json(longrun: Any) -> None:
    names = {longrun("submit", "noop", "--label", "team=lister").out.strip() for _ in range(2)}
    for name in names:
        assert longrun("wait", name).code == 0
    listed = longrun("list", "--filter", 'labels.team = "lister"', "--page-size", "1", "--json")
    assert listed.code == 0, listed.err
    assert {op["name"] for op in listed.json()} == names

    table = longrun("list", "--filter", 'labels.team = "lister"')
    assert table.code == 0, table.err
    header = table.out.splitlines()[1]
    assert [w for w in header.split() if w.isalpha()] == [
        "name",
        "task",
        "state",
        "progress",
        "created",
    ]
    rows = [line for line in table.out.splitlines() if "operations/" in line]
    assert len(rows) == 2
    for row in rows:
        assert "noop" in row and "SUCCEEDED" in row and "100%" in row
    assert any(name in table.out for name in names)

    empty = longrun("list", "--filter", 'labels.team = "nobody"')
    assert empty.code == 0 and "no operations" in empty.err


def test_project_for_submit_and_list(longrun: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """--project (or LONGRUN_PROJECT) names where submit creates and what list lists."""
    team = f"team={uuid.uuid4().hex[:8]}"
    flt = f'labels.team = "{team.split("=")[1]}"'
    mine = longrun("submit", "noop", "--project", "cli-a", "--label", team).out.strip()
    assert mine.startswith("projects/cli-a/operations/"), mine
    monkeypatch.setenv("LONGRUN_PROJECT", "cli-b")
    theirs = longrun("submit", "noop", "--label", team).out.strip()
    assert theirs.startswith("projects/cli-b/operations/"), theirs
    listed = longrun("list", "--project", "cli-a", "--filter", flt, "--json")
    assert [op["name"] for op in listed.json()] == [mine]
    assert [op["name"] for op in longrun("list", "--filter", flt, "--json").json()] == [theirs]
    monkeypatch.delenv("LONGRUN_PROJECT")
    everything = longrun("list", "--filter", flt, "--json").json()
    assert sorted(op["name"] for op in everything) == sorted([mine, theirs])
    bad = longrun("submit", "noop", "--project", "Not_A_Project")
    assert bad.code != 0 and "project" in bad.err


def test_cancel_then_wait_exits_1(longrun: Any) -> None:
    name = longrun("submit", "sleep", "--param", "worktime=60").out.strip()
    cancelled = longrun("cancel", name)
    assert cancelled.code == 0 and name in cancelled.out
    waited = longrun("wait", name, "--timeout", "20")
    assert waited.code == 1, waited.err
    assert "CANCELLED" in waited.err


def test_delete_then_get_exits_3(longrun: Any) -> None:
    name = longrun("submit", "noop").out.strip()
    assert longrun("wait", name).code == 0
    deleted = longrun("delete", name)
    assert deleted.code == 0 and name in deleted.out
    missing = longrun("get", name)
    assert missing.code == 3
    assert "NOT_FOUND" in missing.err and "[OPERATION_NOT_FOUND]" in missing.err


def test_invalid_requests_exit_4(longrun: Any) -> None:
    unknown = longrun("submit", "no-such-task")
    assert unknown.code == 4
    assert "[TASK_UNKNOWN]" in unknown.err and "registered tasks" in unknown.err
    rejected = longrun("submit", "sleep", "--param", "worktime=forever")
    assert rejected.code == 4 and "[PARAMS_REJECTED]" in rejected.err
    assert longrun("get", "not-an-operation").code == 4


def test_failed_operation_exits_1(longrun: Any) -> None:
    failed = longrun(
        "submit", "fail", "--param", "permanent=true", "--param", "message=boom", "--wait"
    )
    assert failed.code == 1
    assert "operation failed" in failed.err and "boom" in failed.err
    assert "[TASK_FAILED]" in failed.err
    assert failed.out == ""


def test_wait_timeout_exits_6(longrun: Any) -> None:
    timed_out = longrun(
        "submit", "sleep", "--param", "worktime=30", "--wait", "--timeout", "0.5", "--json"
    )
    assert timed_out.code == 6, timed_out.err
    operation = timed_out.json()
    assert operation["done"] is False
    assert "is not done after 0.5s" in timed_out.err
    assert longrun("cancel", operation["name"]).code == 0


def test_usage_errors_exit_2(longrun: Any) -> None:
    assert longrun("submit", "noop", "--param", "novalue").code == 2
    bad_json = longrun("submit", "noop", "--params-json", "[1, 2]")
    assert bad_json.code == 2 and "JSON object" in bad_json.err
    assert longrun("frobnicate").code == 2


def test_unreachable_server_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--target", "127.0.0.1:1", "get", "operations/x"]) == 5
    assert "UNAVAILABLE" in capsys.readouterr().err


class RecordingOperations(grpc.GenericRpcHandler):
    """GetOperation only; remembers the metadata it was sent."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        with self.lock:
            self.metadata.append(dict(details.invocation_metadata))
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: operations_pb2.Operation(name=request.name),
            request_deserializer=operations_pb2.GetOperationRequest.FromString,
            response_serializer=operations_pb2.Operation.SerializeToString,
        )


def test_token_is_sent_as_bearer_metadata(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = RecordingOperations()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("LONGRUN_TOKEN", "s3cret")
        assert run(["--target", f"127.0.0.1:{port}", "get", "operations/abc"]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == "operations/abc"
    finally:
        server.stop(None)
    assert handler.metadata[0]["authorization"] == "Bearer s3cret"
