"""The Firestore emulator stopped and started again while jobs flow is an
outage, not a crash (issue 11, finding 1, Google side): no process exits,
health says NOT_SERVING while the store cannot answer and SERVING after,
clients get UNAVAILABLE with a RetryInfo, and work resumes by itself.

Two ways to stop it: paused (SIGSTOP/SIGCONT of its process group: calls
hang, then time out; its data survives, so every accepted job completes) and
killed and restarted on the same port (calls are refused; the emulator keeps
nothing, so the jobs stored before are gone with it and only new ones are
followed)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.emulators import SPECS, Running, find_sdk, launch, stop, wait_ready
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.outage import (
    NOT_SERVING,
    SERVING,
    JobStream,
    alive,
    get_operation,
    states,
    wait_health,
    wait_workers_started,
)
from tests.contract.google_backends import require_emulators

pytestmark = pytest.mark.google

FIRESTORE = next(spec for spec in SPECS if spec.kind == "firestore")


@pytest.fixture
def own_firestore() -> Iterator[Running]:
    """A Firestore emulator of this test's own, so it can be stopped."""
    require_emulators()
    em = launch(FIRESTORE, find_sdk([FIRESTORE]))
    try:
        wait_ready(em, time.monotonic() + 90)
        yield em
    finally:
        if em.pgid is not None:  # it may be paused: let it run so it can stop
            os.killpg(em.pgid, signal.SIGCONT)
        stop(em)


@pytest.fixture
def on_firestore(own_firestore: Running, tmp_path: Path) -> Iterator[Service]:
    env = backend_env("google", tmp_path) | {
        "FIRESTORE_EMULATOR_HOST": own_firestore.host,
        "LONGRUN_HEALTH_INTERVAL": "0.5",
        "LONGRUN_HEALTH_TIMEOUT": "3",
        "LONGRUN_FIRESTORE_TIMEOUT": "3",
        "LONGRUN_OUTAGE_RETRY_MAX": "1",
    }
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        svc.start_worker("--concurrency", "4")
        svc.start_worker("--concurrency", "4")
        wait_workers_started(svc)
        yield svc


def _all_done(svc: Service, names: list[str]) -> bool:
    return all(get_operation(svc.target, n).done for n in names)


def _outage(svc: Service, stream: JobStream) -> None:
    """While the store is down: NOT_SERVING, creates refused UNAVAILABLE with
    a RetryInfo (never INTERNAL), every process up."""
    wait_health(svc, NOT_SERVING, timeout=60)
    wait_for(lambda: stream.codes()["UNAVAILABLE"] >= 2, 90, "creates to be refused")
    assert not alive(svc), alive(svc)


def _refusals_were_retryable(stream: JobStream) -> None:
    assert stream.errors, "no create was refused"
    assert {e.code for e in stream.errors} == {grpc.StatusCode.UNAVAILABLE}, stream.codes()
    assert all(e.retry_delay is not None and e.retry_delay > 0 for e in stream.errors)


@pytest.mark.timeout(400)
def test_firestore_paused_and_resumed(on_firestore: Service, own_firestore: Running) -> None:
    svc = on_firestore
    assert own_firestore.pgid is not None
    wait_health(svc, SERVING)
    with JobStream(svc.target, task="sleep", params={"worktime": 0.3}) as stream:
        wait_for(lambda: len(stream.created) >= 10, 90, "jobs to flow")
        os.killpg(own_firestore.pgid, signal.SIGSTOP)
        try:
            _outage(svc, stream)
        finally:
            os.killpg(own_firestore.pgid, signal.SIGCONT)
        wait_health(svc, SERVING, timeout=90)
        accepted = len(stream.created)
        wait_for(lambda: len(stream.created) >= accepted + 5, 90, "creates to go through again")
    _refusals_were_retryable(stream)
    wait_for(lambda: _all_done(svc, stream.created), 180, "every accepted job to finish")
    assert states(svc.target, stream.created) == {"SUCCEEDED": len(stream.created)}
    assert not alive(svc), alive(svc)


@pytest.mark.timeout(400)
def test_firestore_killed_and_restarted(on_firestore: Service, own_firestore: Running) -> None:
    svc = on_firestore
    wait_health(svc, SERVING)
    with JobStream(svc.target, task="sleep", params={"worktime": 0.3}) as stream:
        wait_for(lambda: len(stream.created) >= 10, 90, "jobs to flow")
        stop(own_firestore)
        if own_firestore.proc is not None:
            own_firestore.proc.wait(timeout=30)
        _outage(svc, stream)
        before = len(stream.created)
        port = int(own_firestore.host.rsplit(":", 1)[1])
        restarted = launch(FIRESTORE, find_sdk([FIRESTORE]), port=port)
        own_firestore.pgid, own_firestore.proc = restarted.pgid, restarted.proc
        wait_ready(restarted, time.monotonic() + 90)
        wait_health(svc, SERVING, timeout=90)
        wait_for(lambda: len(stream.created) >= before + 10, 90, "creates to go through again")
        after = stream.created[before:]
    _refusals_were_retryable(stream)
    wait_for(lambda: _all_done(svc, after), 180, "every job created after the restart to finish")
    assert states(svc.target, after) == {"SUCCEEDED": len(after)}
    assert not alive(svc), alive(svc)
