"""Pub/Sub task queue (see longrun_core.queue for the seam and its guarantees).

Resources (created by `start` when absent)
    topic `pubsub_topic`; subscription `pubsub_subscription` on it with
    ack deadline = visibility_timeout clamped to 10..600 s and a dead-letter
    policy to topic `pubsub_dead_letter_topic` after
    max(5, min(100, max_deliveries)) delivery attempts; and subscription
    `{pubsub_dead_letter_topic}-inspect` on the dead-letter topic, which
    `dead_letters()` reads. Existing resources are left as they are (a warning
    is logged when their settings differ). In production the Pub/Sub service
    agent needs roles/pubsub.publisher on the dead-letter topic and
    roles/pubsub.subscriber on the subscription for dead-lettering to work.

Message
    data = operation name (UTF-8), attributes `operation`, `task`, `attempt`,
    signed (longrun_core.signing: attributes `signature_key`, `signature`);
    dead letters add `reason`. The queue needs `signing_keys` (StartupError
    without). A received message is verified before anything in it is read:
    one that is unsigned, forged or tampered with is copied to the
    dead-letter topic with its `reason`, acked, counted in `rejections`, and
    never handed out.

Receiving
    A streaming pull starts on the first `receive` with
    FlowControl(max_messages=concurrency), where concurrency is the
    constructor's `concurrency` or else the first receive's `max_messages`.
    The subscriber's callback hands each message to an asyncio.Queue on the
    loop (`call_soon_threadsafe`). While a message waits there, the
    client's lease manager keeps it leased, for at most MAX_LEASE_DURATION.
    `receive` hands it out, restarts its lease at the ack deadline, and
    releases it from the client's lease management. From then on the worker
    owns the lease, as with every adapter: it is redelivered once the ack
    deadline passes unless the worker calls `extend`. `max_messages` is sent
    as the stream's server-side flow control too, so one process holds at
    most `concurrency` unacked messages (handed out or buffered) on the
    real service. `close` nacks the buffered messages (others get them at
    once) and half-closes the stream before cancelling it.

    pull="unary" receives with unary Pull calls instead (each waits up to
    UNARY_PULL_WAIT seconds and returns as soon as messages arrive; acks,
    nacks and extensions are unary calls). A pulled message is leased for
    the subscription's ack deadline. Use it on the emulator when consumers
    get killed: the emulator keeps a killed consumer's streaming pull open
    and goes on delivering messages into it. Each such message is lost
    until its ack deadline passes, and each loss costs a delivery attempt.
    A killed unary pull loses at most the one batch it was pulling.

Guarantees
    * Redelivery: at least once. A message comes back after a nack, after
      its deadline (if not acked or extended), or when this process dies.
      `ack` is fire-and-forget in the client (no exactly-once delivery), so
      a lost ack can also redeliver. Consumers rely on the store's fenced
      transitions.
    * Conflict: a leased message is not delivered to another consumer
      until its deadline passes.
    * Crash: `publish` returns once the service has accepted the message
      (the publish future resolved); a failure raises `Unavailable` and the
      message may or may not be enqueued (the sweeper republishes).
    * Dead letters: Pub/Sub forwards a message after max_delivery_attempts
      deliveries (`delivery_attempt` counts them; the minimum is 5, so
      max_deliveries below 5 acts as 5). `dead_letter` publishes a copy with
      a `reason` to the dead-letter topic and only then acks the original.
      A crash between the two can leave a duplicate dead letter, never a
      lost one.
    * `dead_letters()` pulls from the inspection subscription and
      immediately nacks what it read, so dead letters stay there for the
      next look (until the subscription's retention ends: 7 days by
      default). Nothing ever acks them; an operator removes them with
      `gcloud pubsub subscriptions seek` or by acking them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import BatchSettings, FlowControl

from longrun_core.errors import StartupError, Unavailable
from longrun_core.queue import DeadLetter, Delivery, TaskMessage, TaskQueue, Transition
from longrun_core.settings import BackendSettings
from longrun_core.signing import (
    KEYS_REQUIRED,
    MessageRejected,
    Rejections,
    SigningKeys,
    message_fields,
)

log = logging.getLogger("longrun.pubsub")

#: Pub/Sub's bounds for ack deadlines and modify_ack_deadline.
MIN_ACK_DEADLINE = 10
MAX_ACK_DEADLINE = 600
#: Longest time the client keeps a buffered (not yet handed out) message leased.
MAX_LEASE_DURATION = 600.0
#: Bounds on dead-letter delivery attempts set by Pub/Sub.
MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
#: How long `publish` may take, retries included, before it raises Unavailable.
PUBLISH_TIMEOUT = 30.0
#: Per-call timeout for the unary admin and pull calls.
RPC_TIMEOUT = 30.0
MALFORMED_REASON = "not a task message (needs attributes operation, task, attempt)"
#: How a queue receives: a streaming pull (the default), or unary pulls.
PULL_MODES = ("streaming", "unary")
#: Longest single unary pull (a receive with a longer timeout pulls again).
UNARY_PULL_WAIT = 10.0

_TRANSIENT_ERRORS = (
    gexc.Aborted,
    gexc.Cancelled,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
)
_FAILURES = (
    gexc.GoogleAPIError,
    concurrent.futures.TimeoutError,
    TimeoutError,
    RuntimeError,
)


def ack_deadline_for(visibility_timeout: float) -> int:
    return _clamp(math.ceil(visibility_timeout))


def delivery_attempts_for(max_deliveries: int) -> int:
    return max(MIN_DELIVERY_ATTEMPTS, min(MAX_DELIVERY_ATTEMPTS, max_deliveries))


def _clamp(seconds: float) -> int:
    return int(max(MIN_ACK_DEADLINE, min(MAX_ACK_DEADLINE, seconds)))


def _retry(total: float) -> gretry.Retry:
    """Retry transient errors with backoff for at most `total` seconds."""
    return gretry.Retry(
        predicate=gretry.if_exception_type(*_TRANSIENT_ERRORS),
        initial=0.1,
        maximum=min(5.0, total),
        multiplier=2.0,
        timeout=total,
    )


def _attributes(message: TaskMessage) -> dict[str, str]:
    return message_fields(message)[1]


def parse_message(data: bytes, attributes: Any) -> TaskMessage | None:
    """The TaskMessage a Pub/Sub message carries; None if it is not one of ours."""
    attrs = dict(attributes)
    operation = attrs.get("operation") or data.decode("utf-8", errors="replace")
    task = attrs.get("task")
    try:
        attempt = int(attrs.get("attempt", "0"))
    except ValueError:
        return None
    if not operation or task is None:
        return None
    return TaskMessage(operation, task, attempt, attrs.get("traceparent", ""))


def _end_gracefully(stream: Any, wait: float = 2.0) -> None:
    """Half-close a streaming pull and give the server `wait` seconds to end
    it, before the caller cancels it.

    The Pub/Sub emulator mishandles a cancelled stream (RST_STREAM raises
    NoSuchMethodError inside it): it keeps the dead stream and goes on
    delivering messages to it, each lost until its ack deadline passes and
    charged a delivery attempt. A half-closed stream it ends cleanly. The
    real service handles both. This reaches into the client's internals, so
    it does nothing if they are not as expected."""
    manager = getattr(stream, "_StreamingPullFuture__manager", None)
    rpc = getattr(manager, "_rpc", None)
    requests = getattr(rpc, "_request_queue", None)
    if rpc is None or requests is None or not hasattr(requests, "put"):
        return
    requests.put(None)  # ends the request iterator: the client half-closes
    deadline = time.monotonic() + wait
    while getattr(rpc, "is_active", False) and time.monotonic() < deadline:
        time.sleep(0.02)


class PubSubDelivery(Delivery):
    def __init__(self, queue: PubSubTaskQueue, raw: Any, message: TaskMessage) -> None:
        self._queue = queue
        self._raw = raw
        self.message = message
        self.delivery_attempt = int(raw.delivery_attempt or 1)

    async def ack(self) -> None:
        self._raw.ack()

    async def nack(self, delay: float = 0.0) -> None:
        if delay >= 1:
            self._raw.modify_ack_deadline(int(min(delay, MAX_ACK_DEADLINE)))
        else:
            self._raw.nack()

    async def extend(self, seconds: float) -> None:
        self._raw.modify_ack_deadline(_clamp(math.ceil(seconds)))

    async def dead_letter(self, reason: str) -> None:
        attrs = dict(self._raw.attributes)
        attrs.update(_attributes(self.message))
        attrs["reason"] = reason
        attrs["delivery_attempt"] = str(self.delivery_attempt)
        await self._queue._publish(self._queue.dead_letter_topic_path, self._raw.data, attrs)
        self._raw.ack()


class PulledDelivery(Delivery):
    """A delivery from a unary pull (pull="unary"): ack, nack and extend are
    unary calls. Their failures are logged, not raised, as in streaming mode
    (a lost ack or nack only means an earlier or later redelivery)."""

    def __init__(self, queue: PubSubTaskQueue, received: Any, message: TaskMessage) -> None:
        self._queue = queue
        self._received = received
        self.message = message
        self.delivery_attempt = int(received.delivery_attempt or 1)

    async def ack(self) -> None:
        await self._queue._settle([self._received.ack_id], None)

    async def nack(self, delay: float = 0.0) -> None:
        seconds = int(min(delay, MAX_ACK_DEADLINE)) if delay >= 1 else 0
        await self._queue._settle([self._received.ack_id], seconds)

    async def extend(self, seconds: float) -> None:
        await self._queue._settle([self._received.ack_id], _clamp(math.ceil(seconds)))

    async def dead_letter(self, reason: str) -> None:
        raw = self._received.message
        attrs = dict(raw.attributes)
        attrs.update(_attributes(self.message))
        attrs["reason"] = reason
        attrs["delivery_attempt"] = str(self.delivery_attempt)
        await self._queue._publish(self._queue.dead_letter_topic_path, raw.data, attrs)
        await self.ack()


@dataclass
class _Buffered:
    raw: Any
    #: time.monotonic() when the callback received it.
    received: float


class PubSubTaskQueue(TaskQueue):
    #: Most dead letters `read_dead_letters` peeks at (it pages within them).
    dead_letter_peek = 1000

    def __init__(
        self,
        *,
        project: str,
        topic: str,
        subscription: str,
        dead_letter_topic: str,
        dead_letter_subscription: str | None = None,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 10,
        concurrency: int | None = None,
        pull: str = "streaming",
        publisher: Any | None = None,
        subscriber: Any | None = None,
        signing_keys: SigningKeys | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        if signing_keys is None:
            raise StartupError(KEYS_REQUIRED)
        self.signing_keys = signing_keys
        self._keys: SigningKeys = signing_keys
        self.rejections = rejections or Rejections()
        self.project = project
        self.ack_deadline = ack_deadline_for(visibility_timeout)
        self.max_delivery_attempts = delivery_attempts_for(max_deliveries)
        self.concurrency = concurrency
        if pull not in PULL_MODES:
            raise ValueError(f"pull must be one of {', '.join(PULL_MODES)}, not {pull!r}")
        self.pull = pull
        self.topic_path = f"projects/{project}/topics/{topic}"
        self.subscription_path = f"projects/{project}/subscriptions/{subscription}"
        self.dead_letter_topic_path = f"projects/{project}/topics/{dead_letter_topic}"
        self.dead_letter_subscription_path = (
            f"projects/{project}/subscriptions/"
            f"{dead_letter_subscription or dead_letter_topic + '-inspect'}"
        )
        self._publisher: Any = publisher or PublisherClient(
            batch_settings=BatchSettings(max_messages=100, max_latency=0.005)
        )
        self._subscriber: Any = subscriber or SubscriberClient()
        self._owns_clients = publisher is None and subscriber is None
        self._publish_retry = _retry(PUBLISH_TIMEOUT)
        #: For the unary admin and pull calls.
        self._rpc = {"retry": _retry(RPC_TIMEOUT), "timeout": RPC_TIMEOUT}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: asyncio.Queue[_Buffered | None] | None = None
        self._stream: Any = None
        self._stream_error: BaseException | None = None
        self._closing = False
        self._background: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: BackendSettings,
        *,
        concurrency: int | None = None,
        rejections: Rejections | None = None,
    ) -> PubSubTaskQueue:
        return cls(
            project=settings.project,
            topic=settings.pubsub_topic,
            subscription=settings.pubsub_subscription,
            dead_letter_topic=settings.pubsub_dead_letter_topic,
            visibility_timeout=settings.visibility_timeout,
            max_deliveries=settings.max_deliveries,
            concurrency=concurrency,
            pull=settings.pubsub_pull,
            signing_keys=settings.message_signing_keys,
            rejections=rejections,
        )

    # ---- lifecycle ----

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._ensure_resources)
        except _FAILURES as exc:
            raise Unavailable(f"cannot set up Pub/Sub resources: {exc}") from exc

    def _ensure_resources(self) -> None:
        """Create the topics and subscriptions if missing. A least-privilege
        deployment (deploy/cloudrun.sh --strict-iam) creates them beforehand
        and gives this process no right to create: Pub/Sub then answers
        PERMISSION_DENIED even for a resource that exists, which is taken as
        "managed elsewhere" (logged); a missing one shows at first use."""
        for topic in (self.topic_path, self.dead_letter_topic_path):
            try:
                self._publisher.create_topic(name=topic, **self._rpc)
            except gexc.AlreadyExists:
                pass
            except gexc.PermissionDenied:
                log.info("may not create %s; assuming it is managed elsewhere", topic)
        wanted = {
            "name": self.subscription_path,
            "topic": self.topic_path,
            "ack_deadline_seconds": self.ack_deadline,
            "dead_letter_policy": {
                "dead_letter_topic": self.dead_letter_topic_path,
                "max_delivery_attempts": self.max_delivery_attempts,
            },
        }
        try:
            self._subscriber.create_subscription(request=wanted, **self._rpc)
        except gexc.AlreadyExists:
            self._check_existing(wanted)
        except gexc.PermissionDenied:
            log.info("may not create %s; assuming it is managed elsewhere", self.subscription_path)
            return
        with contextlib.suppress(gexc.AlreadyExists, gexc.PermissionDenied):
            self._subscriber.create_subscription(
                request={
                    "name": self.dead_letter_subscription_path,
                    "topic": self.dead_letter_topic_path,
                    "ack_deadline_seconds": MIN_ACK_DEADLINE,
                },
                **self._rpc,
            )

    def _check_existing(self, wanted: dict[str, Any]) -> None:
        sub = self._subscriber.get_subscription(subscription=self.subscription_path, **self._rpc)
        policy = sub.dead_letter_policy
        found = (
            sub.topic,
            sub.ack_deadline_seconds,
            policy.dead_letter_topic,
            policy.max_delivery_attempts,
        )
        expected = (
            wanted["topic"],
            wanted["ack_deadline_seconds"],
            wanted["dead_letter_policy"]["dead_letter_topic"],
            wanted["dead_letter_policy"]["max_delivery_attempts"],
        )
        if found != expected:
            log.warning(
                "subscription %s exists with (topic, ack deadline, dead-letter topic, "
                "max delivery attempts) = %s, not %s; using it as it is",
                self.subscription_path,
                found,
                expected,
            )

    async def close(self) -> None:
        self._closing = True
        buffer, self._buffer = self._buffer, None
        while buffer is not None and not buffer.empty():
            item = buffer.get_nowait()
            if item is not None:
                item.raw.nack()  # back to the service for another consumer
        if buffer is not None:
            buffer.put_nowait(None)  # wake a receive still waiting
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        stream, self._stream = self._stream, None
        await asyncio.to_thread(self._shutdown, stream)

    def _shutdown(self, stream: Any) -> None:
        if stream is not None:
            _end_gracefully(stream)
            stream.cancel()
            with contextlib.suppress(Exception):
                stream.result(timeout=30)
        if self._owns_clients:
            with contextlib.suppress(RuntimeError):
                self._publisher.stop()
            with contextlib.suppress(Exception):
                self._publisher.transport.close()
            self._subscriber.close()

    # ---- publishing ----

    async def publish(self, message: TaskMessage) -> None:
        data, attributes = message_fields(message)
        attributes = self._keys.signed(data, attributes)
        try:
            await self._publish(self.topic_path, data, attributes)
        except Unavailable as exc:
            if not _is_not_found(exc):
                raise
            # The topic is gone (an emptied emulator, a deleted topic): make it again.
            await self.start()
            await self._publish(self.topic_path, data, attributes)

    async def _publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> None:
        if self._closing:
            raise Unavailable("the Pub/Sub queue is closed")
        try:
            future = self._publisher.publish(
                topic, data, retry=self._publish_retry, timeout=RPC_TIMEOUT, **attributes
            )
            async with asyncio.timeout(PUBLISH_TIMEOUT + 5):
                await asyncio.wrap_future(future)
        except _FAILURES as exc:
            raise Unavailable(f"cannot publish to {topic}: {exc}") from exc

    # ---- receiving ----

    def _ensure_stream(self, max_messages: int) -> asyncio.Queue[_Buffered | None]:
        if self._closing:
            raise Unavailable("the Pub/Sub queue is closed")
        if self._stream_error is not None:
            error, self._stream_error = self._stream_error, None
            raise Unavailable(f"the Pub/Sub streaming pull failed: {error}") from error
        if self._buffer is None:
            self._loop = asyncio.get_running_loop()
            self._buffer = asyncio.Queue()
        if self._stream is None:
            if self.concurrency is None:
                self.concurrency = max(1, max_messages)
            flow = FlowControl(
                max_messages=self.concurrency,
                max_lease_duration=MAX_LEASE_DURATION,
                min_duration_per_lease_extension=self.ack_deadline,
                max_duration_per_lease_extension=self.ack_deadline,
            )
            stream = self._subscriber.subscribe(
                self.subscription_path, callback=self._on_message, flow_control=flow
            )
            loop = self._loop
            assert loop is not None

            def done(f: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self._on_stream_done, f)

            stream.add_done_callback(done)
            self._stream = stream
        return self._buffer

    def _on_message(self, raw: Any) -> None:
        """Subscriber callback (a scheduler thread): hand the message to the loop."""
        loop, buffer = self._loop, self._buffer
        if self._closing or loop is None or buffer is None:
            raw.nack()
            return
        try:
            loop.call_soon_threadsafe(buffer.put_nowait, _Buffered(raw, time.monotonic()))
        except RuntimeError:  # the loop is closed
            raw.nack()

    def _on_stream_done(self, stream: Any) -> None:
        if stream is not self._stream:
            return
        self._stream = None
        if self._closing or stream.cancelled():
            return
        error = stream.exception()
        if error is not None:
            log.warning("Pub/Sub streaming pull on %s ended: %s", self.subscription_path, error)
            self._stream_error = error
            if self._buffer is not None:
                self._buffer.put_nowait(None)

    async def receive(
        self, max_messages: int, timeout: float, *, claim: Transition | None = None
    ) -> list[Delivery]:
        # `claim` is ignored: Pub/Sub and the store share no transactions.
        try:
            return await self._receive(max_messages, timeout)
        except Unavailable as exc:
            if _is_not_found(exc) and not self._closing:
                # The subscription is gone: make it again; the caller retries.
                with contextlib.suppress(Unavailable):
                    await self.start()
            raise

    async def _receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if self.pull == "unary":
            return await self._receive_unary(max_messages, timeout)
        buffer = self._ensure_stream(max_messages)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            try:
                item = buffer.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                try:
                    async with asyncio.timeout(remaining):
                        item = await buffer.get()
                except TimeoutError:
                    return []
            batch: list[_Buffered] = []
            ended = False
            while True:
                if item is None:  # closed, or the stream failed
                    ended = True
                    break
                if time.monotonic() - item.received < MAX_LEASE_DURATION - 2 * MIN_ACK_DEADLINE:
                    batch.append(item)
                # else its client lease ran out: the service redelivers it anyway
                if len(batch) >= max_messages:
                    break
                try:
                    item = buffer.get_nowait()
                except asyncio.QueueEmpty:
                    break
            deliveries = await self._hand_out(batch)
            if ended:
                if deliveries:
                    buffer.put_nowait(None)  # the next receive sees it too
                    return deliveries
                if self._closing:
                    return []
                self._ensure_stream(max_messages)  # raises the stream's error
                return []
            if deliveries:
                return deliveries

    async def _hand_out(self, batch: list[_Buffered]) -> list[Delivery]:
        """Restart the leases of `batch` at the ack deadline, then take the
        messages out of the client's lease management: from here on the
        consumer holds each lease (ack, nack, extend, or it expires).

        The restart is one unary call that completes before the deliveries are
        returned, so a quick nack(delay) or extend cannot be merged away with
        it in the client's request batching."""
        if not batch:
            return []
        ack_ids = [item.raw.ack_id for item in batch]
        modack = asyncio.ensure_future(asyncio.to_thread(self._modack_now, ack_ids))
        try:
            await asyncio.shield(modack)
        except asyncio.CancelledError:
            # Nobody takes these now: give them back once the restart is through.
            modack.add_done_callback(lambda _: [item.raw.nack() for item in batch])
            raise
        except _FAILURES as exc:
            log.warning("could not restart the leases of %d messages: %s", len(batch), exc)
        out: list[Delivery] = []
        for item in batch:
            raw = item.raw
            raw.drop()
            rejected = self._check(raw)
            if rejected is not None:
                self._forward_to_dead_letters(raw, rejected)
                continue
            message = parse_message(raw.data, raw.attributes)
            if message is None:
                log.warning("dead-lettering message %s: not a task message", raw.message_id)
                self._forward_to_dead_letters(raw, MALFORMED_REASON)
                continue
            out.append(PubSubDelivery(self, raw, message))
        return out

    def _check(self, raw: Any) -> str | None:
        """None if `raw` is signed by our keys; else counts it and returns the
        dead-letter reason. Nothing else in the message is read before."""
        attributes = dict(raw.attributes)
        try:
            self._keys.verify(raw.data, attributes)
        except MessageRejected as rejected:
            self.rejections.record(
                rejected, message_id=raw.message_id, operation=attributes.get("operation")
            )
            return rejected.reason
        return None

    def _modack_now(self, ack_ids: list[str]) -> None:
        self._subscriber.modify_ack_deadline(
            request={
                "subscription": self.subscription_path,
                "ack_ids": ack_ids,
                "ack_deadline_seconds": self.ack_deadline,
            },
            **self._rpc,
        )

    def _forward_to_dead_letters(self, raw: Any, reason: str) -> None:
        attrs = dict(raw.attributes)
        attrs["reason"] = reason
        future = self._publisher.publish(self.dead_letter_topic_path, raw.data, **attrs)
        future.add_done_callback(lambda f: raw.ack() if f.exception() is None else raw.nack())

    # ---- receiving with unary pulls ----

    async def _receive_unary(self, max_messages: int, timeout: float) -> list[Delivery]:
        if self._closing:
            raise Unavailable("the Pub/Sub queue is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            wait = max(0.05, min(deadline - loop.time(), UNARY_PULL_WAIT))
            pulling = asyncio.ensure_future(
                asyncio.to_thread(self._pull, self.subscription_path, max_messages, wait)
            )
            try:
                received = await asyncio.shield(pulling)
            except asyncio.CancelledError:
                pulling.add_done_callback(self._give_back)
                raise
            except _FAILURES as exc:
                if self._closing:
                    return []
                raise Unavailable(f"cannot pull from {self.subscription_path}: {exc}") from exc
            if self._closing:
                await self._settle([r.ack_id for r in received], 0)
                return []
            out: list[Delivery] = []
            for r in received:
                rejected = self._check(r.message)
                if rejected is not None:
                    await self._forward_pulled_to_dead_letters(r, rejected)
                    continue
                message = parse_message(r.message.data, r.message.attributes)
                if message is None:
                    log.warning(
                        "dead-lettering message %s: not a task message", r.message.message_id
                    )
                    await self._forward_pulled_to_dead_letters(r, MALFORMED_REASON)
                    continue
                out.append(PulledDelivery(self, r, message))
            if out or loop.time() >= deadline:
                return out

    def _pull(self, subscription: str, max_messages: int, wait: float) -> list[Any]:
        try:
            response = self._subscriber.pull(
                request={"subscription": subscription, "max_messages": max_messages},
                retry=None,
                timeout=wait,
            )
        except gexc.DeadlineExceeded:
            return []
        return list(response.received_messages)

    async def _forward_pulled_to_dead_letters(self, received: Any, reason: str) -> None:
        raw = received.message
        attrs = dict(raw.attributes)
        attrs["reason"] = reason
        try:
            await self._publish(self.dead_letter_topic_path, raw.data, attrs)
        except Unavailable:
            await self._settle([received.ack_id], 0)
        else:
            await self._settle([received.ack_id], None)

    def _give_back(self, pulling: asyncio.Future[list[Any]]) -> None:
        """A pull finished for a receive that was cancelled meanwhile: nack what it got."""
        if pulling.cancelled() or pulling.exception() is not None:
            return
        ack_ids = [r.ack_id for r in pulling.result()]
        if ack_ids:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                task = asyncio.ensure_future(self._settle(ack_ids, 0))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _settle(self, ack_ids: list[str], deadline: int | None) -> None:
        """Acknowledge `ack_ids` (deadline None) or set their ack deadline."""

        def call() -> None:
            if deadline is None:
                self._subscriber.acknowledge(
                    request={"subscription": self.subscription_path, "ack_ids": ack_ids},
                    **self._rpc,
                )
            else:
                self._subscriber.modify_ack_deadline(
                    request={
                        "subscription": self.subscription_path,
                        "ack_ids": ack_ids,
                        "ack_deadline_seconds": deadline,
                    },
                    **self._rpc,
                )

        try:
            await asyncio.to_thread(call)
        except _FAILURES as exc:
            what = "ack" if deadline is None else f"modify_ack_deadline({deadline})"
            log.warning("%s of %d messages failed: %s", what, len(ack_ids), exc)

    # ---- dead letters ----

    async def dead_letters(self, limit: int = 100) -> list[tuple[TaskMessage, str]]:
        letters = await self._peek(limit)
        return [(d.message, d.reason) for d in reversed(letters)]

    async def read_dead_letters(
        self, limit: int, *, before: tuple[datetime, str] | None = None
    ) -> list[DeadLetter]:
        """Pub/Sub cannot page a subscription: this peeks at most
        `dead_letter_peek` messages of the inspection subscription (newest
        first by publish time on the dead-letter topic, id = message id) and
        pages within them."""
        if limit <= 0:
            return []
        letters = await self._peek(max(limit, self.dead_letter_peek))
        if before is not None:
            letters = [d for d in letters if d.order < before]
        return letters[:limit]

    async def _peek(self, limit: int) -> list[DeadLetter]:
        try:
            return await asyncio.to_thread(self._peek_dead_letters, limit)
        except _FAILURES as exc:
            raise Unavailable(f"cannot read dead letters: {exc}") from exc

    def _peek_dead_letters(self, limit: int) -> list[DeadLetter]:
        """Up to `limit` dead letters, newest first, left in the subscription."""
        seen: dict[str, DeadLetter] = {}
        while len(seen) < limit:
            try:
                response = self._subscriber.pull(
                    request={
                        "subscription": self.dead_letter_subscription_path,
                        "max_messages": min(limit - len(seen), 1000),
                    },
                    retry=None,
                    timeout=5.0,
                )
            except gexc.DeadlineExceeded:
                break
            received = list(response.received_messages)
            if received:
                # Leave them for the next look: make them deliverable again at once.
                self._subscriber.modify_ack_deadline(
                    request={
                        "subscription": self.dead_letter_subscription_path,
                        "ack_ids": [r.ack_id for r in received],
                        "ack_deadline_seconds": 0,
                    },
                    **self._rpc,
                )
            new = 0
            for r in received:
                msg = r.message
                if msg.message_id in seen:
                    continue
                task = parse_message(msg.data, msg.attributes)
                if task is None:
                    continue
                attrs = msg.attributes
                source_count = attrs.get("CloudPubSubDeadLetterSourceDeliveryCount", "")
                reason = attrs.get("reason") or (
                    f"delivered {source_count or 'too many'} times without an ack"
                )
                deliveries = attrs.get("delivery_attempt") or source_count
                seen[msg.message_id] = DeadLetter(
                    task,
                    reason,
                    id=msg.message_id,
                    dead_time=_aware(msg.publish_time),
                    deliveries=int(deliveries) if str(deliveries).isdigit() else 0,
                )
                new += 1
            if not new:
                break
        return sorted(seen.values(), key=lambda d: d.order, reverse=True)[:limit]


def _aware(value: Any) -> datetime | None:
    """A publish time as an aware datetime (None when unset)."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_not_found(exc: BaseException) -> bool:
    """Whether a failure comes from a missing topic or subscription."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, gexc.NotFound):
            return True
        cause = getattr(seen, "cause", None)  # RetryError keeps the last error here
        seen = seen.__cause__ or (cause if isinstance(cause, BaseException) else None)
    return False
