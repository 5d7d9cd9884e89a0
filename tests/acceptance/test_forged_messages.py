"""Work that cannot be forged, and errors that leak nothing, on real
processes (server + pull worker) on both backends: messages put straight on
the queue past the server never run unless signed by the deployment and
naming the operation's own task; a replayed message of a finished operation
runs nothing; a failed task's error carries a traceback only with
--debug-errors, and never an absolute path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from longrun_core.queue import TaskMessage
from longrun_core.signing import SigningKeys
from tests.acceptance.forgery import Queue, rejection_summary
from tests.acceptance.harness import ROOT, Service, backend_env, wait_for

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"


@pytest.fixture
def svc(backend: str, tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path, backend_env(backend, tmp_path))
    with service.kept():
        service.start_server()
        service.start_worker()
        yield service


@pytest.fixture
def queue(svc: Service, backend: str) -> Queue:
    return Queue(svc, backend)


def get(svc: Service, name: str) -> Any:
    return svc.call(f"{OPS}/GetOperation", {"name": name})


def wait_done(svc: Service, name: str) -> Any:
    done = svc.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
    assert done.get("done") is True, f"{done}\n{svc.logs()}"
    return done


def worker_log(svc: Service) -> str:
    return (svc.workdir / "worker-0.log").read_text(errors="replace")


def dead_reasons(queue: Queue, name: str, count: int) -> list[str]:
    found: list[str] = []

    def enough() -> bool:
        found[:] = [reason for op, reason in queue.dead_letters() if op == name]
        return len(found) >= count

    wait_for(enough, 60, f"{count} dead letters for {name}")
    return found


def test_messages_put_straight_on_the_queue_never_run(svc: Service, queue: Queue) -> None:
    keys = queue.keys()
    victim = queue.store_without_message("noop", {"stolen": True})
    control = queue.store_without_message("noop", {"genuine": True})
    queue.put(TaskMessage(victim, "noop"))  # unsigned
    queue.put(  # signed for the control operation, retargeted at the victim
        TaskMessage(control, "noop"), sign_with=keys, tamper={"operation": victim}
    )
    queue.put(TaskMessage(victim, "noop"), sign_with=SigningKeys.parse("k9:" + "9" * 32))
    queue.put(TaskMessage(control, "noop"), sign_with=keys)
    done = wait_done(svc, control)
    assert done["response"]["value"] == {"genuine": True}
    reasons = dead_reasons(queue, victim, 3)
    assert sorted(r.split(":")[0] for r in reasons) == [
        "rejected (bad_signature)",
        "rejected (unknown_key)",
        "rejected (unsigned)",
    ], reasons
    after = get(svc, victim)
    assert after["metadata"]["state"] == "QUEUED", after
    assert after["metadata"].get("attempt", 0) == 0
    log = worker_log(svc)
    finished = re.findall(r"finished (\S+) attempt", log)
    assert control in finished and victim not in finished, finished
    summary = rejection_summary(log)
    assert {"unsigned=1", "unknown_key=1", "bad_signature=1"} <= set(summary.split()), summary


def test_a_message_naming_another_task_runs_nothing(svc: Service, queue: Queue) -> None:
    """The task-confusion message, validly signed (a leaked key): a sleep(3600)
    operation named with task `noop` is neither run as `noop` nor claimed."""
    victim = queue.store_without_message("sleep", {"worktime": 3600})
    queue.put(TaskMessage(victim, "noop"), sign_with=queue.keys())
    [reason] = dead_reasons(queue, victim, 1)
    assert reason.startswith("rejected (task_mismatch): the message names task 'noop'"), reason
    after = get(svc, victim)
    assert after["metadata"]["state"] == "QUEUED", after
    assert after["metadata"].get("attempt", 0) == 0
    assert "response" not in after
    assert "task_mismatch=1" in rejection_summary(worker_log(svc)).split()


def test_a_replayed_message_of_a_finished_operation_runs_nothing(
    svc: Service, queue: Queue
) -> None:
    name = svc.call(CREATE, {"task": "noop", "params": {"n": 1}})["name"]
    assert wait_done(svc, name)["metadata"]["attempt"] == 1
    queue.put(TaskMessage(name, "noop"), sign_with=queue.keys())  # the same message again
    wait_for(
        lambda: f"{name} is already done: message acked" in worker_log(svc),
        60,
        "the replay to be acked",
    )
    after = get(svc, name)
    assert (after["metadata"]["state"], after["metadata"]["attempt"]) == ("SUCCEEDED", 1)
    assert re.findall(rf"finished {re.escape(name)} attempt", worker_log(svc)) == [
        f"finished {name} attempt"
    ]
    assert [r for op, r in queue.dead_letters() if op == name] == []


# ---- what a failed task's error shows ----


def _failed(svc: Service) -> Any:
    name = svc.call(CREATE, {"task": "fail", "params": {"permanent": True, "message": "nope"}})[
        "name"
    ]
    done = wait_done(svc, name)
    assert done["error"]["message"] == "PermanentError: nope", done
    return done["error"]


def test_a_failed_task_shows_no_traceback_by_default(svc: Service) -> None:
    error = _failed(svc)
    types = [d["@type"] for d in error["details"]]
    assert types == ["type.googleapis.com/google.rpc.ErrorInfo"], error
    assert "Traceback" not in str(error)
    assert str(ROOT) not in str(error)


def test_debug_errors_show_the_traceback_without_absolute_paths(
    backend: str, tmp_path: Path
) -> None:
    env = backend_env(backend, tmp_path) | {"LONGRUN_DEBUG_ERRORS": "true"}
    service = Service(tmp_path, env)
    with service.kept():
        service.start_server()
        service.start_worker()
        error = _failed(service)
    [debug] = [d for d in error["details"] if d["@type"].endswith("google.rpc.DebugInfo")]
    # grpcurl prints the proto field names (stack_entries); others use lowerCamelCase.
    stack = "".join(debug.get("stack_entries") or debug["stackEntries"])
    assert 'File "longrun_worker/builtin_tasks.py"' in stack, stack
    assert "PermanentError: nope" in stack
    text = stack + debug.get("detail", "")
    assert str(ROOT) not in text
    assert re.search(r"(^|[\s'\"(])/[\w.-]+/", text) is None, text
