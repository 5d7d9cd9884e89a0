"""`/metrics` of a real server and worker: each counter moves by exactly
what a known set of jobs (succeeded, failed, retried and dead-lettered,
cancelled, refused) makes it move; the WaitOperation gauge follows an open
call; the embedded queue's depth is read on scrape."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.acceptance.harness import Service, _grpcurl, backend_env, wait_for
from tests.acceptance.scrape import Scrape, scrape

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"
PROJECT = "metrics-test"


def _metrics_flags(svc: Service) -> tuple[list[str], Path]:
    port_file = svc.workdir / f"metrics-port-{uuid.uuid4().hex[:6]}"
    return ["--metrics-address", "127.0.0.1:0", "--metrics-port-file", str(port_file)], port_file


def _port(port_file: Path) -> int:
    wait_for(lambda: port_file.exists() and port_file.read_text() != "", 60, "a metrics port")
    return int(port_file.read_text())


def _create(svc: Service, task: str, params: dict[str, object]) -> str:
    op = svc.call(CREATE, {"parent": f"projects/{PROJECT}", "task": task, "params": params})
    return str(op["name"])


def _state(svc: Service, name: str) -> str:
    return str(svc.call(f"{OPS}/GetOperation", {"name": name})["metadata"]["state"])


def _done(svc: Service, names: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    for name in names:
        op = svc.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
        assert op.get("done") is True, op
        states[name] = op["metadata"]["state"]
    return states


def test_counters_move_by_exactly_what_the_jobs_did(backend: str, tmp_path: Path) -> None:
    svc = Service(tmp_path, backend_env(backend, tmp_path))
    with svc.kept():
        server_flags, server_port_file = _metrics_flags(svc)
        # No redispatch of unclaimed jobs during the test: each republish adds
        # a message, and the depth check counts the messages of waiting jobs.
        svc.start_server(*server_flags, "--redispatch-after", "120")
        server_port = _port(server_port_file)
        worker_flags, worker_port_file = _metrics_flags(svc)
        svc.start_worker(*worker_flags)
        worker_port = _port(worker_port_file)

        server_before, worker_before = scrape(server_port), scrape(worker_port)
        succeeded = [_create(svc, "noop", {"n": i}) for i in range(3)]
        permanent = _create(svc, "fail", {"permanent": True})
        transient = _create(svc, "fail", {})  # 3 attempts, 2 retries, then dead-lettered
        refused = svc.grpcurl(CREATE, data={"task": "no-such-task"})
        assert refused.code != 0
        sleeper = _create(svc, "sleep", {"worktime": 60})
        wait_for(lambda: _state(svc, sleeper) == "RUNNING", 60, "the sleep job to run")

        # An open WaitOperation shows in the gauge while it waits.
        waiting = subprocess.Popen(
            [
                _grpcurl(),
                "-plaintext",
                "-d",
                f'{{"name":"{sleeper}","timeout":"60s"}}',
                svc.target,
                f"{OPS}/WaitOperation",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: scrape(server_port).value("longrun_wait_operation_open") == 1,
                30,
                "the open WaitOperation in the gauge",
            )
            svc.call(f"{OPS}/CancelOperation", {"name": sleeper})
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
        assert sleeper.encode() in out  # its end state is checked below (_done)

        states = _done(svc, [*succeeded, permanent, transient, sleeper])
        assert [states[n] for n in succeeded] == ["SUCCEEDED"] * 3
        assert states[permanent] == states[transient] == "FAILED"
        assert states[sleeper] == "CANCELLED"
        # The worker counts an outcome after its write: wait for the last one to show.
        wait_for(
            lambda: (
                scrape(worker_port).minus(
                    worker_before,
                    "longrun_worker_outcomes_total",
                    task="sleep",
                    queue="default",
                    outcome="cancelled",
                )
                == 1
            ),
            30,
            "the cancelled outcome in the worker's metrics",
        )
        server_after, worker_after = scrape(server_port), scrape(worker_port)
        _check_server(server_before, server_after)
        _check_worker(worker_before, worker_after)
        if backend == "embedded":
            _check_queue_depth(svc, server_port)
        else:  # Pub/Sub's depth comes from Cloud Monitoring, not from here
            assert not server_after.has("longrun_queue_ready_messages")


def _check_server(before: Scrape, after: Scrape) -> None:
    created = "longrun_jobs_created_total"
    default = {"project": PROJECT, "queue": "default"}
    assert after.minus(before, created, task="noop", **default) == 3
    assert after.minus(before, created, task="fail", **default) == 2
    assert after.minus(before, created, task="sleep", **default) == 1
    assert after.minus(before, created, task="no-such-task", project="default") == 0
    # The worker ended every one of them: the server ended none.
    assert not any(k[0] == "longrun_jobs_ended_total" for k in after.samples)
    rpc = "longrun_rpc_duration_seconds_count"
    assert after.minus(before, rpc, method=f"/{CREATE}", code="OK") == 6
    assert after.minus(before, rpc, method=f"/{CREATE}", code="INVALID_ARGUMENT") == 1
    assert after.minus(before, rpc, method=f"/{OPS}/CancelOperation", code="OK") == 1
    # The test's one long wait, plus one per job in _done: all answered OK.
    assert after.minus(before, rpc, method=f"/{OPS}/WaitOperation", code="OK") == 7
    assert after.value("longrun_wait_operation_open") == 0
    # One insert per created operation, each timed.
    store = "longrun_store_call_duration_seconds_count"
    assert after.minus(before, store, call="insert", result="ok") == 6
    assert after.minus(before, store, call="read", result="ok") > 0
    assert after.minus(before, "longrun_leases_expired_total") == 0


def _check_worker(before: Scrape, after: Scrape) -> None:
    attempts = "longrun_worker_attempts_total"
    assert after.minus(before, attempts, task="noop") == 3
    assert after.minus(before, attempts, task="fail") == 1 + 3
    assert after.minus(before, attempts, task="sleep") == 1
    outcomes = "longrun_worker_outcomes_total"
    default = {"queue": "default"}
    assert after.minus(before, outcomes, task="noop", outcome="succeeded", **default) == 3
    assert after.minus(before, outcomes, task="fail", outcome="failed", **default) == 2
    assert after.minus(before, outcomes, task="fail", outcome="succeeded", **default) == 0
    assert after.minus(before, outcomes, task="sleep", outcome="cancelled", **default) == 1
    assert after.minus(before, "longrun_worker_retries_total", task="fail") == 2
    assert after.minus(before, "longrun_worker_retries_total", task="noop") == 0
    assert after.minus(before, "longrun_worker_dead_letters_total", task="fail") == 1
    assert after.minus(before, "longrun_worker_leases_lost_total", task="sleep") == 0
    duration = "longrun_worker_attempt_duration_seconds_count"
    assert after.minus(before, duration, task="noop", ending="done") == 3
    assert after.minus(before, duration, task="fail", ending="done") == 4
    assert after.minus(before, duration, task="sleep", ending="cancelled") == 1
    # The sleep job ran until it was cancelled: at least the time it took to see RUNNING.
    sleep_sum = "longrun_worker_attempt_duration_seconds_sum"
    assert after.minus(before, sleep_sum, task="sleep", ending="cancelled") > 0
    assert (
        after.minus(
            before, "longrun_store_call_duration_seconds_count", call="replace", result="ok"
        )
        > 0
    )


def _check_queue_depth(svc: Service, server_port: int) -> None:
    """With the worker gone, jobs wait: the depth shows them and their age grows."""
    for proc in svc.workers:
        proc.terminate()
        proc.wait(timeout=30)
    waiting = [_create(svc, "noop", {"waits": i}) for i in range(4)]
    # At least the waiting jobs' messages: a message an earlier job's stopped
    # worker had received (a finished operation's, acked as stale by the next
    # receiver) may be visible again too, depending on when its visibility
    # timeout ran out.
    wait_for(
        lambda: scrape(server_port).value("longrun_queue_ready_messages") >= len(waiting),
        30,
        "the queue depth to show the waiting jobs",
    )
    first = scrape(server_port).value("longrun_queue_oldest_ready_age_seconds")
    assert first >= 0
    wait_for(
        lambda: scrape(server_port).value("longrun_queue_oldest_ready_age_seconds") > first,
        30,
        "the oldest ready job's age to grow",
    )


def _queue(svc: Service, queue_id: str) -> None:
    svc.call(
        "longrun.v1.Queues/CreateQueue",
        {"parent": f"projects/{PROJECT}", "queue_id": queue_id, "queue": {}},
    )


def _create_in(svc: Service, queue_id: str, task: str, params: dict[str, object]) -> str:
    op = svc.call(
        CREATE,
        {"parent": f"projects/{PROJECT}", "task": task, "params": params, "queue": queue_id},
    )
    return str(op["name"])


def test_per_queue_counters_and_depth_with_capped_queue_labels(
    backend: str, tmp_path: Path
) -> None:
    """Jobs created and ended are counted by task and queue, queue depth and
    oldest ready age are per queue, and past --metrics-max-queues (2 here:
    `default` and the first other queue) queues share the label `_other`."""
    env = backend_env(backend, tmp_path) | {"LONGRUN_METRICS_MAX_QUEUES": "2"}
    svc = Service(tmp_path, env)
    with svc.kept():
        server_flags, server_port_file = _metrics_flags(svc)
        svc.start_server(*server_flags, "--redispatch-after", "120")
        server_port = _port(server_port_file)
        worker_flags, worker_port_file = _metrics_flags(svc)
        worker = svc.start_worker(*worker_flags)
        worker_port = _port(worker_port_file)
        for queue_id in ("qa", "qb", "qp", "qq", "qr"):
            _queue(svc, queue_id)
        server_before, worker_before = scrape(server_port), scrape(worker_port)

        # qa: the first queue past `default` both processes count, so its own label.
        first = [_create_in(svc, "qa", "noop", {"n": i}) for i in range(2)]
        first.append(_create_in(svc, "qa", "fail", {"permanent": True}))
        assert list(_done(svc, first).values()) == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
        # qb: past the cap, counted as `_other`.
        later = [_create_in(svc, "qb", "noop", {"n": 9})]
        assert list(_done(svc, later).values()) == ["SUCCEEDED"]
        wait_for(
            lambda: (
                sum(
                    scrape(worker_port).minus(worker_before, "longrun_worker_outcomes_total", **k)
                    for k in (
                        {"task": "noop", "queue": "qa", "outcome": "succeeded"},
                        {"task": "fail", "queue": "qa", "outcome": "failed"},
                        {"task": "noop", "queue": "_other", "outcome": "succeeded"},
                    )
                )
                == 4
            ),
            30,
            "the worker's outcomes by queue",
        )
        worker_after = scrape(worker_port)
        worker.terminate()
        worker.wait(timeout=30)

        # No worker now: jobs wait. qp gets 3 (one cancelled while queued: the
        # server ends it), qq and qr one each.
        waiting = [_create_in(svc, "qp", "noop", {"n": i}) for i in range(3)]
        waiting += [_create_in(svc, "qq", "noop", {}), _create_in(svc, "qr", "noop", {})]
        svc.call(f"{OPS}/CancelOperation", {"name": waiting[0]})
        assert _state(svc, waiting[0]) == "CANCELLED"

        def depth() -> dict[str, float]:
            got = scrape(server_port)
            return {
                dict(labels)["queue"]: value
                for (name, labels), value in got.samples.items()
                if name == "longrun_queue_ready_jobs"
            }

        # The two deepest queues by their ids (qq before qr on the tie), the rest `_other`.
        wait_for(lambda: depth() == {"qp": 2, "qq": 1, "_other": 1}, 30, "the depth by queue")
        ages = "longrun_queue_oldest_ready_job_age_seconds"
        first_age = scrape(server_port).value(ages, queue="qp")
        assert first_age >= 0
        wait_for(
            lambda: scrape(server_port).value(ages, queue="qp") > first_age,
            30,
            "the oldest ready job's age in qp to grow",
        )
        server_after = scrape(server_port)

    created = "longrun_jobs_created_total"
    moved = {
        (dict(labels)["task"], dict(labels)["queue"]): value
        - server_before.samples.get((name, labels), 0.0)
        for (name, labels), value in server_after.samples.items()
        if name == created and dict(labels)["project"] == PROJECT
    }
    assert {k: v for k, v in moved.items() if v} == {
        ("noop", "qa"): 2,
        ("fail", "qa"): 1,
        ("noop", "_other"): 1 + 5,
    }
    ended = "longrun_jobs_ended_total"
    assert (
        server_after.minus(server_before, ended, task="noop", queue="_other", outcome="cancelled")
        == 1
    )
    assert sum(v for (n, _), v in server_after.samples.items() if n == ended) == 1
    outcomes = "longrun_worker_outcomes_total"
    assert (
        worker_after.minus(worker_before, outcomes, task="noop", queue="qa", outcome="succeeded")
        == 2
    )
    assert (
        worker_after.minus(worker_before, outcomes, task="fail", queue="qa", outcome="failed") == 1
    )
    assert (
        worker_after.minus(
            worker_before, outcomes, task="noop", queue="_other", outcome="succeeded"
        )
        == 1
    )
    assert {dict(lb)["queue"] for (n, lb) in worker_after.samples if n == outcomes} <= {
        "qa",
        "_other",
    }
