"""The Pub/Sub queue's call pool size: setting, env var, and the queue's pool."""

from __future__ import annotations

import pytest

from longrun_core.google.pubsub_queue import PubSubTaskQueue
from longrun_core.settings import BackendSettings
from longrun_core.signing import SigningKeys


def test_call_threads_default_and_env() -> None:
    assert BackendSettings.from_env({}).pubsub_call_threads == 8
    env = {"LONGRUN_PUBSUB_CALL_THREADS": "3"}
    assert BackendSettings.from_env(env).pubsub_call_threads == 3


def test_the_queue_runs_its_calls_on_a_pool_of_that_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # no credentials needed
    _, text = SigningKeys.generate()
    settings = BackendSettings.from_env(
        {
            "LONGRUN_PUBSUB_CALL_THREADS": "3",
            "GOOGLE_CLOUD_PROJECT": "p",
            "LONGRUN_MESSAGE_SIGNING_KEYS": text,
        }
    )
    queue = PubSubTaskQueue.from_settings(settings)
    try:
        assert queue._pool._max_workers == 3
        assert queue._calls is not None  # its own clients: raw calls
    finally:
        queue._pool.shutdown(wait=False)
