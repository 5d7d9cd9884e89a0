"""The trigger loop: pull from each trigger's Pub/Sub subscription, decide
(events.py), create the operation through Jobs.CreateJob, settle the message.

Per message, once it is decided:
* filtered: acknowledged, counted `filtered`;
* malformed: published to the trigger's dead_letter_topic (data and
  attributes as received, plus `longrunTrigger`, `longrunReason` and
  `longrunMessageId`), then acknowledged; counted `dead_lettered` and
  logged with its reason. Without a dead_letter_topic it is logged only.
* create: CreateJob with the event's request id. Answered: acknowledged,
  counted `created`, or `deduplicated` when the server answered with the
  operation an earlier delivery made (trailing metadata
  longrun-request-replayed). Refused for good (INVALID_ARGUMENT,
  PERMISSION_DENIED, NOT_FOUND, ALREADY_EXISTS...): dead-lettered with the
  server's message. Unavailable for now (UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN): left unacknowledged for
  `retry_delay` seconds (its ack deadline), then Pub/Sub redelivers it;
  counted `retried`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_worker.triggers.config import Trigger
from longrun_worker.triggers.events import Create, EventMessage, Filtered, Malformed, decide

log = logging.getLogger("longrun.trigger")

#: The trailing metadata key Jobs.CreateJob sets on a replayed request id
#: (longrun_server.jobs_service.REPLAYED_METADATA_KEY).
REPLAYED_METADATA_KEY = "longrun-request-replayed"
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
#: Pub/Sub's bounds for an ack deadline.
MAX_ACK_DEADLINE = 600


@dataclass(frozen=True)
class RunnerSettings:
    #: Messages per pull (Pub/Sub allows up to 1000).
    max_messages: int = 10
    #: Seconds one pull waits for messages before it asks again.
    pull_wait: float = 5.0
    #: Seconds a CreateJob call may take.
    create_timeout: float = 30.0
    #: Seconds before a message whose CreateJob failed for now comes back.
    retry_delay: int = 10
    #: Seconds between two counter lines in the log (0: only at exit).
    stats_interval: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_messages <= 1000:
            raise ValueError("max_messages must be 1..1000")
        if not 0 < self.pull_wait <= 600:
            raise ValueError("pull_wait must be in (0, 600] seconds")
        if not 0 < self.create_timeout <= 600:
            raise ValueError("create_timeout must be in (0, 600] seconds")
        if not 0 <= self.retry_delay <= MAX_ACK_DEADLINE:
            raise ValueError(f"retry_delay must be 0..{MAX_ACK_DEADLINE} seconds")
        if self.stats_interval < 0:
            raise ValueError("stats_interval must be >= 0")


@dataclass
class Counters:
    received: int = 0
    created: int = 0
    deduplicated: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    retried: int = 0


class CreateRefused(Exception):
    """CreateJob refused the request for good (the reason says why)."""


class CreateUnavailable(Exception):
    """CreateJob could not answer now; try the event again later."""


class Jobs(Protocol):
    async def create(self, request: Create) -> tuple[str, bool]:
        """(operation name, replayed); CreateRefused / CreateUnavailable."""
        ...


class GrpcJobs:
    """Jobs.CreateJob on a longrun server, through `channel` (which carries
    the trigger's credentials: longrun_client.ChannelSecurity)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self.stub = jobs_pb2_grpc.JobsStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    async def create(self, request: Create) -> tuple[str, bool]:
        params = struct_pb2.Struct()
        params.update(request.params)
        call = self.stub.CreateJob(
            jobs_pb2.CreateJobRequest(
                parent=request.parent,
                task=request.task,
                params=params,
                labels=request.labels,
                request_id=request.request_id,
            ),
            timeout=self.timeout,
        )
        try:
            operation = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            what = f"CreateJob: {exc.code().name}: {exc.details()}"
            if exc.code() in RETRYABLE_CODES:
                raise CreateUnavailable(what) from exc
            raise CreateRefused(what) from exc
        replayed = any(k == REPLAYED_METADATA_KEY and v == "true" for k, v in trailing or ())
        return str(operation.name), replayed


class Subscription(Protocol):
    """The Pub/Sub side of one trigger."""

    async def pull(self, max_messages: int, wait: float) -> list[tuple[str, EventMessage]]:
        """(ack id, message) pairs; [] when none came within `wait`."""
        ...

    async def ack(self, ack_ids: Sequence[str]) -> None: ...

    async def delay(self, ack_ids: Sequence[str], seconds: int) -> None: ...

    async def dead_letter(self, message: EventMessage, reason: str) -> None: ...


class PubSubSubscription:
    """Subscription over the official google-cloud-pubsub clients (unary
    pulls; PUBSUB_EMULATOR_HOST points them at the emulator)."""

    def __init__(self, trigger: Trigger, subscriber: Any, publisher: Any) -> None:
        self.trigger = trigger
        self.subscriber = subscriber
        self.publisher = publisher

    async def pull(self, max_messages: int, wait: float) -> list[tuple[str, EventMessage]]:
        from google.api_core import exceptions as gexc

        def call() -> Any:
            try:
                return self.subscriber.pull(
                    request={
                        "subscription": self.trigger.source,
                        "max_messages": max_messages,
                    },
                    retry=None,
                    timeout=wait,
                ).received_messages
            except gexc.DeadlineExceeded:
                return []

        received = await asyncio.to_thread(call)
        return [
            (
                r.ack_id,
                EventMessage(
                    message_id=r.message.message_id,
                    data=bytes(r.message.data),
                    attributes=dict(r.message.attributes),
                    publish_time=_rfc3339(r.message.publish_time),
                ),
            )
            for r in received
        ]

    async def ack(self, ack_ids: Sequence[str]) -> None:
        request = {"subscription": self.trigger.source, "ack_ids": list(ack_ids)}
        await asyncio.to_thread(self.subscriber.acknowledge, request=request)

    async def delay(self, ack_ids: Sequence[str], seconds: int) -> None:
        request = {
            "subscription": self.trigger.source,
            "ack_ids": list(ack_ids),
            "ack_deadline_seconds": seconds,
        }
        await asyncio.to_thread(self.subscriber.modify_ack_deadline, request=request)

    async def dead_letter(self, message: EventMessage, reason: str) -> None:
        topic = self.trigger.dead_letter_topic
        if topic is None:
            return
        attributes = dict(message.attributes) | {
            "longrunTrigger": self.trigger.name,
            # Pub/Sub takes attribute values of at most 1024 bytes.
            "longrunReason": reason.encode()[:1024].decode(errors="ignore"),
            "longrunMessageId": message.message_id,
        }
        future = self.publisher.publish(topic, message.data, **attributes)
        await asyncio.wrap_future(future)


def _rfc3339(value: Any) -> str:
    if value is None:
        return ""
    rfc = getattr(value, "rfc3339", None)
    if callable(rfc):
        return str(rfc())
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)


