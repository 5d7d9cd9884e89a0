"""The worker behind a Pub/Sub push subscription (Cloud Run style).

Pub/Sub POSTs each task message to `path` (default /push) as the wrapped
JSON envelope `{"subscription", "message": {"data", "attributes",
"messageId", "publishTime"}, "deliveryAttempt"?}` and reads the HTTP status
as the outcome: 2xx acks, anything else is a negative ack and the message
comes back later (the subscription's retry policy sets when). Each request
runs `Worker.handle` on a `PushDelivery`, whose ack / nack / dead_letter
choose the response:

    ack                     204
    nack(delay)             503 + Retry-After: the operation is deferred
                            (retry backoff, lease held elsewhere, not yet
                            due) or was given back on shutdown
    dead_letter(reason)     copy published to the dead-letter topic (when
                            configured; else only logged), then 204
    extend(seconds)         no-op: a push request holds its message for the
                            subscription's ack deadline (10..600 s), which
                            therefore has to cover the task. Past it Pub/Sub
                            redelivers; the duplicate finds the operation's
                            lease held (renewed by the heartbeat) and gets 503
                            until the first run ends, then 204 without a rerun.
    handle raised           503 (e.g. the store is unavailable)
    all slots busy          429: Pub/Sub slows its push rate
    shutting down           503
    401 / 403               see longrun_worker.push_auth
    not signed by our keys  dead-lettered (reason `rejected (...)`), counted, 204
    a settled message id    204 at once (see Replays)

Malformed input:
* A body that is not a wrapped push envelope (not JSON, no `message` object
  with a `messageId`, attributes that are not strings, data that is not
  base64) -> 400. Pub/Sub never sends one unless the subscription is
  misconfigured (e.g. payload unwrapping), and then every message is affected:
  failing loudly (400s in the subscription's push metrics, its dead-letter
  policy collecting them) beats acking work away.
* A well-formed envelope whose message is not a task message (no `task` or
  operation, `attempt` not a number) -> logged, copied to the dead-letter
  topic when configured, and acked (204): it can never succeed, so retrying
  it would only loop. This matches the pull adapter.

Forged and replayed messages:
* Every task message is signed by its publisher (longrun_core.signing). The
  signature is checked right after the envelope is decoded, before anything
  in the message is read: an unsigned, forged or tampered-with message is
  dead-lettered with its reason, counted in the worker's `rejections`, and
  acked (204). It never runs, whatever its token.
* The worker runs the task and params of the operation's record, never those
  of the message: a message naming another task than its operation's is
  treated as forged (dead-lettered, counted, 204; the operation is left
  untouched, and the sweeper republishes it if it is still queued).

Replays. "Settled" means this endpoint answered 2xx for the message id.
* A push of a message id this process settled (the last `replay_cache` of
  them) is acked at once: nothing is read from the store, nothing runs.
* Everywhere else (another instance, after a restart, a captured message
  sent under a new id) the operation store decides, as for every
  at-least-once redelivery: a message for an operation that is finished,
  cancelled or deleted is acked and runs nothing; one for an operation
  whose attempt is running (lease held) or waiting out a retry backoff is
  deferred (503) and runs nothing; outcomes are fenced to the attempt that
  holds the lease. A valid message can therefore only ever start the
  operation's next due attempt, which its own pending message would start
  anyway, never an extra one, and never beyond `max_attempts`.

The operation store's lease and fenced writes still decide who may run and
record an attempt, exactly as with pull workers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from longrun_core.errors import Unavailable
from longrun_core.queue import Delivery, TaskMessage
from longrun_core.signing import MessageRejected, Rejections, SigningKeys
from longrun_worker.push_auth import (
    CertsUnavailable,
    PermissionDenied,
    PushVerifier,
    Unauthenticated,
)
from longrun_worker.push_config import PushSettings
from longrun_worker.runtime import Worker

log = logging.getLogger("longrun.push")

#: Largest request body accepted (a 10 MB Pub/Sub message, base64-encoded, wrapped).
MAX_BODY = 16 * 1024 * 1024
#: How long publishing a dead letter may take before the push is failed (retried).
DEAD_LETTER_TIMEOUT = 30.0


class BadEnvelope(ValueError):
    """The body is not a wrapped Pub/Sub push envelope."""


@dataclass(frozen=True)
class PushedMessage:
    message_id: str
    subscription: str
    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int
    publish_time: str = ""


def parse_envelope(body: bytes) -> PushedMessage:
    """Decode a wrapped push body; raises BadEnvelope saying what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEnvelope("the body is not JSON") from exc
    if not isinstance(doc, dict):
        raise BadEnvelope("the body is not a JSON object")
    msg = doc.get("message")
    if not isinstance(msg, dict):
        raise BadEnvelope("the body has no `message` object (is payload unwrapping on?)")
    message_id = msg.get("messageId") or msg.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise BadEnvelope("the message has no messageId")
    attributes = msg.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise BadEnvelope("message.attributes is not an object of strings")
    raw_data = msg.get("data") or ""
    if not isinstance(raw_data, str):
        raise BadEnvelope("message.data is not a string")
    try:
        data = base64.b64decode(raw_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadEnvelope("message.data is not base64") from exc
    # Real Pub/Sub puts deliveryAttempt next to `message` (only when the
    # subscription has a dead-letter policy); accept it inside too.
    attempt = doc.get("deliveryAttempt", msg.get("deliveryAttempt", 1))
    if isinstance(attempt, str) and attempt.isdigit():
        attempt = int(attempt)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        attempt = 1
    subscription = doc.get("subscription")
    publish_time = msg.get("publishTime") or msg.get("publish_time") or ""
    return PushedMessage(
        message_id=message_id,
        subscription=subscription if isinstance(subscription, str) else "",
        data=data,
        attributes=dict(attributes),
        delivery_attempt=attempt,
        publish_time=publish_time if isinstance(publish_time, str) else "",
    )


def task_message(pushed: PushedMessage) -> TaskMessage | None:
    """The TaskMessage a pushed message carries (the Pub/Sub queue's format:
    data = operation name, attributes operation, task, attempt); None if it
    is not one of ours."""
    attrs = pushed.attributes
    operation = attrs.get("operation") or pushed.data.decode("utf-8", errors="replace")
    task = attrs.get("task")
    try:
        attempt = int(attrs.get("attempt", "0"))
    except ValueError:
        return None
    if not operation or not task:
        return None
    return TaskMessage(operation, task, attempt, attrs.get("traceparent", ""))


class DeadLetterSink(Protocol):
    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Durably store a dead letter; raise to have the push retried."""


class PubSubDeadLetters:
    """Publishes dead letters to a Pub/Sub topic (the queue's dead-letter topic)."""

    def __init__(self, topic_path: str, publisher: Any | None = None) -> None:
        self.topic_path = topic_path
        if publisher is None:
            from google.cloud.pubsub_v1 import PublisherClient

            publisher = PublisherClient()
            self._owns = True
        else:
            self._owns = False
        self._publisher: Any = publisher

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        try:
            future = self._publisher.publish(self.topic_path, data, **attributes)
            async with asyncio.timeout(DEAD_LETTER_TIMEOUT):
                await asyncio.wrap_future(future)
        except Exception as exc:
            raise Unavailable(f"cannot publish to {self.topic_path}: {exc}") from exc

    async def close(self) -> None:
        if self._owns:
            await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        with contextlib.suppress(Exception):
            self._publisher.stop()
        with contextlib.suppress(Exception):
            self._publisher.transport.close()


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str
    retry_after: float | None = None

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(status=self.status, text=self.reason + "\n", headers=headers)


class PushDelivery(Delivery):
    """One pushed message; its ack / nack / dead_letter decide the response."""

    def __init__(
        self,
        message: TaskMessage,
        pushed: PushedMessage,
        *,
        dead_letters: DeadLetterSink | None,
        nack_status: int = 503,
    ) -> None:
        self.message = message
        self.pushed = pushed
        self.delivery_attempt = pushed.delivery_attempt
        self._dead_letters = dead_letters
        self._nack_status = nack_status
        self.outcome: Outcome | None = None

    def answer(self, outcome: Outcome) -> None:
        if self.outcome is None:  # the first answer counts
            self.outcome = outcome

    async def ack(self) -> None:
        self.answer(Outcome(204, "acked"))

    async def nack(self, delay: float = 0.0) -> None:
        self.answer(Outcome(self._nack_status, "redeliver later", retry_after=delay))

    async def extend(self, seconds: float) -> None:
        """Nothing to do: the push request holds the message until the
        subscription's ack deadline; the store's lease still fences."""

    async def dead_letter(self, reason: str) -> None:
        attrs = dict(self.pushed.attributes)
        attrs.update(
            operation=self.message.operation,
            task=self.message.task,
            attempt=str(self.message.attempt),
            reason=reason,
            delivery_attempt=str(self.delivery_attempt),
        )
        await _dead_letter(self._dead_letters, self.pushed, attrs)
        self.answer(Outcome(204, "dead-lettered"))


async def _dead_letter(
    sink: DeadLetterSink | None, pushed: PushedMessage, attributes: dict[str, str]
) -> None:
    if sink is None:
        log.warning(
            "dead letter (no dead-letter topic configured; dropped): message %s: %s",
            pushed.message_id,
            attributes.get("reason", ""),
            extra={"action": "dead_letter", "operation": attributes.get("operation")},
        )
        return
    await sink.publish(pushed.data, attributes)
    log.info(
        "dead-lettered message %s: %s",
        pushed.message_id,
        attributes.get("reason", ""),
        extra={"action": "dead_letter", "operation": attributes.get("operation")},
    )


class SettledMessages:
    """The ids of the last `size` messages this process answered 2xx."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        if self.size <= 0:
            return
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class PushEndpoint:
    """The aiohttp app: POST `path` runs one task message; GET /healthz."""

    def __init__(
        self,
        worker: Worker,
        settings: PushSettings | None = None,
        *,
        signing: SigningKeys,
        dead_letters: DeadLetterSink | None = None,
        verifier: PushVerifier | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.worker = worker
        self.settings = settings or PushSettings()
        self.settings.check()
        self.signing = signing
        #: Shared with the worker (it counts task mismatches there).
        self.rejections = rejections or worker.rejections
        self.settled = SettledMessages(self.settings.replay_cache)
        #: Pushes of a settled message id, acked without running.
        self.replays = 0
        self.dead_letters = dead_letters
        if self.settings.auth.mode == "oidc":
            self.verifier: PushVerifier | None = verifier or PushVerifier(self.settings.auth)
        else:
            self.verifier = None
        self.limit = worker.settings.concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def active(self) -> int:
        return len(self._tasks)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(self.settings.path, self.handle_push)
        app.router.add_get("/healthz", self.handle_health)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self.verifier is None:
            log.warning(
                "push authentication is OFF (--push-auth none): anyone who can reach %s "
                "can run tasks; use it only with the emulator or behind another gate",
                self.settings.path,
                extra={"action": "push_auth_off"},
            )

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.drain(self.worker.settings.shutdown_grace)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self.verifier is not None:
            await self.verifier.close()

    async def drain(self, grace: float) -> None:
        """Refuse new pushes (503); give in-flight tasks `grace` seconds, then
        cancel them: the worker releases their leases and they answer 503."""
        self._stopping = True
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def handle_health(self, request: web.Request) -> web.Response:
        if self._stopping:
            return web.Response(status=503, text="stopping\n")
        return web.Response(text="ok\n")

    async def handle_push(self, request: web.Request) -> web.Response:
        if self._stopping:
            return web.Response(status=503, text="shutting down\n")
        if self.verifier is not None:
            denied = await self._authenticate(request)
            if denied is not None:
                return denied
        body = await request.read()
        try:
            pushed = parse_envelope(body)
        except BadEnvelope as exc:
            log.warning("rejected push: %s", exc, extra={"action": "push_bad_envelope"})
            return web.Response(status=400, text=f"{exc}\n")
        try:
            self.signing.verify(pushed.data, pushed.attributes)
        except MessageRejected as rejected:
            return await self._rejected(pushed, rejected)
        if pushed.message_id in self.settled:
            self.replays += 1
            log.info(
                "message %s was settled here before: acked, nothing runs",
                pushed.message_id,
                extra={"action": "push_replay", "operation": pushed.attributes.get("operation")},
            )
            return web.Response(status=204)
        message = task_message(pushed)
        if message is None:
            return await self._not_a_task(pushed)
        if self.active >= self.limit:  # checked and taken with no await in between
            return web.Response(
                status=429, text="all task slots are busy\n", headers={"Retry-After": "1"}
            )
        delivery = PushDelivery(
            message,
            pushed,
            dead_letters=self.dead_letters,
            nack_status=self.settings.nack_status,
        )
        task = asyncio.create_task(self._process(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            # Shielded: a dropped connection (Pub/Sub's deadline) must not stop the
            # task; shutdown cancels it through drain() instead.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # this request was cancelled; the task runs on
        outcome = delivery.outcome or Outcome(self.settings.nack_status, "not finished")
        if 200 <= outcome.status < 300:
            self.settled.add(pushed.message_id)
        return outcome.response()

    async def _authenticate(self, request: web.Request) -> web.Response | None:
        assert self.verifier is not None
        try:
            identity = await self.verifier.verify(request.headers.get("Authorization"))
        except Unauthenticated as exc:
            log.warning("unauthenticated push: %s", exc, extra={"action": "push_unauthenticated"})
            return web.Response(
                status=401,
                text="unauthenticated\n",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        except PermissionDenied as exc:
            log.warning("push denied: %s", exc, extra={"action": "push_denied"})
            return web.Response(status=403, text="permission denied\n")
        except CertsUnavailable as exc:
            log.error("cannot verify pushes: %s", exc, extra={"action": "push_certs"})
            return web.Response(status=503, text="cannot verify the token now\n")
        log.debug("push from %s", identity.email)
        return None

    async def _rejected(self, pushed: PushedMessage, rejected: MessageRejected) -> web.Response:
        self.rejections.record(
            rejected, message_id=pushed.message_id, operation=pushed.attributes.get("operation")
        )
        return await self._dead_letter_and_ack(pushed, rejected.reason)

    async def _not_a_task(self, pushed: PushedMessage) -> web.Response:
        reason = "not a task message (needs attributes operation, task, attempt)"
        log.warning(
            "acking message %s from %s: %s",
            pushed.message_id,
            pushed.subscription or "?",
            reason,
            extra={"action": "push_not_a_task"},
        )
        return await self._dead_letter_and_ack(pushed, reason)

    async def _dead_letter_and_ack(self, pushed: PushedMessage, reason: str) -> web.Response:
        attrs = dict(pushed.attributes)
        attrs["reason"] = reason
        try:
            await _dead_letter(self.dead_letters, pushed, attrs)
        except Exception as exc:
            log.warning("dead letter failed: %s; retrying the push", exc)
            return web.Response(status=503, text="cannot dead-letter now\n")
        return web.Response(status=204)

    async def _process(self, delivery: PushDelivery) -> None:
        try:
            await self.worker.handle(delivery)
        except asyncio.CancelledError:
            # Shutdown past its grace: the worker released the lease and nacked.
            delivery.answer(Outcome(self.settings.nack_status, "shutting down"))
            raise
        except Exception:
            log.exception(
                "push of %s failed; it will be redelivered",
                delivery.message.operation,
                extra={"action": "handle", "operation": delivery.message.operation},
            )
            delivery.answer(Outcome(self.settings.nack_status, "failed; redeliver"))
        if delivery.outcome is None:
            log.error(
                "no outcome for %s; answering %d",
                delivery.message.operation,
                self.settings.nack_status,
            )


async def serve(
    endpoint: PushEndpoint,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    port_file: str | None = None,
) -> None:
    """Serve `endpoint` on host:port until `stop` is set, then drain."""
    runner = web.AppRunner(
        endpoint.app(),
        access_log=None,
        shutdown_timeout=endpoint.worker.settings.shutdown_grace + 5,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = _bound_port(runner) or port
        log.info(
            "push worker %s listening on %s:%d%s (concurrency %d)",
            endpoint.worker.id,
            host,
            bound,
            endpoint.settings.path,
            endpoint.limit,
            extra={"action": "push_listen"},
        )
        if port_file:
            await asyncio.to_thread(Path(port_file).write_text, str(bound))
        await stop.wait()
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
