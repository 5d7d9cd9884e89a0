"""The Pub/Sub emulator stopped and restarted (empty: it keeps nothing) while
jobs flow: every job still completes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from scripts.emulators import SPECS, Running, find_sdk, launch, stop, wait_ready
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.contract.google_backends import require_emulators

pytestmark = pytest.mark.google

PUBSUB = next(spec for spec in SPECS if spec.kind == "pubsub")


@pytest.fixture
def own_pubsub() -> Iterator[Running]:
    """A Pub/Sub emulator of this test's own, so it can be stopped."""
    require_emulators()
    em = launch(PUBSUB, find_sdk([PUBSUB]))
    try:
        wait_ready(em, time.monotonic() + 60)
        yield em
    finally:
        stop(em)


def _create(target: str, n: int) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        names = []
        for i in range(n):
            request = jobs_pb2.CreateJobRequest(task="sleep")
            request.params.update(
                {
                    "worktime": 0.2,
                }
                if i % 2
                else {"worktime": 0}
            )
            names.append(stub.CreateJob(request, timeout=30).name)
        return names


def _all_done(target: str, names: list[str]) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        return all(
            stub.GetOperation(operations_pb2.GetOperationRequest(name=n), timeout=10).done
            for n in names
        )


def test_jobs_complete_across_a_pubsub_outage(own_pubsub: Running, tmp_path: Path) -> None:
    env = backend_env("google", tmp_path) | {"PUBSUB_EMULATOR_HOST": own_pubsub.host}
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        svc.start_worker()
        before = _create(svc.target, 10)
        stop(own_pubsub)  # topics, subscriptions and undelivered messages are gone
        if own_pubsub.proc is not None:
            own_pubsub.proc.wait(timeout=30)
        during = _create(svc.target, 10)  # stored; their publish fails
        restarted = launch(PUBSUB, find_sdk([PUBSUB]), port=int(own_pubsub.host.rsplit(":")[1]))
        own_pubsub.pgid, own_pubsub.proc = restarted.pgid, restarted.proc
        wait_ready(restarted, time.monotonic() + 60)
        after = _create(svc.target, 10)
        wait_for(lambda: _all_done(svc.target, before + during + after), 180, "every job")