class TriggerRunner:
    """The loop of one trigger."""

    def __init__(
        self,
        trigger: Trigger,
        subscription: Subscription,
        jobs: Jobs,
        settings: RunnerSettings,
        on_change: Any = None,
    ) -> None:
        self.trigger = trigger
        self.subscription = subscription
        self.jobs = jobs
        self.settings = settings
        self.counters = Counters()
        self._on_change = on_change

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                batch = await self.subscription.pull(
                    self.settings.max_messages, self.settings.pull_wait
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("trigger %s: pull failed: %s", self.trigger.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if batch:
                await self.handle_batch(batch)

    async def handle_batch(self, batch: Sequence[tuple[str, EventMessage]]) -> None:
        results = await asyncio.gather(*(self.handle(m) for _, m in batch))
        to_ack = [ack for (ack, _), keep in zip(batch, results, strict=True) if keep is None]
        to_delay = [ack for (ack, _), keep in zip(batch, results, strict=True) if keep]
        try:
            if to_ack:
                await self.subscription.ack(to_ack)
            if to_delay:
                await self.subscription.delay(to_delay, self.settings.retry_delay)
        except Exception as exc:  # Pub/Sub redelivers; the request id dedupes
            log.warning("trigger %s: settling messages failed: %s", self.trigger.name, exc)
        if self._on_change is not None:
            self._on_change()

    async def handle(self, message: EventMessage) -> bool | None:
        """Decide and act on one message: None to acknowledge it, True to
        let it come back later."""
        c = self.counters
        c.received += 1
        decision = decide(self.trigger, message)
        if isinstance(decision, Filtered):
            c.filtered += 1
            log.debug(
                "trigger %s: message %s filtered: %s",
                self.trigger.name,
                message.message_id,
                decision.reason,
            )
            return None
        if isinstance(decision, Malformed):
            return await self._dead_letter(message, decision.reason)
        assert isinstance(decision, Create)
        try:
            name, replayed = await self.jobs.create(decision)
        except CreateUnavailable as exc:
            c.retried += 1
            log.warning(
                "trigger %s: event %s: %s (retrying in %ss)",
                self.trigger.name,
                decision.identity,
                exc,
                self.settings.retry_delay,
            )
            return True
        except CreateRefused as exc:
            return await self._dead_letter(message, str(exc))
        if replayed:
            c.deduplicated += 1
            log.info(
                "trigger %s: event %s already made %s", self.trigger.name, decision.identity, name
            )
        else:
            c.created += 1
            log.info("trigger %s: event %s -> %s", self.trigger.name, decision.identity, name)
        return None

    async def _dead_letter(self, message: EventMessage, reason: str) -> bool | None:
        try:
            await self.subscription.dead_letter(message, reason)
        except Exception as exc:
            log.warning(
                "trigger %s: cannot dead-letter message %s (%s); it comes back",
                self.trigger.name,
                message.message_id,
                exc,
            )
            self.counters.retried += 1
            return True
        self.counters.dead_lettered += 1
        log.warning(
            "trigger %s: dead-lettered message %s: %s",
            self.trigger.name,
            message.message_id,
            reason,
        )
        return None


@dataclass
class StatsWriter:
    """The counters of every trigger as JSON in `path` (replaced atomically)
    and as a log line every `interval` seconds."""

    runners: Sequence[TriggerRunner]
    path: Path | None = None
    interval: float = 60.0
    _last_log: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        per = {r.trigger.name: asdict(r.counters) for r in self.runners}
        totals: dict[str, int] = {}
        for counters in per.values():
            for key, value in counters.items():
                totals[key] = totals.get(key, 0) + value
        return {"triggers": per, "totals": totals}

    def changed(self) -> None:
        if self.path is not None:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.snapshot(), sort_keys=True))
            os.replace(tmp, self.path)
        if self.interval and time.monotonic() - self._last_log >= self.interval:
            self.log()

    def log(self) -> None:
        self._last_log = time.monotonic()
        for name, counters in self.snapshot()["triggers"].items():
            log.info(
                "trigger %s counters: %s", name, " ".join(f"{k}={v}" for k, v in counters.items())
            )


async def run_triggers(
    triggers: Sequence[Trigger],
    subscriptions: Mapping[str, Subscription],
    jobs: Jobs,
    settings: RunnerSettings,
    stats_path: Path | None = None,
    stop: asyncio.Event | None = None,
) -> StatsWriter:
    """Run every trigger until `stop` is set (or forever); returns the
    counters' writer (its last snapshot is written and logged)."""
    runners: list[TriggerRunner] = []
    stats = StatsWriter(runners, stats_path, settings.stats_interval)
    for t in triggers:
        runners.append(TriggerRunner(t, subscriptions[t.name], jobs, settings, stats.changed))
    stats.changed()
    tasks = [asyncio.create_task(r.run(), name=f"trigger-{r.trigger.name}") for r in runners]
    try:
        if stop is None:
            await asyncio.gather(*tasks)
        else:
            await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stats.changed()
        stats.log()
    return stats
