"""The push worker end to end on the Pub/Sub emulator: the real server
publishes, the emulator pushes to `longrun-worker --push`, the operation
finishes. The emulator sends no Authorization header, so the worker runs with
`--push-auth none` here; authentication is covered by
tests/integration/test_push_endpoint.py with locally signed tokens."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from longrun_core.queue import TaskMessage
from longrun_core.signing import SigningKeys, message_fields
from tests.acceptance.forgery import Queue, rejection_summary
from tests.acceptance.harness import Service, backend_env, wait_for

pytestmark = pytest.mark.google

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"


def _require_emulators() -> None:
    try:
        from tests.contract.google_backends import require_emulators
    except ImportError as exc:  # the Google test helpers are not there yet
        pytest.skip(f"tests.contract.google_backends.require_emulators missing: {exc}")
    require_emulators()


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[tuple[Service, Any, int]]:
    """Server + push worker on Firestore and Pub/Sub (emulators), wired through
    a push subscription created before the server starts, as in docs/push.md.
    Yields the service, a subscriber client and the push worker's port."""
    _require_emulators()
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    env = backend_env("google", tmp_path)
    project = env["GOOGLE_CLOUD_PROJECT"]
    svc = Service(tmp_path, env)
    publisher = PublisherClient()
    subscriber = SubscriberClient()
    try:
        with svc.kept():
            port_file = tmp_path / "push-port"
            worker = svc._spawn(
                [
                    "-m",
                    "longrun_worker",
                    "--push",
                    "--push-auth",
                    "none",
                    "--http-address",
                    "127.0.0.1:0",
                    "--push-port-file",
                    str(port_file),
                    "--lease",
                    "3",
                    "--heartbeat",
                    "0.5",
                ],
                "push-worker.log",
            )
            svc.workers.append(worker)
            wait_for(
                lambda: (
                    (port_file.exists() and port_file.read_text() != "")
                    or worker.poll() is not None
                ),
                60,
                "the push worker to listen",
            )
            assert worker.poll() is None, svc.logs()
            port = int(port_file.read_text())

            topic = f"projects/{project}/topics/longrun-tasks"
            dead_topic = f"projects/{project}/topics/longrun-dead-letters"
            for name in (topic, dead_topic):
                publisher.create_topic(name=name)
            # Named like the queue's subscription, with its settings: the server's
            # start then finds it and leaves it a push subscription.
            subscriber.create_subscription(
                request={
                    "name": f"projects/{project}/subscriptions/longrun-workers",
                    "topic": topic,
                    "ack_deadline_seconds": 10,
                    "push_config": {"push_endpoint": f"http://127.0.0.1:{port}/push"},
                    "dead_letter_policy": {
                        "dead_letter_topic": dead_topic,
                        "max_delivery_attempts": 10,
                    },
                }
            )
            svc.start_server()
            yield svc, subscriber, port
    finally:
        subscriber.close()
        publisher.transport.close()


def test_jobs_run_retry_and_dead_letter_through_the_push_endpoint(
    pushed: tuple[Service, Any, int],
) -> None:
    svc, subscriber, _ = pushed
    ok = svc.call(CREATE, {"task": "sleep", "params": {"worktime": 0.2}})
    flaky = svc.call(CREATE, {"task": "fail", "params": {"message": "flaky"}})

    done = svc.call(f"{OPS}/WaitOperation", {"name": ok["name"], "timeout": "60s"})
    assert done["done"] is True, done
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert done["response"]["value"] == {"slept_seconds": 0.2}
    assert done["metadata"]["attempt"] == 1

    failed = svc.call(f"{OPS}/WaitOperation", {"name": flaky["name"], "timeout": "60s"})
    assert failed["metadata"]["state"] == "FAILED", failed
    assert failed["metadata"]["attempt"] == 3  # two 503s, each redelivered by Pub/Sub
    project = svc.env["GOOGLE_CLOUD_PROJECT"]
    inspect = f"projects/{project}/subscriptions/longrun-dead-letters-inspect"
    letters: list[Any] = []

    def dead_lettered() -> bool:
        response = subscriber.pull(request={"subscription": inspect, "max_messages": 10}, timeout=5)
        letters.extend(r.message for r in response.received_messages)
        return bool(letters)

    wait_for(dead_lettered, 30, "the dead letter")
    [letter] = letters
    assert letter.data == flaky["name"].encode()
    assert letter.attributes["operation"] == flaky["name"]
    assert "failed after 3 attempts" in letter.attributes["reason"]
    log = (svc.workdir / "push-worker.log").read_text()
    assert "listening on 127.0.0.1" in log
    assert f"finished {ok['name']} attempt 1: SUCCEEDED" in log


