"""Factories for the Google adapters on the emulators.

Every store and queue gets its own fresh project id, so tests are isolated
without resetting the emulators and may run in parallel against one pair of
emulators. `make test` (python -m scripts.emulators run -- ...) starts them.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence

import pytest

from longrun_core.google.firestore_store import FirestoreOperationStore
from longrun_core.google.pubsub_queue import PubSubTaskQueue
from longrun_core.signing import SigningKeys

#: The key ring the Google test queues sign with.
TEST_SIGNING_KEYS = SigningKeys.parse("test-k1:" + "t" * 32)

EMULATOR_VARS = ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")

MISSING_MESSAGE = (
    "needs the Firestore and Pub/Sub emulators (FIRESTORE_EMULATOR_HOST and "
    "PUBSUB_EMULATOR_HOST unset). `make test` starts them; or run "
    "`python -m scripts.emulators run -- pytest ...`. Install them with the packages "
    "google-cloud-cli-firestore-emulator and google-cloud-cli-pubsub-emulator, or "
    "`gcloud components install cloud-firestore-emulator pubsub-emulator`."
)


def google_emulators_available() -> bool:
    return all(os.environ.get(var) for var in EMULATOR_VARS)


def require_emulators() -> None:
    """Fail under CI (CI=true), skip elsewhere, when the emulators are not set up."""
    if google_emulators_available():
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(MISSING_MESSAGE, pytrace=False)
    pytest.skip(MISSING_MESSAGE)


def fresh_project() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def make_firestore_store(*, project: str | None = None) -> FirestoreOperationStore:
    """A started store on a fresh project (or on `project`, to share one)."""
    store = FirestoreOperationStore(project=project or fresh_project(), collection="operations")
    await store.start()
    return store


async def make_pubsub_queue(
    *,
    visibility_timeout: float = 10.0,
    max_deliveries: int = 5,
    project: str | None = None,
    suffix: str | None = None,
    concurrency: int | None = None,
    pull: str | None = None,
) -> PubSubTaskQueue:
    """A started queue with its topics and subscriptions on a fresh project.
    Pass the `project` and `suffix` of another queue to share its subscription.
    `pull` defaults to $LONGRUN_PUBSUB_PULL, else "streaming"."""
    suffix = suffix or uuid.uuid4().hex[:8]
    queue = PubSubTaskQueue(
        project=project or fresh_project(),
        topic=f"tasks-{suffix}",
        subscription=f"workers-{suffix}",
        dead_letter_topic=f"dead-{suffix}",
        visibility_timeout=visibility_timeout,
        max_deliveries=max_deliveries,
        concurrency=concurrency,
        pull=pull or os.environ.get("LONGRUN_PUBSUB_PULL", "streaming"),
        signing_keys=TEST_SIGNING_KEYS,
    )
    await queue.start()
    return queue


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll `check` until it is true; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(interval)


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of `samples`."""
    ordered = sorted(samples)
    if not ordered:
        return (math.nan, math.nan)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return pick(0.50), pick(0.99)