# ---- forged and replayed pushes ----


def _post(port: int, doc: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/push",
        data=json.dumps(doc).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _envelope(
    name: str,
    task: str,
    message_id: str,
    *,
    keys: SigningKeys | None,
    tamper: dict[str, str] | None = None,
) -> dict[str, Any]:
    data, attributes = message_fields(TaskMessage(name, task))
    if keys is not None:
        attributes = keys.signed(data, attributes)
    attributes |= tamper or {}
    return {
        "subscription": "projects/p/subscriptions/longrun-workers",
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": message_id,
        },
    }


def test_forged_pushes_never_run_and_are_dead_lettered_and_counted(
    pushed: tuple[Service, Any, int],
) -> None:
    svc, _, port = pushed
    queue = Queue(svc, "google")
    keys = queue.keys()
    victim = queue.store_without_message("sleep", {"worktime": 3600})
    # The task-confusion envelope: a valid signature, naming `noop`.
    assert _post(port, _envelope(victim, "noop", "forged-1", keys=keys)) == 204
    assert _post(port, _envelope(victim, "sleep", "forged-2", keys=None)) == 204
    tampered = _envelope(victim, "sleep", "forged-3", keys=keys, tamper={"attempt": "2"})
    assert _post(port, tampered) == 204
    reasons: list[str] = []

    def three() -> bool:
        reasons[:] = [r for op, r in queue.dead_letters() if op == victim]
        return len(reasons) >= 3

    wait_for(three, 60, "three dead letters")
    assert sorted(r.split(":")[0] for r in reasons) == [
        "rejected (bad_signature)",
        "rejected (task_mismatch)",
        "rejected (unsigned)",
    ], reasons
    after = svc.call(f"{OPS}/GetOperation", {"name": victim})
    assert after["metadata"]["state"] == "QUEUED", after
    assert after["metadata"].get("attempt", 0) == 0
    log = (svc.workdir / "push-worker.log").read_text()
    summary = set(rejection_summary(log).split())
    assert {"unsigned=1", "bad_signature=1", "task_mismatch=1"} <= summary, log


def test_a_replayed_push_of_a_finished_operation_runs_nothing(
    pushed: tuple[Service, Any, int],
) -> None:
    svc, _, port = pushed
    name = svc.call(CREATE, {"task": "noop", "params": {"n": 1}})["name"]
    done = svc.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
    assert (done["metadata"]["state"], done["metadata"]["attempt"]) == ("SUCCEEDED", 1)
    keys = Queue(svc, "google").keys()
    replay = _envelope(name, "noop", "replayed-1", keys=keys)
    assert _post(port, replay) == 204  # the store: already done, nothing runs
    assert _post(port, replay) == 204  # this id was settled here: not even the store
    after = svc.call(f"{OPS}/GetOperation", {"name": name})
    assert (after["metadata"]["state"], after["metadata"]["attempt"]) == ("SUCCEEDED", 1)
    log = (svc.workdir / "push-worker.log").read_text()
    assert log.count(f"finished {name} attempt") == 1
    assert f"{name} is already done: message acked, nothing runs" in log
    assert "message replayed-1 was settled here before" in log
